"""rlhf-bench harness: tasks, shared stages, rollouts, evaluation, the training loop, sweeps and reports."""

__version__ = "0.1.0"
