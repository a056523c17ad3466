"""The field's own code beside the harness's step in the speed study: trl's trainer of an algorithm, where the
algorithm names one (``Algorithm.trl_peer``), on the same model, prompts, tokens, beta and updates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ..runtime.phases import synchronize
from .speed_setup import UPDATES, length_judge, random_prompts


class _StepClock:
    """A transformers callback: the wall time of every optimizer step."""

    def __init__(self, device: torch.device):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                synchronize(device)
                clock.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                synchronize(device)
                clock.seconds.append(time.perf_counter() - clock.t0)

        self.seconds: list[float] = []
        self.callback = Callback()


def _trl_common(a, device: torch.device, out: Path) -> dict:
    return dict(
        output_dir=str(out),
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=device.type == "cpu",
        bf16=a.dtype == "bfloat16",
        learning_rate=1e-6,
        seed=0,
        disable_tqdm=True,
    )


def _trl_online(trainer_cls, config_cls, a, device, workdir: Path) -> list[float]:
    """trl's GRPO or RLOO: per generation cycle (``UPDATES`` optimizer steps), the first left out."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    texts = [tok.decode(p) for p in random_prompts(tok, a.prompts * (a.steps + 1), a.prompt_tokens, seed=1)]
    per_update = a.prompts * a.responses // 2  # 2 steps per generation x 4 iterations = 8 updates
    cfg = config_cls(
        **_trl_common(a, device, workdir / trainer_cls.__name__),
        per_device_train_batch_size=per_update,
        gradient_accumulation_steps=1,
        num_generations=a.responses,
        steps_per_generation=2,
        num_iterations=UPDATES // 2,
        max_completion_length=a.new_tokens,
        temperature=1.0,
        top_k=0,
        beta=a.beta,
        use_vllm=False,
        max_steps=UPDATES * a.steps,
    )
    clock = _StepClock(device)
    trainer = trainer_cls(
        model=a.model,
        reward_funcs=length_judge_trl,
        args=cfg,
        train_dataset=Dataset.from_dict({"prompt": texts}),
        processing_class=tok,
        callbacks=[clock.callback],
    )
    trainer.train()
    cycles = [sum(clock.seconds[i : i + UPDATES]) for i in range(0, len(clock.seconds) - UPDATES + 1, UPDATES)]
    return cycles[1:]


def length_judge_trl(prompts: list[str], completions: list[str], **kw) -> list[float]:
    """trl's reward-function signature around :func:`length_judge`."""
    return length_judge(prompts, completions)


def _trl_dpo(a, device, workdir: Path) -> list[float]:
    """trl's DPO with precomputed reference log-probs: per update of ``prompts / 2`` pairs."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ids = random_prompts(tok, 3 * a.prompts * (a.steps + 1), a.prompt_tokens, seed=2)
    n = len(ids) // 3
    pairs = {
        "prompt": [tok.decode(p) for p in ids[:n]],
        "chosen": [tok.decode(p) for p in ids[n : 2 * n]],
        "rejected": [tok.decode(p) for p in ids[2 * n : 3 * n]],
    }
    cfg = DPOConfig(
        **_trl_common(a, device, workdir / "DPOTrainer"),
        per_device_train_batch_size=a.prompts // 2,
        gradient_accumulation_steps=1,
        beta=a.beta,
        precompute_ref_log_probs=True,
        max_steps=a.steps * 2,
    )
    clock = _StepClock(device)
    DPOTrainer(
        model=a.model,
        args=cfg,
        train_dataset=Dataset.from_dict(pairs),
        processing_class=tok,
        callbacks=[clock.callback],
    ).train()
    return clock.seconds[1:]


def _peer_grpo(a, device, workdir):
    from trl import GRPOConfig, GRPOTrainer

    return "trl GRPOTrainer, per generation cycle", _trl_online(GRPOTrainer, GRPOConfig, a, device, workdir), 1


def _peer_rloo(a, device, workdir):
    from trl import RLOOConfig, RLOOTrainer

    return "trl RLOOTrainer, per generation cycle", _trl_online(RLOOTrainer, RLOOConfig, a, device, workdir), 1


def _peer_dpo(a, device, workdir):
    return "trl DPOTrainer, per update", _trl_dpo(a, device, workdir), UPDATES


#: How this study times each trl trainer that an algorithm names as its peer (``Algorithm.trl_peer``: which
#: trl trainer implements an algorithm is the plugin's to declare): what it times, its seconds, and how many
#: of its units one harness step holds.
TRL_PEERS: dict[str, Callable] = {"GRPOTrainer": _peer_grpo, "RLOOTrainer": _peer_rloo, "DPOTrainer": _peer_dpo}


def peer_of(option: str) -> Callable | None:
    """The timer of trl's trainer for an ``algorithm`` option, if its algorithm declares one."""
    from ..plugins import algorithm_options

    return TRL_PEERS.get(getattr(algorithm_options()[option].cls, "trl_peer", None) or "")
