"""``python -m rlhf_bench.benchmarks.quotes``, where the README calls it: the command of :mod:`.report.quotes`."""

from .report.quotes import main

if __name__ == "__main__":
    main()
