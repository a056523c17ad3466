"""``python -m rlhf_bench.benchmarks.quotes``: the command of :mod:`rlhf_bench.benchmarks.report.quotes`, kept where the README calls it."""

from .report.quotes import main

if __name__ == "__main__":
    main()
