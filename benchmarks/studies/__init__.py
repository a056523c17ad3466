"""Studies beyond the main benchmark, each a ``python -m rlhf_bench.benchmarks.<name>`` command: tuning on
held-apart worlds, convergence to the exact optimum, reward over-optimisation (with Gao et al.'s fits),
the coverage of the pooled interval, the reproduction across CPU kinds, DPO's losses under label noise and the
side-by-side speed."""
