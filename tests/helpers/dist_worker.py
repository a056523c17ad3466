"""Run under ``accelerate launch --multi_gpu --num_processes 2`` (or ``torchrun``) by
``tests/runtime/test_distributed.py``: one training step of ``ALGORITHM`` on the bandit, split over the
processes, against the same step on the whole batch in one process.

Every process builds the same trainer (same seeds, same cached shared stages), samples the same
global batch with one shared generator and runs ``prepare`` on it; each then computes the loss on
its share of the groups, and the gradients are averaged across processes (the trainer's own
:meth:`~rlhf_bench.benchmarks.runtime.distributed.Distributed.average_gradients`). The main process also
computes the gradient of the whole batch's loss, alone, and writes both to ``OUT`` (JSON):
``max_abs_diff``, ``max_abs_grad`` and the number of processes.

For an offline algorithm (``dpo``) it checks instead that the processes' shares of three steps
tile the single-process source's batches (``expected`` and ``got`` in ``OUT``).

Usage: ``dist_worker.py OUT CACHE_DIR ALGORITHM``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest and helpers

from conftest import compose_config  # noqa: E402

from rlhf_bench.benchmarks.config import validate  # noqa: E402
from rlhf_bench.benchmarks.runtime.distributed import Distributed  # noqa: E402
from rlhf_bench.benchmarks.training.trainer import Trainer  # noqa: E402


def gradients(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in trainer.params if p.grad is not None]).clone()


def loss_gradient(trainer: Trainer, data: dict[str, torch.Tensor], average: bool) -> torch.Tensor:
    trainer.opt.zero_grad(set_to_none=True)
    loss, _ = trainer.algo.loss(data)
    loss.backward()
    if average:
        trainer.dist.average_gradients(trainer.params)
    return gradients(trainer)


def offline_shares(trainer: Trainer, out: str) -> None:
    """Offline pairs: three steps of every process's share, gathered, against the single-process
    source (process 0's generator) on the same data: the shares must tile its batches."""
    from rlhf_bench.benchmarks.training.sources import OfflineSource
    from rlhf_bench.benchmarks.utils import derive_seed, make_generator

    dist = trainer.dist
    mine = [trainer.source.next(trainer.policy)[0].index.tolist() for _ in range(3)]
    shares = dist.gather(mine)
    if dist.is_main:
        alone = OfflineSource(
            trainer.ctx.pairs, trainer.tcfg.prompts_per_step, make_generator(derive_seed(trainer.cfg.seed, "train"))
        )
        expected = [alone.next(None)[0].index.tolist() for _ in range(3)]
        got = [sum((s[step] for s in shares), []) for step in range(3)]
        Path(out).write_text(
            json.dumps(
                {"processes": dist.world, "expected": expected, "got": got, "share_sizes": [len(s[0]) for s in shares]}
            )
        )
    dist.barrier()
    trainer.close()


def main(out: str, cache: str, algorithm: str) -> None:
    cfg = compose_config(
        "task=bandit",
        "task.n_sft_demos=1000",
        "task.sft.epochs=1",
        "task.preferences.n_prompts=100",
        "reward_model.epochs=1",
        "progress=false",
        f"algorithm={algorithm}",
        "task.prompts_per_step=8",
        cache_dir=cache,
    )
    dist = Distributed("cpu")
    run_dir = Path(cache).parent / f"worker{dist.rank}"
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, validate(cfg), run_dir, {}, dist)
    if trainer.spec.cls.data == "offline":
        return offline_shares(trainer, out)
    algo, n = trainer.algo, trainer.algo.responses_per_prompt
    prompts = trainer.task.train_prompts[:8]
    rollout = trainer.engine.rollout(trainer.policy, prompts, n, torch.Generator().manual_seed(7))  # same everywhere
    data = algo.prepare(rollout)
    rows = len(prompts) * n // dist.world  # whole groups: each process's share of the prompts
    share = {k: v[dist.rank * rows : (dist.rank + 1) * rows] for k, v in data.items()}
    averaged = loss_gradient(trainer, share, average=True)
    if dist.is_main:
        whole = loss_gradient(trainer, data, average=False)
        Path(out).write_text(
            json.dumps(
                {
                    "max_abs_diff": (averaged - whole).abs().max().item(),
                    "max_abs_grad": whole.abs().max().item(),
                    "processes": dist.world,
                    "rows": len(data["response_mask"]),
                    "share_rows": rows,
                }
            )
        )
    dist.barrier()
    trainer.close()


if __name__ == "__main__":
    from rlhf_bench.benchmarks.runtime.distributed import shutdown_process_group

    main(*sys.argv[1:4])
    shutdown_process_group()
