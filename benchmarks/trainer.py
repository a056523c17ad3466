"""The shared training loop. Every algorithm runs through :func:`run`: a :class:`Trainer` owns the
models, the data source, the optimizer, the loop, evaluation, logging and the run's output files:

- ``eval.jsonl``: one row per evaluation (``step, kl, kl_k1, reward_gold, reward_proxy, length, ...``)
- ``train.jsonl``: the algorithm's training metrics per step, with the cumulative budget
  (:mod:`~rlhf_bench.benchmarks.budget`)
- ``samples.jsonl``: final evaluation prompts, responses and both rewards
- ``optimal_frontier.csv``: the exact optimal KL-reward frontier (enumerable tasks)
- ``summary.json``: final metrics, budget, resolved config, package versions, git revision, wall time
- ``policy/``: the final policy (``save_pretrained``), for trained algorithms

Read top to bottom: setup (``Trainer.__init__``), the loop (``fit``, ``train_step``, ``evaluate``),
the outputs (``finish``).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlhf_bench.algorithms.registry import get_algorithm

from .budget import Budget
from .config import ConfigError, config_differences, run_identity, run_label, validate
from .context import Context, split_groups
from .evaluation import Evaluator, LMPolicy
from .loggers import build_logger
from .models import disable_dropout, freeze
from .rollout import RolloutEngine
from .sources import make_source
from .stages import SharedStages, expand_pairs
from .tasks import build_task
from .utils import (adamw, derive_seed, git_revision, make_generator, package_versions, resolve_device, seed_everything,
                    to_jsonable)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- entry point
def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate one (task, algorithm, beta, seed) and write the run files.

    A run directory that already holds this run, finished (``summary.json`` for the same
    configuration), is left as it is and its summary returned: a re-run sweep, or the betas of a
    beta-independent baseline, skip it.
    """
    groups = validate(cfg)  # fail before any compute
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with FileLock(str(run_dir / ".run.lock")):  # two jobs of one run (two betas of sft) never race
        done = finished_run(run_dir, resolved)
        if done is not None:
            log.info("%s: already finished for this configuration, skipped", run_dir)
            return done
        return Trainer(cfg, groups, run_dir, resolved).fit()


def finished_run(run_dir: Path, resolved: dict) -> Optional[dict]:
    """The summary of the run already finished in ``run_dir`` for the same configuration, or None.

    The configurations are compared by :func:`~rlhf_bench.benchmarks.config.run_identity` (display
    and location settings left out; beta left out for beta-independent algorithms). A finished run of
    a different configuration is an error naming both, never overwritten.
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    theirs, ours = run_identity(summary.get("config") or {}), run_identity(resolved)
    if theirs == ours:
        return summary
    diff = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in config_differences(theirs, ours)[:4])
    raise ConfigError(f"run directory {run_dir} holds a finished run of another configuration ({diff}); "
                      "choose another hydra.run.dir / hydra.sweep.dir or remove it")


def show_progress(setting: Optional[bool]) -> bool:
    """Progress bars: as set, or (``null``) in a terminal and outside multiruns, whose parallel
    jobs would interleave their bars; a multirun's runs log one line per evaluation instead."""
    if setting is not None:
        return bool(setting)
    return sys.stderr.isatty() and _hydra_group() is None


def _hydra_group() -> Optional[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    except Exception:
        return None


def _pair_table(task, ds) -> list[tuple[list[int], list[int], list[int]]]:
    pairs = expand_pairs(ds)
    return [(task.encode(p), task.encode(c), task.encode(r)) for p, c, r in
            zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]


# --------------------------------------------------------------------------------------- trainer
class Trainer:
    """One run. Its state (models, optimizer, scheduler, data source, random generators, budget,
    algorithm) is explicit, so that a step depends only on it."""

    def __init__(self, cfg: DictConfig, groups: dict[str, Any], run_dir: Path, resolved: dict):
        self.t_start = time.time()
        self.cfg, self.run_dir, self.resolved = cfg, run_dir, resolved
        self.tcfg, self.rmcfg, self.acfg = groups["task"], groups["reward_model"], groups["algorithm"]
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = resolve_device(cfg.device)
        self.spec = get_algorithm(self.acfg.name)
        self.progress = show_progress(cfg.progress)
        self.task = build_task(self.tcfg)
        stages = SharedStages(self.task, self.tcfg, groups["model"], self.rmcfg, cfg.cache_dir, self.device,
                              progress=self.progress)
        self.art = stages.prepare()
        self.t_shared = time.time()
        self._build_models(stages)
        self._build_evaluation(groups)
        self.steps = self.tcfg.steps if self.source is not None else 0
        self.params = list(self.policy.parameters()) + (list(self.value_model.parameters()) if self.value_model else [])
        self.opt = adamw(self.params, lr=self.acfg.lr, weight_decay=self.acfg.weight_decay) if self.steps else None
        decay = (lambda s: max(0.0, 1.0 - s / self.steps)) if self.acfg.lr_schedule == "linear" else (lambda s: 1.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, decay) if self.steps else None

    def _build_models(self, stages: SharedStages) -> None:
        cfg, tcfg = self.cfg, self.tcfg
        seed_everything(cfg.seed)
        self.generator = make_generator(derive_seed(cfg.seed, "train"))
        ref = freeze(disable_dropout(stages.load_sft(self.art)))
        self.policy = disable_dropout(stages.load_sft(self.art))
        rm = freeze(stages.load_reward_model(self.art))
        self.engine = RolloutEngine(self.task, ref, rm, reward_kind=self.rmcfg.kind, temperature=tcfg.temperature,
                                    device=self.device, missing_eos_penalty=tcfg.missing_eos_penalty)
        cls = self.spec.cls
        self.value_model = disable_dropout(stages.load_reward_model(self.art)) if cls.uses_value_model else None
        self.ctx = Context(task=self.task, policy=self.policy, ref_model=ref, reward_model=rm, engine=self.engine,
                           device=self.device, generator=self.generator, reward_kind=self.rmcfg.kind,
                           artifacts=self.art, value_model=self.value_model)
        if cls.data == "offline":
            self.ctx.pairs = _pair_table(self.task, self.art.preferences("train"))
        self.algo = cls(self.acfg, self.ctx)
        self.budget = Budget()
        self.budget.tokens.attach(self.policy, ref, rm, self.value_model)
        self.algo.setup()  # e.g. reference log-probs of the offline pairs: counted in the budget
        self.source = make_source(cls.data, engine=self.engine, task=self.task, pairs=self.ctx.pairs,
                                  prompts_per_step=tcfg.prompts_per_step,
                                  responses_per_prompt=self.algo.responses_per_prompt, seed=cfg.seed,
                                  generator=self.generator)

    def _build_evaluation(self, groups: dict[str, Any]) -> None:
        self.evaluator = Evaluator(self.engine, self.task.eval_prompts, seed=self.tcfg.eval_seed,
                                   cache_dir=self.art.reward_model_dir)
        if self.task.enumerable:
            with open(self.run_dir / "optimal_frontier.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["reward", "beta", "kl", "reward_value"])
                w.writeheader()
                w.writerows(self.evaluator.frontier_rows())
        a, seed = self.acfg, self.cfg.seed
        self.name = run_label(a.label, a.beta, seed, self.spec.cls.beta_independent)
        self.logger = build_logger(groups["logger"], self.run_dir, self.resolved, name=self.name, job_type=a.label,
                                   group=_hydra_group())

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        with open(self.run_dir / "eval.jsonl", "w") as self.eval_file, \
                open(self.run_dir / "train.jsonl", "w") as self.train_file:
            self.row, self.samples = self.evaluate(0)
            bar = tqdm(range(1, self.steps + 1), desc=self.name, disable=not self.progress)
            for step in bar:
                self.train_step(step)
                if step % self.tcfg.eval_every == 0 or step == self.steps:
                    self.row, self.samples = self.evaluate(step)
                    bar.set_postfix(kl=f"{self.row['kl']:.3f}", gold=f"{self.row['reward_gold']:.3f}")
                    if not self.progress:
                        log.info("%s step %d/%d: KL %.3f, gold reward %.3f", self.name, step, self.steps,
                                 self.row["kl"], self.row["reward_gold"])
            bar.close()
        return self.finish()

    def train_step(self, step: int) -> dict[str, float]:
        """One step: the source's batch, ``prepare``, then ``epochs x minibatches`` gradient updates."""
        t0 = time.time()
        acfg, algo = self.acfg, self.algo
        self.policy.train()
        batch, stats = self.source.next(self.policy)
        self.budget.responses_sampled += int(stats.pop("rollout/responses", 0))
        data = algo.prepare(batch)
        sums: dict[str, float] = {}
        for _ in range(acfg.epochs):
            for mb in split_groups(data, algo.group_size, acfg.minibatches, self.generator):
                for k, v in self.update(mb).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        self.sched.step()
        n = acfg.epochs * acfg.minibatches
        stats.update({k: v / n for k, v in sums.items()})
        stats["train/lr"] = self.sched.get_last_lr()[0]
        stats.update(algo.after_update(stats))
        self.budget.train_seconds += time.time() - t0
        stats.update(self.budget.metrics())
        stats["time/step_seconds"] = time.time() - t0
        self.train_file.write(json.dumps(to_jsonable({"step": step, **stats})) + "\n")
        self.logger.log(stats, step)
        return stats

    def update(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One gradient update. ``train/grad_norm`` is the norm before clipping, logged for every
        algorithm; ``task.max_grad_norm`` (one rule for all) clips when > 0."""
        loss, metrics = self.algo.loss(mb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        limit = self.tcfg.max_grad_norm if self.tcfg.max_grad_norm > 0 else float("inf")
        metrics["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, limit, foreach=True)
        self.opt.step()
        self.budget.add_update(len(mb["response_mask"]), self.algo.group_size)
        return metrics

    def evaluate(self, step: int) -> tuple[dict, list]:
        """Evaluate the current policy on the held-out prompts (not counted in the budget)."""
        self.policy.eval()
        self.budget.tokens.enabled = False
        eval_policy = self.algo.eval_policy()
        if step == 0 and isinstance(eval_policy, LMPolicy) and eval_policy.model is self.policy:
            row, samples = self.evaluator.evaluate_reference(eval_policy, step)  # still the SFT base
        else:
            row, samples = self.evaluator.evaluate(eval_policy, step)
        self.budget.tokens.enabled = True
        self.policy.train()
        self.eval_file.write(json.dumps(to_jsonable(row)) + "\n")
        self.eval_file.flush()
        self.logger.log({f"eval/{k}": v for k, v in row.items() if k != "step"}, step)
        return row, samples

    # --------------------------------------------------------------------------------- outputs
    def finish(self) -> dict[str, Any]:
        run_dir, acfg, art = self.run_dir, self.acfg, self.art
        with open(run_dir / "samples.jsonl", "w") as f:
            for s in self.samples:
                f.write(json.dumps(s) + "\n")
        if self.steps:
            self.policy.save_pretrained(run_dir / "policy")
            self.task.tokenizer.save_pretrained(run_dir / "policy")
        self.budget.tokens.detach()
        summary = {
            "algorithm": acfg.label, "algorithm_name": acfg.name, "beta": acfg.beta,
            "beta_independent": self.spec.cls.beta_independent, "seed": self.cfg.seed, "task": self.tcfg.name,
            "reward_model": self.rmcfg.kind, "steps": self.steps, "final": self.row, "budget": self.budget.state_dict(),
            "shared": {"metrics": art.metrics, "reused": art.reused,
                       "dirs": {"sft": str(art.sft_dir), "preferences": str(art.preferences_dir),
                                "reward_model": str(art.reward_model_dir)}},
            "wall_time_seconds": time.time() - self.t_start, "shared_stage_seconds": self.t_shared - self.t_start,
            "train_seconds": time.time() - self.t_shared, "config": self.resolved, "versions": package_versions(),
            "git_revision": git_revision(), "run_dir": str(run_dir),
        }
        if self.task.enumerable and self.spec.cls.data != "none":
            reward = "gold" if self.rmcfg.kind == "gold" else "proxy"
            kl_opt, r_opt = self.evaluator.optimal_at_beta(acfg.beta, reward)
            summary["optimal_at_beta"] = {"kl": kl_opt, "reward_value": r_opt, "reward": reward}
        (run_dir / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=2))
        self.logger.summary({f"final/{k}": v for k, v in self.row.items()})
        self.logger.finish()
        return summary
