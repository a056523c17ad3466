"""``python -m rlhf_bench.benchmarks.reproduction``: the command of :mod:`rlhf_bench.benchmarks.studies.reproduction`, kept where the README calls it."""

from .studies.reproduction import main

if __name__ == "__main__":
    main()
