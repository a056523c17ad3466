"""``python -m rlhf_bench.benchmarks.speed``: the command of :mod:`rlhf_bench.benchmarks.studies.speed`, kept where the README calls it."""

from .studies.speed import main

if __name__ == "__main__":
    main()
