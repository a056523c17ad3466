"""``python -m rlhf_bench.benchmarks.speed``, where the README calls it: the command of :mod:`.studies.speed`."""

from .studies.speed import main

if __name__ == "__main__":
    main()
