"""The shared stages: the reward model's ranking loss (against trl's reward trainer and a pair loop),
Plackett-Luce labels, the preference data and its pairs, and the stage cache and its keys."""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch

from rlhf_bench.benchmarks.config import ModelConfig
from rlhf_bench.benchmarks.data import expand_pairs
from rlhf_bench.benchmarks.models import (
    SequenceBatch,
    build_reward_model,
    reward_scores,
)
from rlhf_bench.benchmarks.stages import STAGE_FILES, SharedStages, plackett_luce_ranking, ranking_loss
from rlhf_bench.benchmarks.utils import check_manifest, make_generator


# ============================================================================ reward-model loss
def test_ranking_loss_k2_equals_trl_reward_trainer(bandit, tmp_path):
    """K = 2: our loss equals trl's RewardTrainer.compute_loss (its real code path: collator,
    model forward, -logsigmoid(r_chosen - r_rejected)) on the same pairs and model."""
    from trl import RewardConfig, RewardTrainer

    task = bandit.task
    torch.manual_seed(0)
    rm = build_reward_model(task, ModelConfig())
    responses = task.all_responses()
    pairs = [(task.train_prompts[i], responses[7 * i + 3], responses[11 * i + 5][: 2 + i % 3]) for i in range(8)]
    ds = datasets.Dataset.from_dict(
        {"chosen_ids": [p + c for p, c, _ in pairs], "rejected_ids": [p + r for p, _, r in pairs]}
    )
    args = RewardConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        use_cpu=True,
        center_rewards_coefficient=None,
        per_device_train_batch_size=len(pairs),
        save_strategy="no",
        logging_strategy="no",
    )
    tr = RewardTrainer(model=rm, args=args, train_dataset=ds, processing_class=copy.deepcopy(task.tokenizer))
    inputs = tr.data_collator([ds[i] for i in range(len(ds))])
    assert "margin" not in inputs
    rm.eval()
    with torch.no_grad():
        trl_loss = tr.compute_loss(rm, dict(inputs)).item()
        batch = SequenceBatch.from_lists(
            [p for p, _, _ in pairs for _ in (0, 1)], [x for _, c, r in pairs for x in (c, r)], task.pad_id
        )
        rewards = reward_scores(rm, batch.input_ids, batch.attention_mask).view(-1, 2)
    ours, metrics = ranking_loss(rewards, torch.tensor([[0, 1]] * len(pairs)))
    assert ours.item() == pytest.approx(trl_loss, abs=1e-6)
    assert abs(trl_loss - math.log(2)) > 1e-3  # not a degenerate all-equal case
    swapped, _ = ranking_loss(rewards, torch.tensor([[1, 0]] * len(pairs)))
    assert abs(swapped.item() - trl_loss) > 1e-3
    assert metrics["rm/accuracy"].item() == pytest.approx((rewards[:, 0] > rewards[:, 1]).float().mean().item())


def test_ranking_loss_k4_equals_pair_loop():
    g = torch.Generator().manual_seed(0)
    B, K = 5, 4
    rewards = torch.randn(B, K, generator=g, dtype=torch.float64) * 2
    ranking = torch.stack([torch.randperm(K, generator=g) for _ in range(B)])
    loss, _ = ranking_loss(rewards, ranking)
    total = 0.0
    for b in range(B):
        pairs = list(itertools.combinations(ranking[b].tolist(), 2))  # (better, worse)
        assert len(pairs) == math.comb(K, 2) == 6
        nll = [-math.log(1 / (1 + math.exp(-(rewards[b, w] - rewards[b, worse]).item()))) for w, worse in pairs]
        total += sum(nll) / len(pairs)
    assert loss.item() == pytest.approx(total / B, abs=1e-10)
    # gradient: the best response is pushed up, the worst down
    r = rewards.clone().requires_grad_(True)
    ranking_loss(r, ranking)[0].backward()
    best, worst = ranking[:, 0], ranking[:, -1]
    assert (r.grad.gather(1, best[:, None]) < 0).all() and (r.grad.gather(1, worst[:, None]) > 0).all()


def test_plackett_luce_noiseless_is_gold_order():
    scores = torch.tensor([[0.1, 3.0, -1.0, 2.0]])
    assert plackett_luce_ranking(scores, 0.0, make_generator(0)).tolist() == [[1, 3, 0, 2]]
    noisy = plackett_luce_ranking(scores.expand(2000, 4), 1.0, make_generator(0))
    assert (noisy[:, 0] == 1).float().mean() > 0.5 and (noisy[:, 0] != 1).any()


# ============================================================================= preference data
def test_preference_data_columns_and_pairs(bandit):
    task = bandit.task
    k = bandit.groups["task"].preferences.k
    ds = bandit.artifacts.preferences("train")
    assert {"prompt", "responses", "ranking"} <= set(ds.column_names)
    held = bandit.artifacts.preferences("heldout")
    assert len(ds) + len(held) == bandit.groups["task"].preferences.n_prompts
    for ex in ds.select(range(20)):
        assert sorted(ex["ranking"]) == list(range(k)) and len(ex["responses"]) == k
        assert task.encode(ex["prompt"])[0] == task.bos_id
        for r in ex["responses"]:
            task.response_index(task.encode(r))  # stored text round-trips to a valid response
    sub = ds.select(range(30))
    pairs = expand_pairs(sub)
    assert len(pairs) == len(sub) * math.comb(k, 2)
    gold_wins = []
    for i, ex in enumerate(sub):
        block = pairs.select(range(i * 6, (i + 1) * 6))
        assert set(block["prompt"]) == {ex["prompt"]}
        g = dict(zip(ex["responses"], ex["gold"]))
        gold_wins += [g[c] > g[r] for c, r in zip(block["chosen"], block["rejected"]) if g[c] != g[r]]
    assert np.mean(gold_wins) > 0.5  # labels follow the gold reward (with noise)


def test_expand_pairs_chosen_ranked_above_rejected():
    ds = datasets.Dataset.from_dict(
        {
            "prompt": ["p", "q"],
            "responses": [["a", "b", "c", "d"], ["w", "x", "y"]],
            "ranking": [[2, 0, 3, 1], [1, 2, 0]],
        }
    )
    pairs = expand_pairs(ds)
    got = list(zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]))
    assert set(got[:6]) == {
        ("p", "c", "a"),
        ("p", "c", "d"),
        ("p", "c", "b"),
        ("p", "a", "d"),
        ("p", "a", "b"),
        ("p", "d", "b"),
    }
    assert set(got[6:]) == {("q", "x", "y"), ("q", "x", "w"), ("q", "y", "w")} and len(got) == 9


# ============================================================================ shared-stage cache
# (damaged entries, manifests and parallel builds: tests/stages/test_cache.py)
def test_shared_stages_reuse_cache(bandit, monkeypatch):
    """A second prepare() with the same config reuses every stage: nothing is trained or built
    again (the builders would raise), and the same directories and metrics come back, each entry
    with a manifest that checks out. Asserted on what was reused, never on wall time."""
    assert bandit.first_prepare_reused == {"sft": False, "preferences": False, "reward_model": False}
    g = bandit.groups
    stages = SharedStages(
        bandit.task, g["task"], g["model"], g["reward_model"], bandit.cfg.cache_dir, torch.device("cpu"), progress=False
    )
    for builder in ("_train_sft", "_build_preferences", "_train_reward_model", "_fit"):
        monkeypatch.setattr(stages, builder, lambda *a, _name=builder, **k: pytest.fail(f"{_name} ran again"))
    art = stages.prepare()
    assert art.reused == {"sft": True, "preferences": True, "reward_model": True}
    assert art.sft_dir == bandit.artifacts.sft_dir and art.reward_model_dir == bandit.artifacts.reward_model_dir
    assert art.metrics["sft"] == bandit.artifacts.metrics["sft"]
    dirs = {"sft": art.sft_dir, "preferences": art.preferences_dir, "reward_model": art.reward_model_dir}
    for stage, path in dirs.items():
        assert check_manifest(path, {"stage": stage, "key": path.name}, required=STAGE_FILES[stage]) is None, stage


def test_shared_stage_keys(bandit):
    g = bandit.groups
    t, m, rm = g["task"], g["model"], g["reward_model"]

    def keys(task_cfg=t, model_cfg=m, rm_cfg=rm):
        return SharedStages(bandit.task, task_cfg, model_cfg, rm_cfg, "/nonexistent", torch.device("cpu")).keys()

    base = keys()
    more_sft = keys(task_cfg=replace(t, sft=replace(t.sft, epochs=t.sft.epochs + 1)))
    assert all(more_sft[s] != base[s] for s in base)  # SFT changed, and everything downstream
    protocol = keys(task_cfg=replace(t, steps=t.steps + 100, prompts_per_step=3, eval_every=7, temperature=0.7))
    assert protocol == base
    prefs = keys(task_cfg=replace(t, preferences=replace(t.preferences, n_prompts=77)))
    assert prefs["sft"] == base["sft"] and prefs["preferences"] != base["preferences"]
    assert prefs["reward_model"] != base["reward_model"]
    rm_lr = keys(rm_cfg=replace(rm, lr=rm.lr * 2))
    assert rm_lr["preferences"] == base["preferences"] and rm_lr["reward_model"] != base["reward_model"]
    assert keys(rm_cfg=replace(rm, kind="gold")) == base  # the proxy does not depend on what is optimised
    assert keys(model_cfg=replace(m, name="renamed")) == base
    assert keys(model_cfg=replace(m, n_embd=32))["sft"] != base["sft"]
