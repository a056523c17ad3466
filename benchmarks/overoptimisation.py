"""``python -m rlhf_bench.benchmarks.overoptimisation``, where the README calls it:
the command of :mod:`.studies.overoptimisation`."""

from .studies.overoptimisation import main

if __name__ == "__main__":
    main()
