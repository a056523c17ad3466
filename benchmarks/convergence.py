"""``python -m rlhf_bench.benchmarks.convergence``: the command of :mod:`rlhf_bench.benchmarks.studies.convergence`, kept where the README calls it."""

from .studies.convergence import main

if __name__ == "__main__":
    main()
