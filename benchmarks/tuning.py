"""``python -m rlhf_bench.benchmarks.tuning``: the command of :mod:`rlhf_bench.benchmarks.studies.tuning`, kept where the README calls it."""

from .studies.tuning import main

if __name__ == "__main__":
    main()
