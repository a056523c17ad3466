"""What a finished run leaves (mixed into :class:`~.trainer.Trainer`: its attributes are the Trainer's):
``samples.jsonl``, ``policy/`` and ``summary.json``, written by the main process; the training state is then
deleted."""

from __future__ import annotations

import json
import time
from typing import Any

from ..models.lora import trainable_parameters
from ..runfiles import SAMPLES, SUMMARY
from ..runtime.rundir import summary_header
from ..runtime.sharding import full_state_dict, is_sharded
from ..utils import atomic_write_text, git_revision, numerics, package_versions, to_jsonable


class Outputs:
    """``finish`` (the run's last files) and ``close``."""

    def _model_summary(self) -> dict[str, Any]:
        """Whether the task has a gold reward and, for real models, the parameters trained (older
        runs, of the synthetic tasks, lack these keys)."""
        out = {} if self.task.has_gold else {"gold_reward": False}
        if self.mcfg.pretrained:
            trainable, total = trainable_parameters(self.policy)
            out["gold_reward"] = self.task.has_gold
            out["policy_parameters"] = {"trainable": trainable, "total": total, "lora_r": self.mcfg.lora.r}
        return out

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.budget.tokens.detach()
        self.logger.finish()

    def finish(self) -> dict[str, Any]:
        """samples.jsonl, policy/ and summary.json (by the main process); then the training state
        is deleted."""
        run_dir, acfg, art = self.run_dir, self.acfg, self.art
        self.checkpoints.wait()  # a background write still going: it ends (or fails) here
        budget = self.budget_totals()  # a collective: every process takes part
        # sharded: the whole state gathered on the main process (a collective), saved from there
        weights = full_state_dict(self.policy) if self.steps and is_sharded(self.policy) else None
        if not self.dist.is_main:
            self.close()
            return {"status": "finished", "budget": budget, "process": self.dist.rank}
        with open(run_dir / SAMPLES, "w") as f:
            for s in self.samples:
                f.write(json.dumps(s) + "\n")
        if self.steps:  # with LoRA, the adapters only (README: merging them into the base)
            if weights is not None:
                self.policy.model.save_pretrained(run_dir / "policy", state_dict=weights)
            else:
                self.policy.save_pretrained(run_dir / "policy")
            self.task.tokenizer.save_pretrained(run_dir / "policy")
        summary = {
            **summary_header(self.resolved, self.spec.cls.beta_independent, "finished"),
            "steps": self.steps,
            "final": self.row,
            "budget": budget,
            "distributed": self.dist.summary(),
            "shared": {
                "metrics": art.metrics,
                "reused": art.reused,
                "dirs": {
                    "sft": str(art.sft_dir),
                    "preferences": str(art.preferences_dir),
                    "reward_model": str(art.reward_model_dir),
                },
            },
            "resumed_from_step": self.resume_from["step"] if self.resume_from else None,
            **self._model_summary(),
            "wall_time_seconds": time.time() - self.t_start,
            "shared_stage_seconds": self.t_shared - self.t_start,
            "train_seconds": time.time() - self.t_shared,
            "config": self.resolved,
            "versions": package_versions(),
            "numerics": numerics(),
            **self.phases.summary(),
            "git_revision": git_revision(),
            "run_dir": str(run_dir),
        }
        if self.task.summary():
            summary["data"] = self.task.summary()
        if self.task.enumerable and self.spec.cls.data != "none":
            reward = "gold" if self.rmcfg.kind == "gold" else "proxy"
            kl_opt, r_opt = self.evaluator.optimal_at_beta(acfg.beta, reward)
            summary["optimal_at_beta"] = {"kl": kl_opt, "reward_value": r_opt, "reward": reward}
        self.logger.summary({f"final/{k}": v for k, v in self.row.items()})
        self.close()
        atomic_write_text(run_dir / SUMMARY, json.dumps(to_jsonable(summary), indent=2))
        self.checkpoints.clear()
        return summary
