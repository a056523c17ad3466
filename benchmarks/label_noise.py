"""``python -m rlhf_bench.benchmarks.label_noise``, where the README calls it:
the command of :mod:`.studies.label_noise`."""

from .studies.label_noise import main

if __name__ == "__main__":
    main()
