"""``python -m rlhf_bench.benchmarks.tuning``, where the README calls it: the command of :mod:`.studies.tuning`."""

from .studies.tuning import main

if __name__ == "__main__":
    main()
