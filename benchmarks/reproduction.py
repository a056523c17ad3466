"""``python -m rlhf_bench.benchmarks.reproduction``, where the README calls it:
the command of :mod:`.studies.reproduction`."""

from .studies.reproduction import main

if __name__ == "__main__":
    main()
