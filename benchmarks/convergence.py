"""``python -m rlhf_bench.benchmarks.convergence``, where the README calls it:
the command of :mod:`.studies.convergence`."""

from .studies.convergence import main

if __name__ == "__main__":
    main()
