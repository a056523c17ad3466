"""The shared training loop. Every algorithm runs through :func:`run`: a :class:`Trainer` owns the
models, the data source, the optimizer, the loop, evaluation, logging, checkpoints and the run's
output files:

- ``eval.jsonl``: one row per evaluation (``step, kl, kl_k1, reward_gold, reward_proxy, length, ...``)
- ``train.jsonl``: the algorithm's training metrics per step, with the cumulative budget
  (:mod:`~rlhf_bench.benchmarks.budget`); ``time.jsonl``: the wall time of each step (kept apart,
  so that the other files are bitwise reproducible)
- ``samples.jsonl``: final evaluation prompts, responses and both rewards
- ``optimal_frontier.csv``: the exact optimal KL-reward frontier (enumerable tasks)
- ``summary.json``: ``status`` (finished or failed, with the reason), final metrics, budget, resolved
  config, package versions, git revision, wall time
- ``run_config.json``: the configuration the directory belongs to, written when the run starts
- ``checkpoints/``: the last checkpoint (:mod:`~rlhf_bench.benchmarks.checkpoint`) while the run is
  unfinished or failed; a finished run deletes it
- ``policy/``: the final policy (``save_pretrained``), for trained algorithms

Read top to bottom: setup (``Trainer.__init__``), the loop (``fit``, ``train_step``, ``update``,
``evaluate``), checkpoints (``state_dict``, ``resume``), the outputs (``finish``).
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
from .checkpoint import Checkpoints, JsonlFile, rng_state, set_rng_state
from .config import ConfigError, run_label, validate
from .context import Context, split_groups
from .evaluation import Evaluator, LMPolicy
from .faults import FaultInjector, FiniteChecks, NonFiniteError
from .loggers import build_logger
from .lora import AdaptersOff, apply_lora, load_trained_state, trainable_parameters, trained_state
from .models import configure_memory, disable_dropout, freeze
from .rollout import RolloutEngine
from .rundir import finished_run, mark_started, summary_header
from .sources import make_source
from .stages import SharedStages, expand_pairs
from .tasks import build_task
from .utils import (adamw, atomic_write_text, derive_seed, git_revision, make_generator, package_versions,
                    resolve_device, seed_everything, to_jsonable)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- entry point
def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate one (task, algorithm, beta, seed) and write the run files.

    The run directory decides what happens (:mod:`~rlhf_bench.benchmarks.rundir`): a run finished
    there for the same configuration is returned untouched (a re-run sweep, or the betas of a
    beta-independent baseline, skip it); an interrupted or failed one resumes from its last
    checkpoint; a directory of another configuration is a :class:`ConfigError`. A run that fails
    (a non-finite value, any error past validation) returns a summary with ``status: failed`` and
    the reason, and keeps its last checkpoint.
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
        mark_started(run_dir, resolved)
        trainer = None
        try:
            trainer = Trainer(cfg, groups, run_dir, resolved)
            return trainer.fit()
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of one run is recorded, never sinks a sweep
            if isinstance(e, NonFiniteError):
                log.error("%s: %s", run_dir, e)
            else:
                log.exception("%s: the run failed", run_dir)
            return write_failure(run_dir, resolved, e, trainer)


def write_failure(run_dir: Path, resolved: dict, error: Exception, trainer: Optional["Trainer"]) -> dict[str, Any]:
    """``summary.json`` of a failed run: what it was, why and where it stopped (its last
    checkpoint is kept, and a re-run resumes from it)."""
    spec = get_algorithm(resolved["algorithm"]["name"])
    reason = str(error) if isinstance(error, NonFiniteError) else f"{type(error).__name__}: {error}"
    summary = {**summary_header(resolved, spec.cls.beta_independent, "failed"), "reason": reason.splitlines()[0],
               "failed_step": getattr(trainer, "step", None), "final": getattr(trainer, "row", None),
               "last_checkpoint": (trainer.checkpoints.steps() or [None])[-1] if trainer else None,
               "config": resolved, "versions": package_versions(), "git_revision": git_revision(),
               "run_dir": str(run_dir)}
    if trainer is not None:
        trainer.close()
    atomic_write_text(run_dir / "summary.json", json.dumps(to_jsonable(summary), indent=2))
    return summary


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
    return [(task.encode_prompt(p), task.encode_response(c), task.encode_response(r)) for p, c, r in
            zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]


# --------------------------------------------------------------------------------------- trainer
class Trainer:
    """One run. Its state (models, optimizer, scheduler, data source, random generators, budget,
    algorithm, run files) is explicit: :meth:`state_dict` is a checkpoint, and a step depends only
    on it."""

    FILES = ("eval", "train", "time")  # <name>.jsonl, appended to step by step

    # ----------------------------------------------------------------------------------- setup
    def __init__(self, cfg: DictConfig, groups: dict[str, Any], run_dir: Path, resolved: dict):
        self.t_start = time.time()
        self.cfg, self.run_dir, self.resolved = cfg, run_dir, resolved
        self.tcfg, self.rmcfg, self.acfg = groups["task"], groups["reward_model"], groups["algorithm"]
        self.step, self.row, self.samples, self.files = 0, None, [], {}
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = resolve_device(cfg.device)
        self.spec = get_algorithm(self.acfg.name)
        self.progress = show_progress(cfg.progress)
        self.checks, self.fault = FiniteChecks(self.acfg.label), FaultInjector(groups["fault"])
        self.checkpoint_every = groups["checkpoint"].every
        self.checkpoints = Checkpoints(run_dir, groups["checkpoint"].keep)
        self.mcfg = groups["model"]
        self.task = build_task(self.tcfg, model=self.mcfg, device=self.device, cache_dir=cfg.cache_dir)
        stages = SharedStages(self.task, self.tcfg, self.mcfg, self.rmcfg, cfg.cache_dir, self.device,
                              progress=self.progress)
        self.art = stages.prepare()
        self.t_shared = time.time()
        self._build_models(stages)
        self.steps = self.tcfg.steps if self.source is not None else 0
        models = [self.policy] + ([self.value_model] if self.value_model is not None else [])
        self.params = [p for m in models for p in m.parameters() if p.requires_grad]  # LoRA: the adapters (and head)
        self.opt = adamw(self.params, lr=self.acfg.lr, weight_decay=self.acfg.weight_decay) if self.steps else None
        decay = (lambda s: max(0.0, 1.0 - s / self.steps)) if self.acfg.lr_schedule == "linear" else (lambda s: 1.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, decay) if self.steps else None
        self.resume_from = self.checkpoints.latest() if self.steps else None
        with self.budget.tokens.paused():  # evaluation is not training (and its tables may be cached)
            self._build_evaluation(groups)

    def _build_models(self, stages: SharedStages) -> None:
        """Policy, reference, reward model and (PPO) value model. With ``model.lora.r > 0`` the
        policy and the value model train adapters on frozen bases, and the reference and the reward
        model are those same models with their adapters disabled (:class:`~.lora.AdaptersOff`)."""
        cfg, tcfg, mcfg = self.cfg, self.tcfg, self.mcfg
        seed_everything(cfg.seed)
        self.generator = make_generator(derive_seed(cfg.seed, "train"))
        cls, lora = self.spec.cls, mcfg.lora.r > 0
        self.policy = configure_memory(disable_dropout(stages.load_sft(self.art)), mcfg)
        self.value_model = None
        if lora:
            self.policy = apply_lora(self.policy, mcfg.lora)
            ref = AdaptersOff(self.policy)
        else:
            ref = freeze(disable_dropout(stages.load_sft(self.art)))
        if cls.uses_value_model:
            self.value_model = configure_memory(disable_dropout(stages.load_reward_model(self.art)), mcfg)
            if lora:
                self.value_model = apply_lora(self.value_model, mcfg.lora)
        rm = AdaptersOff(self.value_model) if lora and self.value_model is not None else \
            freeze(stages.load_reward_model(self.art))
        self.engine = RolloutEngine(self.task, ref, rm, reward_kind=self.rmcfg.kind, temperature=tcfg.temperature,
                                    device=self.device, missing_eos_penalty=tcfg.missing_eos_penalty,
                                    chunk_tokens=mcfg.logprob_chunk_tokens)
        self.ctx = Context(task=self.task, policy=self.policy, ref_model=ref, reward_model=rm, engine=self.engine,
                           device=self.device, generator=self.generator, reward_kind=self.rmcfg.kind,
                           artifacts=self.art, value_model=self.value_model)
        if cls.data == "offline":
            self.ctx.pairs = _pair_table(self.task, self.art.preferences("train"))
        self.algo = cls(self.acfg, self.ctx)
        self.budget = Budget()
        self.budget.tokens.attach(*(m for m in (self.policy, ref, rm, self.value_model) if not isinstance(m, AdaptersOff)))
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
        previous = (self.resume_from or {}).get("logger")
        self.logger = build_logger(groups["logger"], self.run_dir, self.resolved, name=self.name, job_type=a.label,
                                   group=_hydra_group(), resume=previous)

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Steps ``start + 1 .. steps`` (from scratch, or after the last checkpoint), then the outputs."""
        start = self.resume(self.resume_from) if self.resume_from else self.begin()
        bar = tqdm(range(start + 1, self.steps + 1), desc=self.name, disable=not self.progress,
                   initial=start, total=self.steps)
        for step in bar:
            self.step = self.checks.step = self.fault.current = step
            self.train_step(step)
            if step % self.tcfg.eval_every == 0 or step == self.steps:
                self.evaluate(step)
                judge = "gold" if self.task.has_gold else "proxy"  # a task without a judge: proxy only
                bar.set_postfix(kl=f"{self.row['kl']:.3f}", **{judge: f"{self.row['reward_' + judge]:.3f}"})
                if not self.progress:
                    log.info("%s step %d/%d: KL %.3f, %s reward %.3f", self.name, step, self.steps,
                             self.row["kl"], judge, self.row["reward_" + judge])
            if self.checkpoint_every and (step % self.checkpoint_every == 0 or step == self.steps):
                self.save_checkpoint(step)
        bar.close()
        return self.finish()

    def begin(self) -> int:
        self.files = {name: JsonlFile(self.run_dir / f"{name}.jsonl") for name in self.FILES}
        self.evaluate(0)
        return 0

    def train_step(self, step: int) -> dict[str, float]:
        """One step: the source's batch, ``prepare``, then ``epochs x minibatches`` gradient updates."""
        t0 = time.time()
        acfg, algo = self.acfg, self.algo
        self.policy.train()
        batch, stats = self.source.next(self.policy)
        self.budget.responses_sampled += self.source.responses_in(batch)
        self.fault.rollout(batch)
        self.checks.rollout(batch)
        data = algo.prepare(batch)
        self.fault.prepared(data)
        self.checks.prepared(data)
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
        stats.update(self.budget.metrics())
        self.files["train"].write(to_jsonable({"step": step, **stats}))
        seconds = time.time() - t0
        self.budget.train_seconds += seconds
        timing = {"time/step_seconds": seconds, "time/train_seconds": self.budget.train_seconds}
        self.files["time"].write({"step": step, **timing})
        self.logger.log({**stats, **timing}, step)
        return stats

    def update(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One gradient update. ``train/grad_norm`` is the norm before clipping, logged for every
        algorithm; ``task.max_grad_norm`` (one rule for all) clips when > 0. A non-finite loss or
        gradient norm stops the run before the optimizer steps."""
        loss, metrics = self.algo.loss(mb)
        loss = self.fault.loss(loss)
        self.checks.check("loss", loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.fault.gradients(self.params)
        limit = self.tcfg.max_grad_norm if self.tcfg.max_grad_norm > 0 else float("inf")
        metrics["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, limit, foreach=True)
        self.checks.check("gradient norm", metrics["train/grad_norm"])
        self.opt.step()
        self.budget.add_update(len(mb["response_mask"]), self.algo.group_size)
        return metrics

    def evaluate(self, step: int) -> None:
        """Evaluate the current policy on the held-out prompts (not counted in the budget)."""
        self.policy.eval()
        with self.budget.tokens.paused():
            eval_policy = self.algo.eval_policy()
            if step == 0 and isinstance(eval_policy, LMPolicy) and eval_policy.model is self.policy:
                self.row, self.samples = self.evaluator.evaluate_reference(eval_policy, step)  # still the SFT base
            else:
                self.row, self.samples = self.evaluator.evaluate(eval_policy, step)
        self.policy.train()
        self.files["eval"].write(to_jsonable(self.row))
        self.logger.log({f"eval/{k}": v for k, v in self.row.items() if k != "step"}, step)

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on, and where each run file ends."""
        return {"step": self.step, "policy": trained_state(self.policy),
                "value_model": trained_state(self.value_model) if self.value_model is not None else None,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "rng": rng_state(self.generator), "source": self.source.state_dict(),
                "algorithm": self.algo.state_dict(), "budget": self.budget.state_dict(),
                "last_eval": {"row": self.row, "samples": self.samples}, "logger": self.logger.state_dict(),
                "files": {name: f.position() for name, f in self.files.items()}}

    def save_checkpoint(self, step: int) -> None:
        t0 = time.time()
        self.checkpoints.save(self.state_dict(), step)
        timing = {"time/checkpoint_seconds": time.time() - t0}
        self.files["time"].write({"step": step, **timing})  # after the recorded length: rewritten on resume
        self.logger.log(timing, step)

    def resume(self, state: dict[str, Any]) -> int:
        """Load a checkpoint; the run files are cut back to where it says they ended."""
        load_trained_state(self.policy, state["policy"])
        if self.value_model is not None:
            load_trained_state(self.value_model, state["value_model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.generator)
        self.source.load_state_dict(state["source"])
        self.algo.load_state_dict(state["algorithm"])
        self.budget.load_state_dict(state["budget"])
        self.row, self.samples = state["last_eval"]["row"], state["last_eval"]["samples"]
        self.files = {name: JsonlFile(self.run_dir / f"{name}.jsonl", state["files"].get(name)) for name in self.FILES}
        self.step = state["step"]
        log.info("%s: resuming from the checkpoint of step %d/%d", self.name, self.step, self.steps)
        return self.step

    # --------------------------------------------------------------------------------- outputs
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
        """samples.jsonl, policy/ and summary.json; then the training state is deleted."""
        run_dir, acfg, art = self.run_dir, self.acfg, self.art
        with open(run_dir / "samples.jsonl", "w") as f:
            for s in self.samples:
                f.write(json.dumps(s) + "\n")
        if self.steps:  # with LoRA, the adapters only (README: merging them into the base)
            self.policy.save_pretrained(run_dir / "policy")
            self.task.tokenizer.save_pretrained(run_dir / "policy")
        summary = {
            **summary_header(self.resolved, self.spec.cls.beta_independent, "finished"),
            "steps": self.steps, "final": self.row, "budget": self.budget.state_dict(),
            "shared": {"metrics": art.metrics, "reused": art.reused,
                       "dirs": {"sft": str(art.sft_dir), "preferences": str(art.preferences_dir),
                                "reward_model": str(art.reward_model_dir)}},
            "resumed_from_step": self.resume_from["step"] if self.resume_from else None,
            **self._model_summary(),
            "wall_time_seconds": time.time() - self.t_start, "shared_stage_seconds": self.t_shared - self.t_start,
            "train_seconds": time.time() - self.t_shared, "config": self.resolved, "versions": package_versions(),
            "git_revision": git_revision(), "run_dir": str(run_dir),
        }
        if self.task.summary():
            summary["data"] = self.task.summary()
        if self.task.enumerable and self.spec.cls.data != "none":
            reward = "gold" if self.rmcfg.kind == "gold" else "proxy"
            kl_opt, r_opt = self.evaluator.optimal_at_beta(acfg.beta, reward)
            summary["optimal_at_beta"] = {"kl": kl_opt, "reward_value": r_opt, "reward": reward}
        self.logger.summary({f"final/{k}": v for k, v in self.row.items()})
        self.close()
        atomic_write_text(run_dir / "summary.json", json.dumps(to_jsonable(summary), indent=2))
        self.checkpoints.clear()
        return summary
