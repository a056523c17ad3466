"""Run under ``accelerate launch --multi_gpu --num_processes 2`` (or ``torchrun``) by
``tests/runtime/test_distributed.py``: sharded training steps against the same steps in one process.

``CASES`` is a JSON list of ``[name, algorithm, override, ...]``. For each case every process builds the same
trainer, whose models are sharded with FSDP2 over the processes (benchmarks/runtime/sharding.py), and the main
process also builds an unsharded one (a single-process run's trainer) from the same seeds and cached stages.
Both take the same global batch:

- online algorithms: one rollout of 8 prompts, sampled by the sharded policy with one shared generator, then
  ``prepare``; offline ones: the first 8 preference pairs, then ``prepare``;
- each process computes the loss of its share of the groups and backpropagates; FSDP2 averages the shares'
  gradients, which are then gathered whole; the unsharded trainer computes the whole batch's loss.

``OUT`` (JSON) gets, per case: the largest difference between the two gradients, the largest gradient, the
rows, how many checkpoints each process read while the sharded trainer was built (the others receive their
shards from the main process), the parameter bytes each process holds for all the run's models and the bytes
of its optimizer state after a step, each against the unsharded trainer's, and,
after one optimizer step and the trainer's own ``finish``, the largest difference between the gathered policy
and ``policy/`` loaded back with ``from_pretrained`` (with LoRA: the adapters, loaded onto the base).

The case ``shares`` checks instead that the processes' shares of three offline steps tile the single-process
source's batches (``expected`` and ``got``).

Usage: ``dist_worker.py OUT CACHE_DIR CASES``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest and helpers

from conftest import compose_config  # noqa: E402

from helpers.cli import SMALL as CLI_SMALL  # noqa: E402
from rlhf_bench.benchmarks.config import validate  # noqa: E402
from rlhf_bench.benchmarks.runtime.distributed import Distributed, exit_process, shutdown_process_group  # noqa: E402
from rlhf_bench.benchmarks.runtime.sharding import full_state_dict, full_tensor, local_bytes, local_tensor  # noqa: E402
from rlhf_bench.benchmarks.training.context import PreferenceBatch  # noqa: E402
from rlhf_bench.benchmarks.training.trainer import Trainer  # noqa: E402

SMALL = [*CLI_SMALL, "task.prompts_per_step=8"]  # 8 prompts: whole groups split over 2 processes


class OneProcess:
    """What a single-process run's trainer gets for its processes: one, the main one."""

    active, world, rank, is_main, type = False, 1, 0, True, "NO"
    device = torch.device("cpu")

    def share(self, items):
        return list(items)

    def mean_metrics(self, metrics, summed=()):
        return metrics

    def any(self, flag):
        return flag

    def gather(self, obj):
        return [obj]

    def broadcast(self, obj):
        return obj

    def barrier(self):
        pass

    def summary(self):
        return {"num_processes": 1, "type": "NO"}


def trainer(cache: str, run_dir: Path, dist, *overrides: str) -> Trainer:
    cfg = compose_config(*SMALL, *overrides, cache_dir=cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return Trainer(cfg, validate(cfg), run_dir, resolved, dist)


def global_batch(t: Trainer) -> dict[str, torch.Tensor]:
    """The same 8 prompts' rollout (one generator) or the same 8 pairs on every process, prepared."""
    if t.spec.cls.data == "offline":
        idx = list(range(8))
        pairs = PreferenceBatch(torch.tensor(idx), *([t.ctx.pairs[i][j] for i in idx] for j in range(3)))
        return t.algo.prepare(pairs)
    n = t.algo.responses_per_prompt
    rollout = t.engine.rollout(t.policy, t.task.train_prompts[:8], n, torch.Generator().manual_seed(7))
    return t.algo.prepare(rollout)


def gradients(t: Trainer, data: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    t.opt.zero_grad(set_to_none=True)
    loss, _ = t.algo.loss(data)
    loss.backward()
    return [full_tensor(p.grad) for p in t.params]  # sharded: FSDP2's average over processes, gathered


def model_bytes(t: Trainer) -> int:
    """The parameter bytes this process holds for every model of the run (a LoRA view holds none of its own)."""
    models = {id(m): m for m in (t.policy, t.value_model, t.engine.ref_model, t.engine.reward_model) if m is not None}
    return sum(local_bytes(m) for m in models.values() if isinstance(m, torch.nn.Module))


def optimizer_bytes(t: Trainer) -> int:
    """The bytes of the optimizer state this process holds (AdamW's two moments: its shards of them)."""
    return sum(local_bytes_of(v) for state in t.opt.state.values() for v in state.values() if torch.is_tensor(v))


def local_bytes_of(t: torch.Tensor) -> int:
    local = local_tensor(t)
    return local.numel() * local.element_size() if local.dim() else 0  # step counts are not state worth counting


def reload_difference(t: Trainer, lora: bool) -> float:
    """One optimizer step, the trainer's own finish (policy/), and policy/ read back against the gathered weights."""
    t.opt.step()
    t.optimizer_bytes = t.dist.gather(optimizer_bytes(t))
    weights = full_state_dict(t.policy)
    t.steps = max(t.steps, 1)
    t.evaluate(t.steps)  # the row finish() records (evaluation, on the main process)
    t.finish()
    if not t.dist.is_main:
        return 0.0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if lora:
        base = AutoModelForCausalLM.from_pretrained(t.art.sft_dir)
        loaded = PeftModel.from_pretrained(base, t.run_dir / "policy").state_dict()
        names = [k for k in weights if "lora_" in k]
    else:
        loaded = AutoModelForCausalLM.from_pretrained(t.run_dir / "policy").state_dict()
        names = list(weights)
    assert names and all(k in loaded for k in names), sorted(set(names) - set(loaded))[:5]
    return max((weights[k].float() - loaded[k].float()).abs().max().item() for k in names)


def counting_reads() -> list[str]:
    """Record every checkpoint ``from_pretrained`` reads in this process (the list returned)."""
    import transformers

    reads: list[str] = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForSequenceClassification):
        original = auto.from_pretrained.__func__

        def counted(cls, path, *args, _original=original, **kwargs):
            reads.append(str(path))
            return _original(cls, path, *args, **kwargs)

        auto.from_pretrained = classmethod(counted)
    return reads


def compare(out: dict[str, Any], cache: str, name: str, *overrides: str) -> None:
    dist = Distributed("cpu")
    root = Path(cache).parent / name
    reads = counting_reads()
    sharded = trainer(cache, root / f"sharded{dist.rank}", dist, *overrides)
    weights_read = dist.gather(len(reads))
    data = global_batch(sharded)
    rows = len(data["response_mask"]) // dist.world  # whole groups: each process's share
    share = {k: v[dist.rank * rows : (dist.rank + 1) * rows] for k, v in data.items()}
    got = gradients(sharded, share)
    held = sharded.dist.gather(model_bytes(sharded))
    if dist.is_main:
        alone = trainer(cache, root / "alone", OneProcess(), *overrides)
        own = global_batch(alone)  # the same rollout, scores, reference log-probs (values), unsharded
        assert own.keys() == data.keys()
        data_diff = max((own[k].double() - data[k].double()).abs().max().item() for k in own)
        expected = gradients(alone, data)
        alone.opt.step()
        assert [g.shape for g in got] == [g.shape for g in expected]
        out[name] = {
            "processes": dist.world,
            "rows": len(data["response_mask"]),
            "share_rows": rows,
            "max_abs_diff": max((a - b).abs().max().item() for a, b in zip(got, expected)),
            "max_abs_grad": max(g.abs().max().item() for g in expected),
            "data_max_abs_diff": data_diff,
            "bytes": held,
            "weights_read": weights_read,
            "unsharded_bytes": model_bytes(alone),
            "unsharded_optimizer_bytes": optimizer_bytes(alone),
        }
        alone.close()
    lora = any(o.startswith("model.lora.r=") and not o.endswith("=0") for o in overrides)
    diff = reload_difference(sharded, lora)
    if dist.is_main:
        out[name]["reload_max_abs_diff"] = diff
        out[name]["optimizer_bytes"] = sharded.optimizer_bytes


def offline_shares(out: dict[str, Any], cache: str) -> None:
    """Offline pairs: three steps of every process's share, gathered, against the single-process
    source (process 0's generator) on the same data: the shares must tile its batches."""
    from rlhf_bench.benchmarks.training.sources import OfflineSource
    from rlhf_bench.benchmarks.utils import derive_seed, make_generator

    dist = Distributed("cpu")
    t = trainer(cache, Path(cache).parent / f"shares{dist.rank}", dist, "algorithm=dpo")
    mine = [t.source.next(t.policy)[0].index.tolist() for _ in range(3)]
    shares = dist.gather(mine)
    if dist.is_main:
        alone = OfflineSource(t.ctx.pairs, t.tcfg.prompts_per_step, make_generator(derive_seed(t.cfg.seed, "train")))
        expected = [alone.next(None)[0].index.tolist() for _ in range(3)]
        got = [sum((s[step] for s in shares), []) for step in range(3)]
        out["shares"] = {"expected": expected, "got": got, "share_sizes": [len(s[0]) for s in shares]}
    t.close()


def main(out_path: str, cache: str, cases: str) -> None:
    out: dict[str, Any] = {}
    for name, *overrides in json.loads(cases):
        if name == "shares":
            offline_shares(out, cache)
        else:
            compare(out, cache, name, *overrides)
    if Distributed("cpu").is_main:
        Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
    shutdown_process_group()
    exit_process(0)
