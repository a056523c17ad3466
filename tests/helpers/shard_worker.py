"""One sharded step on 2 CPU processes (gloo), started by ``accelerate launch`` from tests/runtime/test_sharding.py.

Each process holds half of a 4-row batch (responses of different lengths) and computes the mean sequence
log-prob of its rows through the harness's ``token_logprobs``, called inside the sharded :class:`Root`; FSDP2
averages the gradients over the processes. Process 0 then computes the whole batch's gradient on an
unsharded copy of the same model and writes the largest difference, and both processes' parameter bytes,
to ``OUT`` (JSON).

Then each process samples its own prompts with its own generator from a sharded small-vocabulary model
through the rollout engine, so that the processes' responses end after different numbers of tokens: the
sampling must finish (each process stops when its rows end, inside the gather window of
``runtime/sharding.gathered``), give the tokens the unsharded model gives, and leave the model sharded and
trainable (a sharded step after it). ``OUT`` gets every process's number of sampled columns.

Usage: ``shard_worker.py OUT``.
"""

from __future__ import annotations

import gc
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers

from helpers.models import tiny_gpt2  # noqa: E402
from rlhf_bench.benchmarks.models import SequenceBatch  # noqa: E402
from rlhf_bench.benchmarks.models.logprobs import token_logprobs  # noqa: E402
from rlhf_bench.benchmarks.runtime.distributed import exit_process, shutdown_process_group  # noqa: E402
from rlhf_bench.benchmarks.runtime.sharding import full_tensor, local_bytes, shard  # noqa: E402

ROWS = 4


def rows(vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(5)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [ids(3), ids(5), ids(1), ids(4)], [ids(4), ids(2), ids(6), ids(3)]


def mean_sequence_logprob(model, prompts, responses) -> torch.Tensor:
    batch = SequenceBatch.from_lists(prompts, responses, pad_id=2)
    return token_logprobs(model, batch).sum(1).mean()  # (B,) -> ()


def uneven_sampling(rank: int, world: int) -> dict:
    """Sampling whose length differs between processes finishes, as the unsharded model samples, and the
    model comes back sharded (the same bytes as before it) and trainable."""
    from types import SimpleNamespace

    from rlhf_bench.benchmarks.rollout import RolloutEngine

    task = SimpleNamespace(eos_id=1, pad_id=2, max_new_tokens=24, logit_mask=lambda n: None)
    engine = RolloutEngine(task, None, None, reward_kind="proxy", temperature=1.0, device="cpu")
    root = shard(tiny_gpt2(seed=1, vocab=16))  # EOS has a chance of about 1/16 per token
    before = local_bytes(root)
    prompts = [[3 + rank, 4], [5, 6 + rank, 7], [8]]
    batch = engine.sample(root, prompts, torch.Generator().manual_seed(11 + rank))
    alone = engine.sample(tiny_gpt2(seed=1, vocab=16), prompts, torch.Generator().manual_seed(11 + rank))
    after = local_bytes(root)
    loss = root(mean_sequence_logprob, prompts, batch.responses())  # a sharded step after sampling
    loss.backward()
    columns = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(columns, torch.tensor([float(batch.response.shape[1])]))
    return {
        "columns": [int(c.item()) for c in columns],
        "same_tokens": bool(torch.equal(batch.response, alone.response)),
        "bytes_kept": before == after,
    }


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a hang fails the test within a minute
    rank, world = dist.get_rank(), dist.get_world_size()
    model = tiny_gpt2(seed=0)  # float64: the comparison is exact up to summation order
    whole_bytes = local_bytes(model)
    root = shard(model)
    prompts, responses = rows(model.config.vocab_size)
    k = ROWS // world
    loss = root(mean_sequence_logprob, prompts[rank * k : (rank + 1) * k], responses[rank * k : (rank + 1) * k])
    loss.backward()
    grads = {n: full_tensor(p.grad) for n, p in root.named_parameters()}
    sharded_bytes = torch.tensor([local_bytes(root)], dtype=torch.float64)
    all_bytes = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(all_bytes, sharded_bytes)
    sampling = uneven_sampling(rank, world)
    same = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(same, torch.tensor([float(sampling["same_tokens"] and sampling["bytes_kept"])]))
    if rank == 0:
        reference = tiny_gpt2(seed=0)
        mean_sequence_logprob(reference, prompts, responses).backward()
        expected = {f"model.{n}": p.grad for n, p in reference.named_parameters()}
        assert set(grads) == set(expected), sorted(set(grads) ^ set(expected))
        diff = max((grads[n] - expected[n]).abs().max().item() for n in expected)
        scale = max(expected[n].abs().max().item() for n in expected)
        Path(out).write_text(
            json.dumps(
                {
                    "processes": world,
                    "max_abs_diff": diff,
                    "max_abs_grad": scale,
                    "unsharded_bytes": whole_bytes,
                    "sharded_bytes": [int(b.item()) for b in all_bytes],
                    "sampling_columns": sampling["columns"],
                    "sampling_as_unsharded": [bool(x.item()) for x in same],
                }
            )
        )
    del root, model, grads  # FSDP2's state holds the last collectives' work handles: release them first
    gc.collect()
    shutdown_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    # Leave without interpreter finalization, as rlhf-bench's processes do: gloo work objects that outlive
    # it abort the process, which a CI run saw on rank 1 after the result was written.
    exit_process(0)
