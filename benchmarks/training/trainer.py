"""The shared training loop. Every algorithm runs through :func:`~.runs.run`: a :class:`Trainer` owns the
models, the data source, the optimizer, the loop, evaluation, logging, checkpoints and the run's
output files:

- ``eval.jsonl``: one row per evaluation (``step, kl, kl_k1, reward_gold, reward_proxy, length, ...``,
  ``ranking_accuracy`` and ``ranking_accuracy_gold`` on the shared held-out preference pairs)
- ``train.jsonl``: the algorithm's training metrics per step, with the cumulative budget
  (:mod:`~rlhf_bench.benchmarks.training.budget`); ``time.jsonl``: the wall time of each step and, in rows
  of their own, of each evaluation (``time/eval_seconds``; kept apart, so that the other files are
  bitwise reproducible)
- ``samples.jsonl``: final evaluation prompts, responses and both rewards
- ``optimal_frontier.csv``: the exact optimal KL-reward frontier (enumerable tasks)
- ``summary.json``: ``status`` (finished or failed, with the reason), final metrics, budget, resolved
  config, package versions, git revision, wall time
- ``run_config.json``: the configuration the directory belongs to, written when the run starts
- ``checkpoints/``: the last checkpoint (:mod:`~rlhf_bench.benchmarks.runtime.checkpoint`) while the run is
  unfinished or failed; a finished run deletes it
- ``policy/``: the final policy (``save_pretrained``), for trained algorithms

Read top to bottom: setup (``Trainer.__init__``), the loop (``fit``, ``train_step``, ``update``,
``evaluate``); checkpoints (``state_dict``, ``resume``) are in :mod:`.checkpointing`, the outputs
(``finish``) in :mod:`.outputs`.
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..config import run_label
from ..data import expand_pairs
from ..evaluation import Evaluator, LMPolicy
from ..models import configure_memory, disable_dropout, freeze
from ..models.lora import AdaptersOff, apply_lora
from ..plugins import get_algorithm
from ..rollout import RolloutEngine
from ..runfiles import STEP_FILES
from ..runtime.checkpoint import Checkpoints, JsonlFile
from ..runtime.distributed import Distributed
from ..runtime.faults import FaultInjector, FiniteChecks, NonFiniteError
from ..runtime.loggers import NullLogger, build_logger
from ..runtime.phases import PhaseTimer
from ..runtime.sharding import full_tensor, gathered, shard
from ..stages import SharedStages
from ..tasks import build_task
from ..utils import (
    adamw,
    derive_seed,
    make_generator,
    resolve_device,
    sampling_generator,
    seed_everything,
    to_jsonable,
)
from .budget import Budget
from .checkpointing import Checkpointing
from .context import Context, split_groups
from .outputs import Outputs
from .sources import make_source

log = logging.getLogger(__name__)


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
    return [
        (task.encode_prompt(p), task.encode_response(c), task.encode_response(r))
        for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])
    ]


# --------------------------------------------------------------------------------------- trainer
class Trainer(Checkpointing, Outputs):
    """One run. Its state (models, optimizer, scheduler, data source, random generators, budget,
    algorithm, run files) is explicit: :meth:`state_dict` is a checkpoint, and a step depends only
    on it."""

    FILES = tuple(STEP_FILES)  # eval, train, time: appended to step by step

    # ----------------------------------------------------------------------------------- setup
    def __init__(
        self, cfg: DictConfig, groups: dict[str, Any], run_dir: Path, resolved: dict, dist: Optional[Distributed] = None
    ):
        self.t_start = time.time()
        self.cfg, self.run_dir, self.resolved = cfg, run_dir, resolved
        self.dist = dist or Distributed(cfg.device)
        self.tcfg, self.rmcfg, self.acfg = groups["task"], groups["reward_model"], groups["algorithm"]
        self.step, self.row, self.samples, self.files = 0, None, [], {}
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = (
            self.dist.device if self.dist.active and self.dist.device.type == "cuda" else resolve_device(cfg.device)
        )  # several processes on GPUs: one GPU each
        self.spec = get_algorithm(self.acfg.name)
        self.progress = show_progress(cfg.progress) and self.dist.is_main
        self.checks, self.fault = FiniteChecks(self.acfg.label), FaultInjector(groups["fault"])
        self.checkpoint_every = groups["checkpoint"].every
        ckpt = groups["checkpoint"]
        self.checkpoints = Checkpoints(
            run_dir, ckpt.keep, background=ckpt.background if ckpt.background is not None else self.device.type != "cpu"
        )
        self.mcfg, self.dcfg = groups["model"], groups["distributed"]
        self.task = build_task(self.tcfg, model=self.mcfg, device=self.device, cache_dir=cfg.cache_dir)
        stages = SharedStages(
            self.task, self.tcfg, self.mcfg, self.rmcfg, cfg.cache_dir, self.device, progress=self.progress
        )
        self.art = self._prepare_shared(stages)
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

    def _prepare_shared(self, stages: SharedStages):
        """The shared stages: the main process builds (or reuses) them while the others wait, then
        the others reuse them (transformers saves models from rank 0 only). A failure to build is
        raised on every process."""
        if not self.dist.active:
            return stages.prepare()
        art, error = None, None
        if self.dist.is_main:
            try:
                art = stages.prepare()
            except Exception as e:  # noqa: BLE001 - handed to every process, then raised
                error = e
        error = self.dist.broadcast(error)
        if error is not None:
            raise error
        return art if self.dist.is_main else stages.prepare()

    def _build_models(self, stages: SharedStages) -> None:
        """Policy, reference, reward model and (PPO) value model. With ``model.lora.r > 0`` the
        policy and the value model train adapters on frozen bases, and the reference and the reward
        model are those same models with their adapters disabled (:class:`~.lora.AdaptersOff`)."""
        cfg, mcfg = self.cfg, self.mcfg
        seed_everything(cfg.seed)
        rank = () if self.dist.rank == 0 else (f"process{self.dist.rank}",)  # process 0: the single-process stream
        self.generator = make_generator(derive_seed(cfg.seed, "train", *rank))
        # the tokens' stream: this generator on the CPU, one on the model's device elsewhere
        self.sampling = sampling_generator(self.generator, self.device, cfg.seed, "train", *rank)
        cls, lora = self.spec.cls, mcfg.lora.r > 0
        # several processes: the main one reads the weights, the others build the models on the meta device
        # and receive their shards from it (_place): no process but the main one holds a whole model
        weights = self.dist.is_main or not self.dist.active
        trained = lambda model: self._place(apply_lora(model, mcfg.lora) if lora else model)  # noqa: E731
        self.policy = trained(configure_memory(disable_dropout(stages.load_sft(self.art, weights)), mcfg))
        ref = (
            AdaptersOff(self.policy)
            if lora
            else self._place(freeze(disable_dropout(stages.load_sft(self.art, weights))), frozen=True)
        )
        self.value_model = None
        if cls.uses_value_model:
            self.value_model = trained(
                configure_memory(disable_dropout(stages.load_reward_model(self.art, weights)), mcfg)
            )
        rm = (
            AdaptersOff(self.value_model)
            if lora and self.value_model is not None
            else self._place(freeze(stages.load_reward_model(self.art, weights)), frozen=True)
        )
        self._build_algorithm(ref, rm)

    def _build_algorithm(self, ref, rm) -> None:
        """The rollout engine (the reward every algorithm optimises), what the plugin receives, the plugin,
        the budget and the data source."""
        cfg, tcfg, mcfg, cls = self.cfg, self.tcfg, self.mcfg, self.spec.cls
        self.engine = RolloutEngine(
            self.task,
            ref,
            rm,
            reward_kind=self.rmcfg.kind,
            temperature=tcfg.temperature,
            device=self.device,
            missing_eos_penalty=tcfg.missing_eos_penalty,
            chunk_tokens=mcfg.logprob_chunk_tokens,
            compiled=mcfg.compile_generation,
        )
        self.ctx = Context(
            task=self.task,
            policy=self.policy,
            ref_model=ref,
            reward_model=rm,
            engine=self.engine,
            device=self.device,
            generator=self.generator,
            reward_kind=self.rmcfg.kind,
            artifacts=self.art,
            value_model=self.value_model,
        )
        if cls.data == "offline":
            self.ctx.pairs = _pair_table(self.task, self.art.preferences("train"))
        self.algo = cls(self.acfg, self.ctx)
        self.budget = Budget()
        self.budget.tokens.attach(
            *(m for m in (self.policy, ref, rm, self.value_model) if not isinstance(m, AdaptersOff))
        )
        self.phases = self.engine.timer = PhaseTimer(self.device)
        with self.phases.phase("prepare"):
            self.algo.setup()  # e.g. reference log-probs of the offline pairs: counted in the budget
        self.source = make_source(
            cls.data,
            engine=self.engine,
            task=self.task,
            pairs=self.ctx.pairs,
            prompts_per_step=tcfg.prompts_per_step,
            responses_per_prompt=self.algo.responses_per_prompt,
            seed=cfg.seed,
            generator=self.generator,
            sampling=self.sampling,
            share=self.dist.share,
            broadcast=self.dist.broadcast,
        )

    def _place(self, model: torch.nn.Module, frozen: bool = False) -> torch.nn.Module:
        """A model as the run holds it: itself with one process; with several, sharded with FSDP2 under a root
        (runtime/sharding.py) as soon as it is loaded, so that the main process never holds two whole models.
        LoRA adapters are on already (adapters added after sharding would train on un-averaged gradients);
        the optimizer is built after this, on the sharded parameters. A LoRA reference (reward model) is the
        policy's (value model's) root with its adapters off, and is not placed again."""
        if not self.dist.active:
            return model
        dcfg = self.dcfg
        return shard(
            model,
            reshard_after_forward=dcfg.reshard_after_forward,
            param_dtype=torch.bfloat16 if dcfg.mixed_precision == "bfloat16" else None,
            cpu_offload=frozen and dcfg.offload_frozen,
            from_main=True,  # the main process's weights, each process's shards of them
            device=self.device,
        )

    def _build_evaluation(self, groups: dict[str, Any]) -> None:
        """Evaluation, the exact frontier and the logger: the main process's (the only one that
        evaluates and writes)."""
        a, seed = self.acfg, self.cfg.seed
        self.name = run_label(a.label, a.beta, self.cfg.task.seed, seed, self.spec.cls.beta_independent)
        self.evaluator, self.logger = None, NullLogger()
        with self._evaluation_window():  # its tables are scored once, here
            if not self.dist.is_main:
                return
            self.evaluator = Evaluator(
                self.engine,
                self.task.eval_prompts,
                seed=self.tcfg.eval_seed,
                cache_dir=self.art.reward_model_dir,
                heldout=self.art.preferences("heldout"),
            )
        if self.task.enumerable:
            with open(self.run_dir / "optimal_frontier.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["reward", "beta", "kl", "reward_value"])
                w.writeheader()
                w.writerows(self.evaluator.frontier_rows())
        previous = (self.resume_from or {}).get("logger")
        self.logger = build_logger(
            groups["logger"],
            self.run_dir,
            self.resolved,
            name=self.name,
            job_type=a.label,
            group=_hydra_group(),
            resume=previous,
        )

    # ------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        """Steps ``start + 1 .. steps`` (from scratch, or after the last checkpoint), then the outputs."""
        start = self.resume(self.resume_from) if self.resume_from else self.begin()
        bar = tqdm(
            range(start + 1, self.steps + 1), desc=self.name, disable=not self.progress, initial=start, total=self.steps
        )
        for step in bar:
            self.step = self.checks.step = self.fault.current = step
            self.train_step(step)
            if (step % self.tcfg.eval_every == 0 or step == self.steps) and self.evaluate(step):
                judge = "gold" if self.task.has_gold else "proxy"  # a task without a judge: proxy only
                bar.set_postfix(kl=f"{self.row['kl']:.3f}", **{judge: f"{self.row['reward_' + judge]:.3f}"})
                if not self.progress:
                    log.info(
                        "%s step %d/%d: KL %.3f, %s reward %.3f",
                        self.name,
                        step,
                        self.steps,
                        self.row["kl"],
                        judge,
                        self.row["reward_" + judge],
                    )
            if self.checkpoint_every and (step % self.checkpoint_every == 0 or step == self.steps):
                self.save_checkpoint(step)
        bar.close()
        return self.finish()

    def begin(self) -> int:
        if self.dist.is_main:
            self.files = {name: JsonlFile(self.run_dir / STEP_FILES[name]) for name in self.FILES}
        self.evaluate(0)
        return 0

    def _write(self, name: str, row: dict[str, Any]) -> None:
        if name in self.files:  # the main process's files (none elsewhere)
            self.files[name].write(row)

    def _agree(self, check: Callable[[], None]) -> None:
        """Run a finiteness check on every process; when it fails on any, all of them stop (none is
        left waiting in a collective). With one process: just the check."""
        error = None
        try:
            check()
        except NonFiniteError as e:
            error = e
        if self.dist.any(error is not None):
            raise error or NonFiniteError(
                f"non-finite value on another process at step {self.step} (algorithm {self.acfg.label})"
            )

    def train_step(self, step: int) -> dict[str, float]:
        """One step: the source's batch, ``prepare``, then ``epochs x minibatches`` gradient updates."""
        t0 = time.time()
        acfg, algo = self.acfg, self.algo
        self.phases.take_step()  # the evaluation and checkpoint before this step have rows of their own
        self.policy.train()
        batch, stats = self.source.next(self.policy)  # generation, scoring, logprobs (the engine's phases)
        self.budget.responses_sampled += self.source.responses_in(batch)
        self.fault.rollout(batch)
        self._agree(lambda: self.checks.rollout(batch))
        with self.phases.phase("prepare"):
            data = algo.prepare(batch)
        self.fault.prepared(data)
        self._agree(lambda: self.checks.prepared(data))
        sums: dict[str, float] = {}
        with self.phases.phase("update"):
            for _ in range(acfg.epochs):
                for mb in split_groups(data, algo.group_size, acfg.minibatches, self.generator):
                    for k, v in self.update(mb).items():
                        sums[k] = sums.get(k, 0.0) + float(v)
        self.sched.step()
        n = acfg.epochs * acfg.minibatches
        stats.update({k: v / n for k, v in sums.items()})
        stats["train/lr"] = self.sched.get_last_lr()[0]
        stats = self.dist.mean_metrics(stats)  # the whole batch's, on every process (PPO's KL controller reads it)
        stats.update(algo.after_update(stats))
        stats.update(self.budget_totals(prefix="budget/"))
        self._write("train", to_jsonable({"step": step, **stats}))
        seconds = time.time() - t0
        self.budget.train_seconds += seconds
        timing = {
            "time/step_seconds": seconds,
            "time/train_seconds": self.budget.train_seconds,
            **self.phases.take_step(),
        }
        self._write("time", {"step": step, **timing})
        self.logger.log({**stats, **timing}, step)
        return stats

    def budget_totals(self, prefix: str = "") -> dict[str, Any]:
        """The budget of the whole run: counts summed over processes (updates and seconds are
        each process's, the same on all)."""
        state = self.budget.state_dict()
        summed = [k for k in state if k not in ("gradient_updates", "train_seconds")]
        totals = self.dist.mean_metrics(state, summed=summed)
        return {f"{prefix}{k}": v for k, v in totals.items() if not (prefix and k == "train_seconds")}

    def update(self, mb: dict[str, torch.Tensor]) -> dict[str, Any]:
        """One gradient update. ``train/grad_norm`` is the norm before clipping, logged for every
        algorithm; ``task.max_grad_norm`` (one rule for all) clips when > 0. A non-finite loss or
        gradient norm stops the run before the optimizer steps."""
        loss, metrics = self.algo.loss(mb)
        loss = self.fault.loss(loss)
        self._agree(lambda: self.checks.check("loss", loss))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # several processes: FSDP2 averages the shares' gradients, the whole batch's gradient
        self.fault.gradients(self.params)
        limit = self.tcfg.max_grad_norm if self.tcfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit, foreach=True)
        metrics["train/grad_norm"] = full_tensor(norm)  # sharded: the norm of the whole gradient, on every process
        self.checks.check("gradient norm", metrics["train/grad_norm"])
        self.opt.step()
        self.budget.add_update(len(mb["response_mask"]), self.algo.group_size)
        return metrics

    def _evaluation_window(self):
        """Evaluation runs on the main process alone: sharded models are gathered whole on every process for
        it (the others wait), so its numbers do not depend on the number of processes."""
        return gathered(self.policy, self.engine.ref_model, self.engine.reward_model)

    def evaluate(self, step: int) -> bool:
        """Evaluate the current policy on the held-out prompts (not counted in the budget), on the
        main process (:meth:`_evaluation_window`): returns whether it did."""
        with self._evaluation_window():
            if not self.dist.is_main:
                return False
            t0 = time.time()
            self.policy.eval()
            with self.budget.tokens.paused(), self.phases.phase("evaluation"):
                eval_policy = self.algo.eval_policy()
                if step == 0 and isinstance(eval_policy, LMPolicy) and eval_policy.model is self.policy:
                    self.row, self.samples = self.evaluator.evaluate_reference(eval_policy, step)  # still the SFT base
                else:
                    self.row, self.samples = self.evaluator.evaluate(eval_policy, step)
            self.policy.train()
        self._write("eval", to_jsonable(self.row))
        self._write("time", {"step": step, "time/eval_seconds": time.time() - t0})  # wall time: kept apart
        self.logger.log({f"eval/{k}": v for k, v in self.row.items() if k != "step"}, step)
        return True
