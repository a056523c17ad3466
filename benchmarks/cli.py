"""``rlhf-bench``: the Hydra application.

    rlhf-bench task=bandit algorithm=best_of_n algorithm.n=4     # one run
    rlhf-bench -m algorithm=ppo,p3o_v2 algorithm.beta=0.05,0.1    # a sweep
    rlhf-bench                                                   # the default benchmark, end to end
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from algorithms.registry import load_algorithms

from .config import ConfigError, register_configs

log = logging.getLogger("rlhf_bench")
DEFAULT_BENCHMARK = "bandit"


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and info logs (ours remain)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()


register_configs()
load_algorithms()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from .trainer import run

    quiet_libraries()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except ConfigError as e:
        log.error("invalid configuration: %s", e)
        print(f"rlhf-bench: invalid configuration: {e}", file=sys.stderr)
        sys.exit(2)
    final = summary["final"]
    msg = (f"{summary['algorithm']} beta={summary['beta']:g} seed={summary['seed']}: KL {final['kl']:.4f}, "
           f"gold reward {final['reward_gold']:.4f}, proxy reward {final['reward_proxy']:.4f} "
           f"({summary['wall_time_seconds']:.1f} s) -> {run_dir}")
    log.info(msg)
    return final["reward_gold"]


def main() -> None:
    """Console entry point. With no arguments, runs the default benchmark end to end."""
    if len(sys.argv) == 1:
        sys.argv.append(f"+benchmark={DEFAULT_BENCHMARK}")
    hydra_main()


if __name__ == "__main__":
    main()
