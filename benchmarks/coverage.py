"""``python -m rlhf_bench.benchmarks.coverage``, where the README calls it: the command of :mod:`.studies.coverage`."""

from .studies.coverage import main

if __name__ == "__main__":
    main()
