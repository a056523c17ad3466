"""Hydra config groups of rlhf-bench (a package so that installed copies find them)."""
