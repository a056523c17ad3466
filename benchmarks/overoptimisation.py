"""``python -m rlhf_bench.benchmarks.overoptimisation``: the command of :mod:`rlhf_bench.benchmarks.studies.overoptimisation`, kept where the README calls it."""

from .studies.overoptimisation import main

if __name__ == "__main__":
    main()
