"""The shared training loop. Every algorithm runs through :func:`run`, which owns the models, the
optimizer, the loop, evaluation, logging and the run's output files:

- ``eval.jsonl``: one row per evaluation (``step, kl, kl_k1, reward_gold, reward_proxy, length, ...``)
- ``train.jsonl``: the algorithm's training metrics per step
- ``samples.jsonl``: final evaluation prompts, responses and both rewards
- ``optimal_frontier.csv``: the exact optimal KL-reward frontier (enumerable tasks)
- ``summary.json``: final metrics, resolved config, package versions, git revision, wall time
- ``policy/``: the final policy (``save_pretrained``), for trained algorithms
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rlhf_bench.algorithms.registry import get_algorithm

from .config import ConfigError, as_dict, config_differences, run_identity, validate
from .evaluation import Evaluator, LMPolicy
from .loggers import build_logger
from .models import SequenceBatch, disable_dropout, freeze, lm_loss, pad_right, token_logprobs, token_values
from .rollout import RolloutEngine
from .stages import SharedArtifacts, SharedStages, expand_pairs
from .tasks import build_task
from .utils import adamw, derive_seed, git_revision, make_generator, package_versions, resolve_device, seed_everything, to_jsonable

log = logging.getLogger(__name__)


@dataclass
class PreferenceBatch:
    """Offline pairs: ``index`` into the expanded pair table, and the token lists."""

    index: torch.Tensor  # (B,)
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]


@dataclass
class Context:
    """What the harness hands to an algorithm."""

    task: Any
    policy: torch.nn.Module
    ref_model: torch.nn.Module
    reward_model: torch.nn.Module
    engine: RolloutEngine
    device: torch.device
    generator: torch.Generator
    reward_kind: str
    artifacts: SharedArtifacts
    value_model: Optional[torch.nn.Module] = None
    pairs: Optional[list[tuple[list[int], list[int], list[int]]]] = None  # offline (prompt, chosen, rejected)
    _ptx: Optional[list[list[int]]] = field(default=None, repr=False)
    _pair_prompt_len: Optional[int] = field(default=None, repr=False)

    @property
    def temperature(self) -> float:
        return self.engine.temperature

    def logprobs(self, model, batch: SequenceBatch) -> torch.Tensor:
        """Per-token log-probs (B, Tr) with gradients, same temperature and mask as the rollouts."""
        return token_logprobs(model, batch, self.engine.temperature, self.engine.logit_mask)

    def values(self, batch: SequenceBatch) -> torch.Tensor:
        return token_values(self.value_model, batch)

    def pair_batch(self, index: torch.Tensor) -> SequenceBatch:
        """Chosen and rejected interleaved (2B rows: c0, r0, c1, r1, ...). Prompts are padded to the
        longest prompt of the whole pair table and responses to ``max_new_tokens``, so every batch has
        the same shapes and a pair's log-probs do not depend on the batch it lands in (reference
        log-probs cached before training are bit-identical to those computed on the fly)."""
        if self._pair_prompt_len is None:
            self._pair_prompt_len = max(len(p) for p, _, _ in self.pairs)
        prompts, responses = [], []
        for i in index.tolist():
            p, c, r = self.pairs[i]
            prompts += [p, p]
            responses += [c, r]
        return SequenceBatch.from_lists(prompts, responses, self.task.pad_id, self.task.max_new_tokens, self.device,
                                        query_length=self._pair_prompt_len)

    def ptx_loss(self, batch_size: int) -> torch.Tensor:
        """InstructGPT's pretraining term: LM loss on a batch of the task's pretraining text."""
        if self._ptx is None:
            self._ptx = self.task.pretraining_corpus()
        idx = torch.randint(len(self._ptx), (batch_size,), generator=self.generator).tolist()
        ids, mask = pad_right([self._ptx[i] for i in idx], self.task.pad_id, device=self.device)
        return lm_loss(self.policy, ids, mask)


def split_groups(data: dict[str, torch.Tensor], group_size: int, n_minibatches: int,
                 generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffle whole groups (rows ``g*group_size ... (g+1)*group_size - 1``) into minibatches."""
    B = next(iter(data.values())).shape[0]
    n_groups = B // group_size
    perm = torch.randperm(n_groups, generator=generator)
    for chunk in perm.chunk(n_minibatches):
        rows = (chunk.unsqueeze(1) * group_size + torch.arange(group_size)).flatten()
        yield {k: v[rows.to(v.device)] for k, v in data.items()}


def rollout_metrics(rollout) -> dict[str, float]:
    """What the policy did this step. ``rollout/kl`` is the sequence k1 estimate of KL(pi_old || pi_ref)
    along the samples: the quantity PPO's KL penalty and an adaptive controller act on."""
    mask = rollout.response_mask.float()
    kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1)
    return {"rollout/kl": kl.mean().item(), "rollout/reward": rollout.rewards.mean().item(),
            "rollout/reward_gold": rollout.rewards_gold.mean().item(),
            "rollout/reward_proxy": rollout.rewards_proxy.mean().item(),
            "rollout/length": mask.sum(1).mean().item(), "rollout/eos_rate": rollout.eos.float().mean().item()}


def _pair_table(task, ds) -> list[tuple[list[int], list[int], list[int]]]:
    pairs = expand_pairs(ds)
    return [(task.encode(p), task.encode(c), task.encode(r)) for p, c, r in
            zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]


def _hydra_group() -> Optional[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None
    except Exception:
        return None


def show_progress(setting: Optional[bool]) -> bool:
    """Progress bars: as set, or (``null``) in a terminal and outside multiruns, whose parallel
    jobs would interleave their bars; a multirun's runs log one line per evaluation instead."""
    if setting is not None:
        return bool(setting)
    return sys.stderr.isatty() and _hydra_group() is None


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
        return _run(cfg, groups, run_dir, resolved)


def _run(cfg: DictConfig, groups: dict[str, Any], run_dir: Path, resolved: dict) -> dict[str, Any]:
    t_start = time.time()
    tcfg, mcfg, rmcfg, acfg = groups["task"], groups["model"], groups["reward_model"], groups["algorithm"]
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    spec = get_algorithm(acfg.name)
    progress = show_progress(cfg.progress)

    # --- shared stages (cached) ---------------------------------------------------------------
    task = build_task(tcfg)
    stages = SharedStages(task, tcfg, mcfg, rmcfg, cfg.cache_dir, device, progress=progress)
    art = stages.prepare()
    t_shared = time.time()

    # --- models -------------------------------------------------------------------------------
    seed_everything(cfg.seed)
    gen = make_generator(derive_seed(cfg.seed, "train"))
    ref = freeze(disable_dropout(stages.load_sft(art)))
    policy = disable_dropout(stages.load_sft(art))
    rm = freeze(stages.load_reward_model(art))
    engine = RolloutEngine(task, ref, rm, reward_kind=rmcfg.kind, temperature=tcfg.temperature, device=device)
    value_model = disable_dropout(stages.load_reward_model(art)) if spec.cls.uses_value_model else None
    ctx = Context(task=task, policy=policy, ref_model=ref, reward_model=rm, engine=engine, device=device,
                  generator=gen, reward_kind=rmcfg.kind, artifacts=art, value_model=value_model)
    if spec.cls.data == "offline":
        ctx.pairs = _pair_table(task, art.preferences("train"))
    algo = spec.cls(acfg, ctx)
    algo.setup()

    evaluator = Evaluator(engine, task.eval_prompts, seed=tcfg.eval_seed, cache_dir=art.reward_model_dir)
    if task.enumerable:
        with open(run_dir / "optimal_frontier.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["reward", "beta", "kl", "reward_value"])
            w.writeheader()
            w.writerows(evaluator.frontier_rows())

    name = f"{acfg.label}_seed{cfg.seed}" if spec.cls.beta_independent else f"{acfg.label}_beta{acfg.beta:g}_seed{cfg.seed}"
    logger = build_logger(groups["logger"], run_dir, resolved, name=name, job_type=acfg.label, group=_hydra_group())
    eval_file = open(run_dir / "eval.jsonl", "w")
    train_file = open(run_dir / "train.jsonl", "w")

    def evaluate(step: int) -> tuple[dict, list]:
        policy.eval()
        eval_policy = algo.eval_policy()
        if step == 0 and isinstance(eval_policy, LMPolicy) and eval_policy.model is policy:
            row, samples = evaluator.evaluate_reference(eval_policy, step)  # still the SFT base
        else:
            row, samples = evaluator.evaluate(eval_policy, step)
        policy.train()
        eval_file.write(json.dumps(to_jsonable(row)) + "\n")
        eval_file.flush()
        logger.log({f"eval/{k}": v for k, v in row.items() if k != "step"}, step)
        return row, samples

    # --- loop ---------------------------------------------------------------------------------
    try:
        steps = tcfg.steps if spec.cls.data != "none" else 0
        params = [p for p in policy.parameters()]
        if value_model is not None:
            params += list(value_model.parameters())
        opt = adamw(params, lr=acfg.lr, weight_decay=acfg.weight_decay) if steps else None
        decay = (lambda s: max(0.0, 1.0 - s / steps)) if acfg.lr_schedule == "linear" else (lambda s: 1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, decay) if steps else None
        row, samples = evaluate(0)
        prompt_rng = random.Random(derive_seed(cfg.seed, "prompts"))
        pair_order: list[int] = []
        bar = tqdm(range(1, steps + 1), desc=name, disable=not progress)
        for step in bar:
            t0 = time.time()
            policy.train()
            if spec.cls.data == "online":
                prompts = prompt_rng.sample(task.train_prompts, tcfg.prompts_per_step) \
                    if len(task.train_prompts) >= tcfg.prompts_per_step else \
                    prompt_rng.choices(task.train_prompts, k=tcfg.prompts_per_step)
                rollout = engine.rollout(policy, prompts, algo.responses_per_prompt, gen)
                rollout_stats = rollout_metrics(rollout)
                data = algo.prepare(rollout)
            else:
                if len(pair_order) < tcfg.prompts_per_step:
                    pair_order += torch.randperm(len(ctx.pairs), generator=gen).tolist()
                idx, pair_order = pair_order[: tcfg.prompts_per_step], pair_order[tcfg.prompts_per_step:]
                index = torch.tensor(idx)
                rollout_stats = {}
                data = algo.prepare(PreferenceBatch(index, [ctx.pairs[i][0] for i in idx],
                                                    [ctx.pairs[i][1] for i in idx], [ctx.pairs[i][2] for i in idx]))
            sums: dict[str, float] = {}
            n_updates = 0
            for _ in range(acfg.epochs):
                for mb in split_groups(data, algo.group_size, acfg.minibatches, gen):
                    loss, metrics = algo.loss(mb)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if acfg.max_grad_norm > 0:
                        metrics["train/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, acfg.max_grad_norm, foreach=True)
                    opt.step()
                    n_updates += 1
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
            sched.step()
            stats = {**rollout_stats, **{k: v / max(n_updates, 1) for k, v in sums.items()}}
            stats["train/lr"] = sched.get_last_lr()[0]
            stats.update(algo.after_update(stats))
            stats["time/step_seconds"] = time.time() - t0
            train_file.write(json.dumps(to_jsonable({"step": step, **stats})) + "\n")
            logger.log(stats, step)
            if step % tcfg.eval_every == 0 or step == steps:
                row, samples = evaluate(step)
                bar.set_postfix(kl=f"{row['kl']:.3f}", gold=f"{row['reward_gold']:.3f}")
                if not progress:
                    log.info("%s step %d/%d: KL %.3f, gold reward %.3f", name, step, steps, row["kl"], row["reward_gold"])
        bar.close()
    finally:
        eval_file.close()
        train_file.close()

    # --- outputs ------------------------------------------------------------------------------
    with open(run_dir / "samples.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    if steps:
        policy.save_pretrained(run_dir / "policy")
        task.tokenizer.save_pretrained(run_dir / "policy")
    summary = {
        "algorithm": acfg.label, "algorithm_name": acfg.name, "beta": acfg.beta,
        "beta_independent": spec.cls.beta_independent, "seed": cfg.seed, "task": tcfg.name,
        "reward_model": rmcfg.kind, "steps": steps, "final": row,
        "shared": {"metrics": art.metrics, "reused": art.reused, "dirs": {"sft": str(art.sft_dir),
                   "preferences": str(art.preferences_dir), "reward_model": str(art.reward_model_dir)}},
        "wall_time_seconds": time.time() - t_start, "shared_stage_seconds": t_shared - t_start,
        "train_seconds": time.time() - t_shared, "config": resolved, "versions": package_versions(),
        "git_revision": git_revision(), "run_dir": str(run_dir),
    }
    if task.enumerable and spec.cls.data != "none":
        kl_opt, r_opt = evaluator.optimal_at_beta(acfg.beta, "gold" if rmcfg.kind == "gold" else "proxy")
        summary["optimal_at_beta"] = {"kl": kl_opt, "reward_value": r_opt,
                                    "reward": "gold" if rmcfg.kind == "gold" else "proxy"}
    (run_dir / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=2))
    logger.summary({f"final/{k}": v for k, v in row.items()})
    logger.finish()
    return summary
