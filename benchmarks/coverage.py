"""``python -m rlhf_bench.benchmarks.coverage``: the command of :mod:`rlhf_bench.benchmarks.studies.coverage`, kept where the README calls it."""

from .studies.coverage import main

if __name__ == "__main__":
    main()
