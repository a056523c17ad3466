"""Shared stages, trained once and reused by every run (InstructGPT's recipe).

1. **SFT base**: next-token cross-entropy on the response tokens of the task's demonstrations
   (none for a task without them, ``task=hf`` without ``task.sft_data``: ``model.pretrained`` is
   the SFT base).
2. **Preference data**: K responses per training prompt sampled from the SFT base, ranked by the
   gold reward with Plackett-Luce noise (``label_temperature``), as a ``datasets.Dataset`` with
   columns ``prompt, responses, ranking`` (plus ``gold``, null where unknown), expandable to
   C(K,2) pairs; or the task's own preference data (``task.preference_data``), split the same way.
3. **Reward model**: the SFT transformer with a scalar head read at the last real token, trained
   with the K-wise loss (InstructGPT eq. 1) with every comparison of a prompt in one batch, then
   centred so that its mean over the preference data is zero (``reward_model.pretrained``: a trained
   reward model, centred and evaluated, not trained).

Each stage is cached under ``<cache_dir>/<task>/<stage>-<hash>`` where the hash covers every
setting that determines it (and the hashes of the stages it depends on). Directories are written
atomically and guarded by a file lock, so parallel sweep jobs never train twice and never read a
half-written stage. Each ends with a ``manifest.json`` (every file's size and sha256, the stage and
its key), written last and checked under the lock whenever the entry is looked at: an entry without
one, or whose files no longer match it, is logged, removed and rebuilt, never loaded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import torch
import torch.nn.functional as F
from filelock import FileLock
from tqdm.auto import tqdm

from ..config import as_dict
from ..data import DataError, load_preferences
from ..models import (
    SequenceBatch,
    build_policy,
    build_reward_model,
    configure_memory,
    dtype_kwargs,
    freeze,
    masked_mean,
    reward_scores,
    token_logprobs,
)
from ..rollout import sample_responses
from ..utils import (
    adamw,
    atomic_directory,
    check_manifest,
    config_hash,
    derive_seed,
    discard_directory,
    make_generator,
    remove_orphans,
    sampling_generator,
    write_manifest,
)

log = logging.getLogger(__name__)
# Bump when a stage's code changes what it produces or how an entry is stored. 3: fused AdamW.
# 4: entries end with manifest.json; version-3 entries lack one and would be rebuilt anyway, new
# keys make that a quiet fresh build beside them rather than a warning and a rebuild in place.
STAGE_VERSION = 4
#: Files an entry of each stage must list in its manifest (besides any others it holds).
STAGE_FILES = {
    "sft": ("metrics.json", "config.json"),
    "reward_model": ("metrics.json", "config.json"),
    "preferences": ("metrics.json", "train/dataset_info.json", "heldout/dataset_info.json"),
}


# -------------------------------------------------------------------------------------- losses
def ranking_loss(rewards: torch.Tensor, ranking: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InstructGPT K-wise reward-model loss (Ouyang et al. 2022, eq. 1).

    ``loss = -1/C(K,2) * sum_{i<j} log sigmoid(r(x, y_(i)) - r(x, y_(j)))``, averaged over prompts,
    where ``y_(1) > y_(2) > ...`` is the ranking. For K = 2 this is ``-log sigmoid(r_c - r_r)``.

    Args:
        rewards: (B, K) scalar rewards of the K responses of each prompt.
        ranking: (B, K) response indices, best first.
    """
    ordered = rewards.gather(1, ranking)  # (B, K) best first
    diff = ordered.unsqueeze(2) - ordered.unsqueeze(1)  # (B, K, K): r_(i) - r_(j)
    K = rewards.shape[1]
    upper = torch.ones(K, K, dtype=torch.bool, device=rewards.device).triu(1)
    pair_diff = diff[:, upper]  # (B, C(K,2)): every (winner, loser) pair
    loss = -F.logsigmoid(pair_diff).mean(dim=1).mean()  # 1/C(K,2) per prompt, then mean over prompts
    return loss, {
        "loss/reward_model": loss.detach(),
        "rm/accuracy": (pair_diff > 0).float().mean().detach(),
        "rm/margin": pair_diff.mean().detach(),
    }


def plackett_luce_ranking(scores: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Sample rankings (B, K) from a Plackett-Luce model with utilities ``scores / temperature``
    (Gumbel-max trick); temperature 0 gives the noiseless order."""
    if temperature == 0:
        return torch.argsort(scores, dim=1, descending=True)
    u = torch.rand(scores.shape, generator=generator).clamp(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    return torch.argsort(scores / temperature + gumbel, dim=1, descending=True)


# -------------------------------------------------------------------------------------- stages
@dataclass
class SharedArtifacts:
    sft_dir: Path | str  # the SFT stage's entry, or model.pretrained when the task has no SFT data
    preferences_dir: Path
    reward_model_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)

    def preferences(self, split: str = "train") -> datasets.Dataset:
        """The ranked lists of ``split``, checked row by row (:class:`~.data.DataError` otherwise)."""
        return load_preferences(self.preferences_dir / split)


class SharedStages:
    """Builds (or reuses) the SFT base, the preference data and the reward model of a run."""

    def __init__(
        self, task, task_cfg, model_cfg, rm_cfg, cache_dir: str | Path, device: torch.device, progress: bool = True
    ):
        self.task, self.task_cfg, self.model_cfg, self.rm_cfg = task, task_cfg, model_cfg, rm_cfg
        self.root = Path(cache_dir).expanduser().resolve() / task.name
        self.device, self.progress = device, progress

    # --- keys -------------------------------------------------------------------------------
    def _world(self) -> dict:
        protocol = {
            "steps",
            "prompts_per_step",
            "eval_every",
            "eval_seed",
            "temperature",
            "missing_eos_penalty",
            "sft",
            "preferences",
            "judge",
        }
        return {k: v for k, v in as_dict(self.task_cfg).items() if k not in protocol}

    def keys(self) -> dict[str, str]:
        skip = {"name", "lora", *self.model_cfg.PERFORMANCE_ONLY}  # adapters: RL only; speed/memory: change nothing
        model = {k: v for k, v in as_dict(self.model_cfg).items() if k not in skip}
        sft = config_hash(
            {"v": STAGE_VERSION, "world": self._world(), "model": model, "sft": as_dict(self.task_cfg.sft)}
        )
        judge = {"judge": as_dict(self.task_cfg.judge)} if hasattr(self.task_cfg, "judge") else {}  # task=hf
        prefs = config_hash({"v": STAGE_VERSION, "sft": sft, "prefs": as_dict(self.task_cfg.preferences), **judge})
        rm_train = {k: v for k, v in as_dict(self.rm_cfg).items() if k != "kind"}  # kind does not change the proxy
        if not rm_train.get("pretrained"):
            rm_train.pop("pretrained", None)  # as before reward_model.pretrained existed
        rm = config_hash({"v": STAGE_VERSION, "prefs": prefs, "rm": rm_train})
        return {"sft": f"sft-{sft}", "preferences": f"preferences-{prefs}", "reward_model": f"reward_model-{rm}"}

    # --- driver -----------------------------------------------------------------------------
    def prepare(self) -> SharedArtifacts:
        keys = self.keys()
        art = SharedArtifacts(
            self.root / keys["sft"], self.root / keys["preferences"], self.root / keys["reward_model"]
        )
        self.root.mkdir(parents=True, exist_ok=True)
        stages = (
            ("sft", self._train_sft),
            ("preferences", self._build_preferences),
            ("reward_model", self._train_reward_model),
        )
        if not self.task.has_sft_data:  # model.pretrained is already the SFT model
            art.sft_dir, stages = self.model_cfg.pretrained, stages[1:]
            art.metrics["sft"], art.reused["sft"] = {"sft/skipped": True, "seconds": 0.0}, True
            log.info("[shared] sft: none (no task.sft_data); the SFT base is %s", art.sft_dir)
        for stage, builder in stages:
            path = self.root / keys[stage]
            with FileLock(str(self.root / f"{keys[stage]}.lock")):
                reused = self._cached(stage, keys[stage], path)
                if not reused:
                    self._build(stage, keys[stage], path, builder, art, self.task)
                metrics = json.loads((path / "metrics.json").read_text())
            art.metrics[stage], art.reused[stage] = metrics, reused
            verb = "reused from cache" if reused else "built"
            log.info("[shared] %s: %s %s (%.1f s to build)", stage, verb, path, metrics["seconds"])
        return art

    @staticmethod
    def _cached(stage: str, key: str, path: Path) -> bool:
        """Whether ``path`` holds an intact entry of ``stage`` (its manifest checks out). A damaged
        or half-written entry is logged and removed, and so are temporary directories left by a
        killed build. Only under the stage's lock."""
        for orphan in remove_orphans(path):
            log.warning("cache: removed %s, left by an interrupted build", orphan)
        if not path.exists():
            return False
        problem = check_manifest(path, {"stage": stage, "key": key}, required=STAGE_FILES[stage])
        if problem is None:
            return True
        log.warning("cache entry %s: %s; rebuilding", path, problem)
        discard_directory(path)
        return False

    @staticmethod
    def _build(stage: str, key: str, path: Path, builder, art: SharedArtifacts, task) -> None:
        """Run ``builder`` into a temporary directory, add ``metrics.json`` and, last, the manifest,
        then move it to ``path`` in one step. Only under the stage's lock."""
        t0 = time.time()
        with atomic_directory(path) as tmp:
            metrics = builder(tmp, art)
            metrics["seconds"] = round(time.time() - t0, 2)
            if task.summary():  # real data (task=hf): the rows each dataset gave, used and skipped
                metrics["data"] = task.summary()
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
            write_manifest(tmp, {"stage": stage, "key": key, "version": STAGE_VERSION})

    # --- shared optimisation loop ------------------------------------------------------------------
    def _fit(self, model, batches, loss_fn, lr: float, steps: int, desc: str) -> torch.Tensor:
        """AdamW with 20 warm-up steps then linear decay, gradient clipping at 1, a progress bar.
        ``loss_fn(batch) -> (loss, postfix)``. Returns the last loss."""
        opt = adamw(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
        model.train()
        bar = tqdm(total=steps, desc=desc, disable=not self.progress, leave=False)
        for batch in batches:
            loss, postfix = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", **postfix)
        bar.close()
        return loss

    # --- 1. SFT -----------------------------------------------------------------------------
    def _sft_batches(self, demos, batch_size, generator):
        order = torch.randperm(len(demos), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            chunk = [demos[j] for j in order[i : i + batch_size]]
            yield SequenceBatch.from_lists(
                [p for p, _ in chunk], [r for _, r in chunk], self.task.pad_id, device=self.device
            )

    def _sft_loss(self, model, batch, mask) -> torch.Tensor:
        return -masked_mean(token_logprobs(model, batch, 1.0, mask), batch.response_mask)

    def _train_sft(self, out: Path, art: SharedArtifacts) -> dict:
        cfg = self.task_cfg.sft
        seed = derive_seed(self.task_cfg.seed, "sft")
        torch.manual_seed(seed)
        model = configure_memory(build_policy(self.task, self.model_cfg), self.model_cfg).to(self.device)
        demos = self.task.demonstrations()
        gen = make_generator(seed)
        perm = torch.randperm(len(demos), generator=gen).tolist()
        n_held = max(1, int(len(demos) * cfg.heldout_fraction))
        held, train = [demos[i] for i in perm[:n_held]], [demos[i] for i in perm[n_held:]]
        mask = self._logit_mask()

        def batches():
            for _ in range(cfg.epochs):
                yield from self._sft_batches(train, cfg.batch_size, gen)

        steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
        loss = self._fit(model, batches(), lambda b: (self._sft_loss(model, b, mask), {}), cfg.lr, steps, "SFT")
        model.eval()
        with torch.no_grad():
            held_losses = [self._sft_loss(model, b, mask).item() * len(b) for b in self._sft_batches(held, 256, gen)]
        metrics = {
            "sft/heldout_loss": sum(held_losses) / len(held),
            "sft/train_loss": loss.item(),
            "sft/demonstrations": len(train),
        }
        model.save_pretrained(out)
        self.task.tokenizer.save_pretrained(out)
        log.info("[shared] SFT held-out loss %.4f", metrics["sft/heldout_loss"])
        return metrics

    def _logit_mask(self) -> Optional[torch.Tensor]:
        mask = self.task.logit_mask(self.task.max_new_tokens)
        return None if mask is None else mask.to(self.device)

    def load_sft(self, art: SharedArtifacts, weights: bool = True):
        """The SFT model. ``weights=False``: its architecture on the meta device, no weight read or allocated
        (a sharded run's other processes, which receive their shards from the main process)."""
        from transformers import AutoModelForCausalLM

        if not weights:
            return _on_meta(AutoModelForCausalLM, art.sft_dir, self.model_cfg)
        return AutoModelForCausalLM.from_pretrained(art.sft_dir, **dtype_kwargs(self.model_cfg)).to(self.device)

    # --- 2. preference data ---------------------------------------------------------------------
    def _build_preferences(self, out: Path, art: SharedArtifacts) -> dict:
        given = self.task.preference_data()
        if given is not None:
            return self._given_preferences(given, out)
        cfg = self.task_cfg.preferences
        seed = derive_seed(self.task_cfg.seed, "preferences")
        gen = make_generator(seed)
        sft = freeze(self.load_sft(art))
        prompts_pool = self.task.train_prompts
        idx = torch.randint(len(prompts_pool), (cfg.n_prompts,), generator=gen).tolist()
        sampling = sampling_generator(gen, self.device, seed)  # gen itself on the CPU
        mask = self._logit_mask()
        rows = {"prompt": [], "responses": [], "ranking": [], "gold": []}
        chunk = max(1, 512 // cfg.k)
        for i in tqdm(range(0, len(idx), chunk), desc="preferences", disable=not self.progress, leave=False):
            prompts = [prompts_pool[j] for j in idx[i : i + chunk]]
            batch = sample_responses(
                sft,
                [p for p in prompts for _ in range(cfg.k)],
                eos_id=self.task.eos_id,
                pad_id=self.task.pad_id,
                max_new_tokens=self.task.max_new_tokens,
                temperature=cfg.sample_temperature,
                logit_mask=mask,
                generator=sampling,
                compiled=self.model_cfg.compile_generation,
            )
            responses = batch.responses()
            gold = self.task.gold_reward(batch.prompts(), responses).view(len(prompts), cfg.k)
            ranking = plackett_luce_ranking(gold, cfg.label_temperature, gen)
            for b, p in enumerate(prompts):
                rows["prompt"].append(self.task.decode_prompt(p))
                rows["responses"].append([self.task.decode_response(r) for r in responses[b * cfg.k : (b + 1) * cfg.k]])
                rows["ranking"].append(ranking[b].tolist())
                rows["gold"].append(gold[b].tolist())
        ds = datasets.Dataset.from_dict(rows)
        n_held = max(1, int(len(ds) * cfg.heldout_fraction))
        ds.select(range(n_held, len(ds))).save_to_disk(str(out / "train"))
        ds.select(range(n_held)).save_to_disk(str(out / "heldout"))
        gold = torch.tensor(rows["gold"])
        ranked_gold = gold.gather(1, torch.tensor(rows["ranking"]))
        agree = (ranked_gold[:, :-1] >= ranked_gold[:, 1:]).float().mean().item()
        return {
            "preferences/lists": len(ds),
            "preferences/k": cfg.k,
            "preferences/train_pairs": (len(ds) - n_held) * cfg.k * (cfg.k - 1) // 2,
            "preferences/adjacent_label_agreement_with_gold": agree,
            "preferences/sft_gold_reward": gold.mean().item(),
        }

    def _given_preferences(self, ds: datasets.Dataset, out: Path) -> dict:
        """The task's own preference data (``task=hf``), split like generated data. The gold column
        is the judge's score on the held-out lists (where it measures the reward model), null on
        the others and everywhere without a judge."""
        seed = derive_seed(self.task_cfg.seed, "preferences")
        order = torch.randperm(len(ds), generator=make_generator(seed)).tolist()
        n_held = max(1, int(len(ds) * self.task_cfg.preferences.heldout_fraction))
        held, train = ds.select(order[:n_held]), ds.select(order[n_held:])
        if len(train) == 0:
            raise DataError(
                f"task.preference_data: {len(ds)} row(s) leave none for training after "
                f"{n_held} held out; give more rows"
            )
        unknown = [[None] * len(rs) for rs in train["responses"]]
        train.add_column("gold", unknown).save_to_disk(str(out / "train"))
        held.add_column("gold", self._judge_lists(held)).save_to_disk(str(out / "heldout"))
        ks = sorted({len(rs) for rs in ds["responses"]})
        return {
            "preferences/lists": len(ds),
            "preferences/k": ks[0] if len(ks) == 1 else ks,
            "preferences/train_pairs": sum(len(rs) * (len(rs) - 1) // 2 for rs in train["responses"]),
            "preferences/source": "task.preference_data",
        }

    def _judge_lists(self, ds: datasets.Dataset) -> list[list[Optional[float]]]:
        """The gold reward of every response of every list (None without a judge), 256 at a time."""
        if not self.task.has_gold:
            return [[None] * len(rs) for rs in ds["responses"]]
        flat = [
            (self.task.encode_prompt(p), self.task.encode_response(r))
            for p, rs in zip(ds["prompt"], ds["responses"])
            for r in rs
        ]
        gold = torch.cat(
            [
                self.task.gold_reward([p for p, _ in flat[i : i + 256]], [r for _, r in flat[i : i + 256]])
                for i in range(0, len(flat), 256)
            ]
        ).tolist()
        out, i = [], 0
        for rs in ds["responses"]:
            out.append(gold[i : i + len(rs)])
            i += len(rs)
        return out

    # --- 3. reward model ------------------------------------------------------------------------
    def _encode_lists(self, ds: datasets.Dataset) -> list[tuple[list[int], list[list[int]], list[int]]]:
        """Ranked lists as token ids, encoded once: (prompt, K responses, ranking) per row."""
        return [
            (self.task.encode_prompt(p), [self.task.encode_response(r) for r in rs], list(rank))
            for p, rs, rank in zip(ds["prompt"], ds["responses"], ds["ranking"])
        ]

    def _rm_rewards(self, model, lists) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards (B, K) of the K responses of each list, one forward per response, and the rankings."""
        prompts = [p for p, rs, _ in lists for _ in rs]
        responses = [r for _, rs, _ in lists for r in rs]
        batch = SequenceBatch.from_lists(prompts, responses, self.task.pad_id, device=self.device)
        ranking = torch.tensor([rank for _, _, rank in lists], device=self.device)
        r = reward_scores(model, batch.input_ids, batch.attention_mask)
        return r.view(len(lists), -1), ranking  # (B, K)

    def _train_reward_model(self, out: Path, art: SharedArtifacts) -> dict:
        cfg = self.rm_cfg
        seed = derive_seed(self.task_cfg.seed, "reward_model")
        torch.manual_seed(seed)
        gen = make_generator(seed)
        if cfg.pretrained:  # a trained reward model: centred and evaluated, not trained
            model = build_reward_model(self.task, self.model_cfg, cfg.pretrained).to(self.device)
        else:
            model = configure_memory(build_reward_model(self.task, self.model_cfg), self.model_cfg)
            sft = self.load_sft(art)
            model.base_model.load_state_dict(sft.base_model.state_dict())  # RM starts from the SFT transformer
            del sft
            model.to(self.device)
        held_ds = art.preferences("heldout")
        train, held = self._encode_lists(art.preferences("train")), self._encode_lists(held_ds)

        def batches():
            for _ in range(cfg.epochs):
                order = torch.randperm(len(train), generator=gen).tolist()
                for i in range(0, len(order), cfg.batch_size):
                    yield [train[j] for j in order[i : i + cfg.batch_size]]

        def loss_fn(rows):
            loss, m = ranking_loss(*self._rm_rewards(model, rows))
            return loss, {"acc": f"{m['rm/accuracy'].item():.2f}"}

        if not cfg.pretrained:
            steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
            self._fit(model, batches(), loss_fn, cfg.lr, steps, "reward model")
        freeze(model)
        with torch.no_grad():  # centring: the mean reward over the preference data becomes 0
            all_r = torch.cat(
                [self._rm_rewards(model, train[i : i + 256])[0].flatten() for i in range(0, len(train), 256)]
            )
            model.config.reward_bias = float(all_r.mean())
            metrics = self._rm_eval(model, held, held_ds["gold"])
            metrics["rm/train_mean_after_centring"] = float(
                torch.cat(
                    [self._rm_rewards(model, train[i : i + 256])[0].flatten() for i in range(0, len(train), 256)]
                ).mean()
            )
        metrics["rm/bias"] = model.config.reward_bias
        model.save_pretrained(out)
        self.task.tokenizer.save_pretrained(out)
        log.info(
            "[shared] reward model held-out accuracy: %.3f vs the labels, %s vs the gold order",
            metrics["rm/heldout_accuracy_labels"],
            _fmt(metrics["rm/heldout_accuracy_gold"]),
        )
        return metrics

    def _rm_eval(self, model, held: list, gold: list[list[float]]) -> dict:
        rewards, ranking = self._rm_rewards(model, held)
        _, m = ranking_loss(rewards, ranking)
        gold = torch.tensor([[math.nan if g is None else g for g in row] for row in gold], device=rewards.device)
        dg = gold.unsqueeze(2) - gold.unsqueeze(1)  # (B, K, K)
        dr = rewards.unsqueeze(2) - rewards.unsqueeze(1)
        strict = dg > 0  # noiseless gold order, ties excluded
        acc_gold = ((dr > 0) & strict).sum().item() / max(1, strict.sum().item())
        if bool(gold.isnan().any()):
            acc_gold = None  # no judge: there is no gold order
        return {
            "rm/heldout_accuracy_labels": m["rm/accuracy"].item(),
            "rm/heldout_accuracy_gold": acc_gold,
            "rm/heldout_loss": m["loss/reward_model"].item(),
            "rm/heldout_lists": len(held),
        }

    def load_reward_model(self, art: SharedArtifacts, weights: bool = True):
        """The reward model (``weights=False``: on the meta device, as :meth:`load_sft`)."""
        from transformers import AutoModelForSequenceClassification

        if not weights:
            return _on_meta(AutoModelForSequenceClassification, art.reward_model_dir, self.model_cfg)
        return AutoModelForSequenceClassification.from_pretrained(
            art.reward_model_dir, **dtype_kwargs(self.model_cfg)
        ).to(self.device)


def _on_meta(auto, directory: Path, model_cfg):
    """The model saved in ``directory`` built from its config alone, on the meta device (no memory)."""
    from transformers import AutoConfig

    with torch.device("meta"):
        return auto.from_config(AutoConfig.from_pretrained(directory), **dtype_kwargs(model_cfg))


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"
