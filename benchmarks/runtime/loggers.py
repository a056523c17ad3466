"""Metric sinks besides ``eval.jsonl``: nothing, or Weights & Biases (offline by default)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


class NullLogger:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: what a resumed run needs to continue logging where it stopped."""
        return {}


class WandbLogger(NullLogger):
    """One wandb run per training run: group = the sweep, job_type = the algorithm, name from
    algorithm, beta and seed. Offline unless ``logger.mode=online``; files go under the run dir."""

    def __init__(
        self,
        cfg,
        run_dir: Path,
        config: dict,
        name: str,
        job_type: str,
        group: Optional[str],
        resume: Optional[dict] = None,
    ):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        run_id = (resume or {}).get("id")  # a resumed run continues its wandb run
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            dir=str(run_dir),
            group=cfg.group or group,
            job_type=job_type,
            name=name,
            config=config,
            tags=list(cfg.tags) or None,
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
        )

    def state_dict(self):
        return {"id": self.run.id}

    def log(self, metrics, step):
        self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step)

    def summary(self, metrics):
        for k, v in metrics.items():
            if isinstance(v, (int, float)) or v is None:
                self.run.summary[k] = v

    def finish(self):
        self.run.finish()


def build_logger(
    cfg, run_dir: Path, config: dict, name: str, job_type: str, group: Optional[str], resume: Optional[dict] = None
) -> NullLogger:
    """``resume``: the logger's state from a checkpoint, when the run resumes."""
    if cfg.name == "wandb":
        return WandbLogger(cfg, run_dir, config, name, job_type, group, resume)
    return NullLogger()
