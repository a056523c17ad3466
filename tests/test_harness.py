"""Harness tests: the traps real RLHF code fell into (one test each), exact evaluation on the bandit, the optimal
frontier, best-of-n, the shared stages (reward loss, preference data, cache and its lock) and
seeding of whole runs."""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from hydra.core.config_store import ConfigStore

from rlhf_bench.algorithms.base import Algorithm
from rlhf_bench.algorithms.baselines import BestOfNPolicy
from rlhf_bench.algorithms.registry import available_algorithms, register_algorithm
from rlhf_bench.benchmarks.config import AlgorithmConfig, ModelConfig
from rlhf_bench.benchmarks.data import expand_pairs
from rlhf_bench.benchmarks.evaluation import (
    LMPolicy,
    kl_and_reward,
    optimal_frontier,
    optimal_point,
    optimal_reward_at_kl,
    tilted,
)
from rlhf_bench.benchmarks.models import (
    SequenceBatch,
    build_policy,
    build_reward_model,
    disable_dropout,
    hidden_scores,
    last_token_index,
    position_ids,
    response_logits,
    reward_scores,
    score_batch,
    token_logprobs,
)
from rlhf_bench.benchmarks.stages import STAGE_FILES, SharedStages, plackett_luce_ranking, ranking_loss
from rlhf_bench.benchmarks.training import runs
from rlhf_bench.benchmarks.utils import check_manifest, make_generator


# ---------------------------------------------------------------------------------- helpers
def manual_logprobs(model, prompt, response, temperature=1.0, logit_mask=None) -> torch.Tensor:
    """Per-token log-probs of ``response`` given ``prompt`` from one forward on the unpadded
    sequence (natural positions, no attention mask): an independent reference computation."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logits = logits[len(prompt) - 1 : len(prompt) + len(response) - 1] / temperature  # (Tr, V)
    if logit_mask is not None:
        logits = logits.masked_fill(~logit_mask[: len(response)], float("-inf"))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def manual_reward(rm, prompt, response) -> float:
    """The scalar head at the last token of the unpadded sequence, minus the centring bias."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        hidden = rm.base_model(input_ids=ids).last_hidden_state  # (1, T, H)
        score = rm.score(hidden[0, -1]).item()
    return score - float(rm.config.reward_bias)


def random_policy(task, seed: int):
    torch.manual_seed(seed)
    return disable_dropout(build_policy(task, ModelConfig())).eval()


def table64(evaluator):
    """The bandit eval table in float64, reference renormalised exactly."""
    t = evaluator.table
    return torch.log_softmax(t.ref_logp.double(), -1), t.gold.double(), t.proxy.double()


# ================================================================= the traps real RLHF code fell into
def test_left_padding_does_not_change_logprobs(sentiment):
    """Trap: left padding without position ids from the mask. A response scored next to a longer
    prompt (so its own prompt is left-padded) gets the log-probs it gets alone."""
    task, model = sentiment.task, sentiment.ref
    prompts = sorted(task.eval_prompts, key=len)
    short, long = prompts[0], prompts[-1]
    assert len(long) - len(short) >= 3
    response = task.eval_prompts[5][1:6] + [task.eos_id]
    alone = SequenceBatch.from_lists([short], [response], task.pad_id)
    padded = SequenceBatch.from_lists([short, long], [response, response[:2]], task.pad_id)
    assert padded.query_mask[0, 0] == 0  # the short prompt really is left-padded
    with torch.no_grad():
        lp_alone = token_logprobs(model, alone)[0]
        lp_padded = token_logprobs(model, padded)[0]
    ref = manual_logprobs(model, short, response).float()
    torch.testing.assert_close(lp_alone, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_padded, lp_alone, atol=1e-5, rtol=0)

    # The trap is real: the plain forward (positions 0..T-1 counted over the padding) differs.
    with torch.no_grad():
        logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits.float()
    Tq = padded.query.shape[1]
    naive = torch.log_softmax(logits[0, Tq - 1 : -1], -1).gather(-1, padded.response[0].unsqueeze(-1)).squeeze(-1)
    naive = naive * padded.response_mask[0]
    assert (naive - lp_alone).abs().max() > 1e-3


def test_position_ids_follow_the_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 4]]


def test_temperature_logprobs_are_from_scaled_logits(sentiment):
    """Trap: ratio/KL log-probs computed without the sampling temperature."""
    task, model = sentiment.task, sentiment.ref
    prompts = task.eval_prompts[:4]
    responses = [p[1:4] + [task.eos_id] for p in task.eval_prompts[4:8]]
    batch = SequenceBatch.from_lists(prompts, responses, task.pad_id)
    T = 0.7
    with torch.no_grad():
        lp_T = token_logprobs(model, batch, temperature=T)
        lp_1 = token_logprobs(model, batch, temperature=1.0)
    assert lp_T.dtype == torch.float32
    for i, (p, r) in enumerate(zip(prompts, responses)):
        expected = manual_logprobs(model, p, r, temperature=T).float()
        torch.testing.assert_close(lp_T[i, : len(r)], expected, atol=1e-5, rtol=0)
    assert (lp_T - lp_1).abs().max() > 1e-2


def test_rollout_logprobs_match_sampling_temperature(sentiment):
    """The rollout's recorded log-probs (policy and reference) are those of logits / T with the
    task's logit mask, recomputed independently per sequence; and differ from T = 1."""
    task = sentiment.task
    T = 0.7
    engine = sentiment.engine_at(T)
    policy = sentiment.policy()
    with torch.no_grad():  # make the policy differ from the reference
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    policy.eval()
    ro = engine.rollout(policy, task.eval_prompts[:6], n=2, generator=make_generator(3))
    mask = task.logit_mask(task.max_new_tokens)
    lengths = ro.batch.response_mask.sum(1)
    assert lengths.min() < lengths.max()  # variable lengths: right padding is exercised
    far_from_t1 = 0.0
    for i, (p, r) in enumerate(zip(ro.batch.prompts(), ro.batch.responses())):
        n = len(r)
        exp_pol = manual_logprobs(policy, p, r, T, mask).float()
        exp_ref = manual_logprobs(sentiment.ref, p, r, T, mask).float()
        torch.testing.assert_close(ro.logprobs[i, :n], exp_pol, atol=1e-5, rtol=0)
        torch.testing.assert_close(ro.ref_logprobs[i, :n], exp_ref, atol=1e-5, rtol=0)
        assert torch.all(ro.logprobs[i, n:] == 0) and torch.all(ro.ref_logprobs[i, n:] == 0)
        far_from_t1 = max(
            far_from_t1, (ro.logprobs[i, :n] - manual_logprobs(policy, p, r, 1.0, mask).float()).abs().max().item()
        )
    assert far_from_t1 > 1e-2
    assert (ro.logprobs - ro.ref_logprobs).abs().max() > 1e-3  # pi_old comes from the policy, not the reference


def test_sampler_draws_from_the_tempered_distribution(bandit):
    """The sampler itself uses the temperature: the empirical first-action frequencies of 4000
    samples match the exact conditional at T = 0.5, not the one at T = 1."""
    task, model = bandit.task, bandit.ref
    prompt = task.eval_prompts[0]
    T = 0.5
    engine = bandit.engine_at(T)
    batch = engine.sample(model, [prompt] * 4000, generator=make_generator(11))
    first = torch.tensor([task._action_of[int(t)] for t in batch.response[:, 0]])
    freq = torch.bincount(first, minlength=task.A).double() / len(first)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()[torch.as_tensor(task.action_ids)]
    p_T, p_1 = torch.softmax(logits / T, -1), torch.softmax(logits, -1)
    tv_T, tv_1 = 0.5 * (freq - p_T).abs().sum().item(), 0.5 * (freq - p_1).abs().sum().item()
    assert tv_T < 0.03, (freq, p_T)
    assert 0.5 * (p_T - p_1).abs().sum().item() > 0.08  # the two hypotheses are distinguishable
    assert tv_1 > 0.06


def test_sampler_matches_an_uncached_replay(sentiment):
    """The KV-cached sampler draws each token from exactly the distribution a full forward gives
    (position ids from the mask, logits / T, logit mask): replaying the same generator stream on
    uncached full forwards reproduces every token, for left-padded prompts of mixed lengths."""
    task, model = sentiment.task, sentiment.ref
    T = 0.8
    engine = sentiment.engine_at(T)
    prompts = sorted(task.eval_prompts, key=len)[::3][:12]
    assert len({len(p) for p in prompts}) >= 3
    batch = engine.sample(model, prompts, generator=make_generator(5))
    g = make_generator(5)
    mask = task.logit_mask(task.max_new_tokens)
    tokens, done = [], torch.zeros(len(prompts), dtype=torch.bool)
    for t in range(batch.response.shape[1]):
        resp = torch.stack(tokens, 1) if tokens else torch.zeros(len(prompts), 0, dtype=torch.long)
        ids = torch.cat([batch.query, resp], 1)
        attn = torch.cat([batch.query_mask, torch.ones_like(resp)], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn)).logits[:, -1].float()
        probs = torch.softmax((logits / T).masked_fill(~mask[t], -1e9), -1)
        tok = torch.multinomial(probs, 1, generator=g).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, task.pad_id), tok)
        tokens.append(tok)
        done = done | (tok == task.eos_id)
    assert torch.equal(torch.stack(tokens, 1), batch.response)
    assert batch.response_mask.sum(1).min() < batch.response_mask.sum(1).max()


def _reward_probe(task):
    """Prompts of different lengths (the first gets left-padded) and responses of different lengths:
    two ending in EOS, one cut at ``max_new_tokens`` without EOS."""
    eos, words = task.eos_id, [int(w) for w in task.word_ids]
    prompts = [task.eval_prompts[0][:3], max(task.eval_prompts, key=len), task.eval_prompts[2][:4]]
    responses = [words[:5] + [eos], words[10:12] + [eos], words[20 : 20 + task.max_new_tokens]]
    return prompts, responses


@pytest.mark.parametrize("pad", ["eos", "pad"])
def test_reward_read_at_last_real_token(pad, sentiment):
    """Trap: reward read at the wrong token. With left-padded prompts, right-padded responses and
    a pad id equal to the EOS id (or the usual pad), ``reward_scores`` reads the last position whose
    mask is 1 (the EOS, or the last word of a response without EOS), as on the unpadded sequence."""
    task, rm = sentiment.task, sentiment.reward_model
    pad_id = task.eos_id if pad == "eos" else task.pad_id  # "eos": a tokenizer whose pad is its eos
    prompts, responses = _reward_probe(task)
    batch = SequenceBatch.from_lists(prompts, responses, pad_id=pad_id)
    assert (batch.response[:2, -1] == pad_id).all() and batch.query[0, 0] == pad_id and batch.query_mask[0, 0] == 0
    with torch.no_grad():
        got = reward_scores(rm, batch.input_ids, batch.attention_mask)
    expected = torch.tensor([manual_reward(rm, p, r) for p, r in zip(prompts, responses)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    Tq = batch.query.shape[1]
    assert last_token_index(batch.attention_mask).tolist() == [Tq + len(r) - 1 for r in responses]


def test_pad_equal_eos_trap_is_real(sentiment, fresh_copy):
    """Pooling at "the last token that is not pad" (Hugging Face's sequence-classification rule)
    with pad == eos reads a different token than ours for responses that end in EOS."""
    task = sentiment.task
    rm = fresh_copy(sentiment.reward_model)
    rm.config.pad_token_id = task.eos_id
    prompts, responses = _reward_probe(task)
    batch = SequenceBatch.from_lists(prompts, responses, pad_id=task.eos_id)
    with torch.no_grad():
        ours = reward_scores(rm, batch.input_ids, batch.attention_mask)
        hf = (
            rm(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=position_ids(batch.attention_mask),
            ).logits.squeeze(-1)
            - rm.config.reward_bias
        )
    assert (hf[:2] - ours[:2]).abs().min() > 1e-4
    assert hf[2].item() == pytest.approx(ours[2].item(), abs=1e-5)  # no EOS: both read the last word


def test_last_token_index_from_mask_only():
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [3, 5, 2]


@pytest.mark.parametrize("which", ["bandit", "sentiment"])
def test_reward_model_is_centred(which, request, fresh_copy):
    """Trap: reward normalisation silently off. The trained reward model's mean over all K
    responses of the training preference lists is 0, its bias is not, and ``reward_scores``
    subtracts ``config.reward_bias``."""
    bundle = request.getfixturevalue(which)
    task, rm = bundle.task, bundle.reward_model
    ds = bundle.artifacts.preferences("train")
    prompts, responses = [], []
    for p, rs in zip(ds["prompt"], ds["responses"]):
        for r in rs:
            prompts.append(task.encode(p))
            responses.append(task.encode(r))
    assert len(responses) == len(ds) * bundle.groups["task"].preferences.k
    batch = SequenceBatch.from_lists(prompts, responses, task.pad_id)
    scores = score_batch(rm, batch)
    bias = float(rm.config.reward_bias)
    assert abs(scores.double().mean().item()) < 1e-4
    assert abs(bias) > 1e-3
    assert bias == pytest.approx(bundle.artifacts.metrics["reward_model"]["rm/bias"])
    raw = fresh_copy(rm)
    raw.config.reward_bias = 0.0
    sub = batch.select(torch.arange(16))
    with torch.no_grad():
        centred = reward_scores(rm, sub.input_ids, sub.attention_mask)
        uncentred = reward_scores(raw, sub.input_ids, sub.attention_mask)
        heads = hidden_scores(rm, sub.input_ids, sub.attention_mask)
    torch.testing.assert_close(uncentred - centred, torch.full_like(centred, bias), atol=1e-5, rtol=0)
    torch.testing.assert_close(uncentred, heads.gather(1, last_token_index(sub.attention_mask)[:, None]).squeeze(1))


def test_disable_dropout_makes_train_mode_deterministic(bandit):
    """Trap: dropout left on during RL (the PPO ratio is not 1 on the first minibatch)."""
    task = bandit.task
    torch.manual_seed(0)
    policy = build_policy(task, ModelConfig(dropout=0.1))
    rm = build_reward_model(task, ModelConfig(dropout=0.1))
    batch = SequenceBatch.from_lists(task.eval_prompts[:8], task.all_responses()[:8], task.pad_id)
    for model, fn in (
        (policy, lambda m: token_logprobs(m, batch)),
        (rm, lambda m: reward_scores(m, batch.input_ids, batch.attention_mask)),
    ):
        model.train()
        with torch.no_grad():
            assert (fn(model) - fn(model)).abs().max() > 1e-4  # the trap is real with dropout on
        disable_dropout(model)
        assert model.training
        with torch.no_grad():
            a, b = fn(model), fn(model)
        assert torch.equal(a, b)
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_logprobs_are_fp32_for_a_bf16_model(sentiment):
    """Trap: low-precision logits in the log-softmax. A bfloat16 model still yields float32,
    finite log-probs close to the float32 model's."""
    task = sentiment.task
    model32 = sentiment.policy().eval()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    responses = [p[1:5] + [task.eos_id] for p in task.eval_prompts[8:12]]
    batch = SequenceBatch.from_lists(task.eval_prompts[:4], responses, task.pad_id)
    mask = task.logit_mask(task.max_new_tokens)
    with torch.no_grad():
        logits = response_logits(model16, batch, 0.7, mask)
        lp16 = token_logprobs(model16, batch, 0.7, mask)
        lp32 = token_logprobs(model32, batch, 0.7, mask)
    assert next(model16.parameters()).dtype == torch.bfloat16
    assert logits.dtype == torch.float32 and lp16.dtype == torch.float32
    assert torch.isfinite(lp16).all()
    assert (lp16 <= 0).all()
    assert (lp16 - lp32).abs().max() < 0.05


# ============================================================================== seeds and runs
@dataclass
class SeedToyConfig(AlgorithmConfig):
    """A minimal trained algorithm for the seed tests (REINFORCE with a group-mean baseline)."""

    name: str = "seed_toy"
    responses_per_prompt: int = 2
    lr: float = 1e-2


@register_algorithm("seed_toy", config=SeedToyConfig)
class SeedToy(Algorithm):
    data = "online"

    def prepare(self, rollout):
        return {**self.batch_tensors(rollout.batch), "rewards": rollout.rewards}

    def loss(self, mb):
        logp = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb)).sum(1)
        adv = mb["rewards"] - mb["rewards"].mean()
        loss = -(adv * logp).mean()
        return loss, {"loss/policy": loss.detach()}


ConfigStore.instance().store(group="algorithm", name="seed_toy", node=SeedToyConfig)


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a run file without wall-time fields (``time/...``), the only ones allowed to differ."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _perturb_global_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_same_seed_same_eval_best_of_n(bandit, run_config, tmp_path):
    """Trap: seeds that do not reach every random source. best_of_n twice (with the global RNGs
    disturbed in between) gives byte-identical eval.jsonl and samples.jsonl; another eval seed
    changes the sampled metrics but not the exact ones."""
    cfg = run_config(bandit, "algorithm=best_of_n", "algorithm.n=4")
    _perturb_global_rngs(1)
    runs.run(cfg, tmp_path / "a")
    _perturb_global_rngs(2)
    runs.run(cfg, tmp_path / "b")
    for name in ("eval.jsonl", "samples.jsonl", "optimal_frontier.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    cfg_c = copy.deepcopy(cfg)  # one composition for all three runs: conf/ edits mid-test cannot interfere
    cfg_c.task.eval_seed = 99
    runs.run(cfg_c, tmp_path / "c")
    a, c = _read_jsonl(tmp_path / "a" / "eval.jsonl")[0], _read_jsonl(tmp_path / "c" / "eval.jsonl")[0]
    assert (a["kl"], a["reward_gold"], a["reward_proxy"]) == (c["kl"], c["reward_gold"], c["reward_proxy"])  # exact
    assert a["kl_k1"] != c["kl_k1"]  # estimated along the samples
    assert (tmp_path / "a" / "samples.jsonl").read_text() != (tmp_path / "c" / "samples.jsonl").read_text()


def _trained_algorithms() -> list[str]:
    """The toy, plus the first real trained plugin that exists (with its YAML) when there is one."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "algorithm"
    real = [
        a
        for a in ("ppo", "p3o_v2", "p3o", "online_dpo", "dpo")
        if a in available_algorithms() and (conf / f"{a}.yaml").exists()
    ]
    return ["seed_toy"] + real[:1]


@pytest.mark.parametrize("algo", _trained_algorithms())
def test_same_seed_same_training(algo, bandit, run_config, tmp_path):
    """A trained algorithm: the same seed reproduces eval.jsonl and train.jsonl exactly (global
    RNGs disturbed in between); another seed gives the same step-0 evaluation (same SFT base,
    same eval stream) but a different trained policy."""
    cfg = run_config(
        bandit, f"algorithm={algo}", "task.steps=2", "task.eval_every=2", "task.prompts_per_step=8", "seed=5"
    )
    cfg_c = copy.deepcopy(cfg)  # one composition for all three runs: conf/ edits mid-test cannot interfere
    cfg_c.seed = 6
    _perturb_global_rngs(3)
    runs.run(cfg, tmp_path / "a")
    _perturb_global_rngs(4)
    runs.run(cfg, tmp_path / "b")
    runs.run(cfg_c, tmp_path / "c")
    ea, eb, ec = (_read_jsonl(tmp_path / d / "eval.jsonl") for d in "abc")
    assert [r["step"] for r in ea] == [0, 2]
    assert ea == eb
    assert _read_jsonl(tmp_path / "a" / "train.jsonl") == _read_jsonl(tmp_path / "b" / "train.jsonl")
    assert ea[0] == ec[0]
    assert ea[1]["kl"] != ec[1]["kl"] and ea[1]["kl"] > 0


# ============================================================================ exact bandit eval
def test_bandit_enumerated_probabilities_sum_to_one(bandit, bandit_evaluator):
    """exp(ResponseTable.logprobs) sums to 1 over the A**L responses for every eval prompt, for
    the SFT model and a random one, at T = 1 and T = 0.7."""
    table = bandit_evaluator.table
    task = bandit.task
    assert table.ref_logp.shape == (len(task.eval_prompts), task.A**task.L)
    for engine in (bandit.engine, bandit.engine_at(0.7)):
        for model in (bandit.ref, random_policy(task, 1)):
            mass = table.logprobs(engine, model).double().exp().sum(-1)
            torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    # and the table agrees with direct per-sequence log-probs
    mask = task.logit_mask(task.max_new_tokens)
    for j in (0, 37, 255):
        direct = manual_logprobs(bandit.ref, task.eval_prompts[3], table.responses[j], 1.0, mask).sum()
        assert table.ref_logp[3, j].item() == pytest.approx(direct.item(), abs=1e-5)


def test_sampled_sequence_kl_is_kl_of_policy_from_reference(bandit, bandit_evaluator):
    """The estimator used on non-enumerable tasks (``LMPolicy.sequence_kl``: the full-distribution
    per-token KL summed along a sampled response) averages, by the chain rule, to the sequence
    KL(pi || pi_ref). On the bandit the expectation over responses is exact: weight each of the
    A**L responses by pi(y) and compare with the enumerated KL(pi || pi_ref), which differs from
    the reverse KL(pi_ref || pi) by far more than the tolerance."""
    task, engine, table = bandit.task, bandit.engine, bandit_evaluator.table
    policy = random_policy(task, 3)
    for i in (0, 5):
        prompt = table.prompts[i]
        batch = SequenceBatch.from_lists([prompt] * len(table.responses), table.responses, task.pad_id)
        kl_per_response, _ = LMPolicy(policy).sequence_kl(engine, batch)  # (N,)
        logp = table.logprobs(engine, policy)[i].double()  # (N,) log pi(y | x)
        ref = table.ref_logp[i].double()
        forward = (logp.exp() * (logp - ref)).sum().item()
        reverse = (ref.exp() * (ref - logp)).sum().item()
        assert abs(forward - reverse) > 0.1 * forward
        assert (logp.exp() * kl_per_response.double()).sum().item() == pytest.approx(forward, rel=1e-4)


class _TiltedReference:
    """pi proportional to pi_ref * exp(r / beta) on every eval prompt (samples: the reference's)."""

    def __init__(self, ref_model, r: torch.Tensor, beta: float):
        self.ref, self.r, self.beta = ref_model, r, beta

    def sample(self, engine, prompts, generator):
        return engine.sample(self.ref, prompts, generator)

    def enumerated_logprobs(self, engine, table):
        return torch.log_softmax(table.ref_logp.double() + self.r.double() / self.beta, -1).float()


@pytest.mark.parametrize("beta", [0.3, 1.7])
def test_the_exact_optimum_scores_efficiency_one_at_its_own_kl(beta, bandit, bandit_evaluator):
    """The measures the convergence checks read (``efficiency`` and ``kl`` of an evaluation row,
    ``optimal_at_beta``) applied to pi*_beta itself: efficiency 1, KL(pi*_beta || pi_ref) and the
    optimal reward; the optimum of the proxy reward, judged by the gold one, scores below 1."""
    ev = bandit_evaluator
    kl_opt, r_opt = ev.optimal_at_beta(beta, "gold")
    row, _ = ev.evaluate(_TiltedReference(bandit.ref, ev.table.gold, beta), 1)
    assert row["efficiency"] == pytest.approx(1.0, abs=2e-4)
    assert row["kl"] == pytest.approx(kl_opt, rel=1e-3)
    assert row["reward_gold"] == pytest.approx(r_opt, rel=1e-4)
    proxy_row, _ = ev.evaluate(_TiltedReference(bandit.ref, ev.table.proxy, beta), 1)
    assert proxy_row["efficiency"] < 0.99


def test_prefix_tree_matches_full_forward_passes(bandit, bandit_evaluator):
    """The prefix tree (KV cache shared along prefixes) gives, for every response of a few prompts,
    the log-probs of one full forward pass per sequence (a random model at T = 0.7, so that position
    ids, temperature and mask all matter) and the reward model's score read at the last token."""
    table, task = bandit_evaluator.table, bandit.task
    prompts = task.eval_prompts[:5]
    flat = SequenceBatch.from_lists(
        [p for p in prompts for _ in table.responses], table.responses * len(prompts), task.pad_id
    )
    engine = bandit.engine_at(0.7)
    model = random_policy(task, 3)
    tree = table._prefix_tree.logprobs(model, prompts, engine)  # (5, N)
    full = token_logprobs(model, flat, 0.7, engine.logit_mask).sum(1).view(len(prompts), -1)
    torch.testing.assert_close(tree, full, atol=2e-5, rtol=0)
    proxy = score_batch(bandit.reward_model, flat).view(len(prompts), -1)
    torch.testing.assert_close(
        table._prefix_tree.rewards(bandit.reward_model, prompts, engine), proxy, atol=2e-5, rtol=0
    )
    torch.testing.assert_close(table.proxy[:5], proxy, atol=2e-5, rtol=0)


def test_reference_evaluation_is_cached_and_equal_to_a_fresh_one(bandit, tmp_path):
    """Every run's step-0 evaluation (the SFT base) is computed once per world and reused: the stored
    row and samples equal a fresh evaluation's, and a different temperature is not served from it."""
    from rlhf_bench.benchmarks.evaluation import Evaluator

    task = bandit.task
    for temperature in (1.0, 0.7):
        ev = Evaluator(bandit.engine_at(temperature), task.eval_prompts[:20], seed=5, cache_dir=tmp_path)
        fresh = ev.evaluate(LMPolicy(bandit.policy().eval()), step=0)
        first = ev.evaluate_reference(LMPolicy(bandit.policy().eval()), step=0)
        again = ev.evaluate_reference(LMPolicy(random_policy(task, 2)), step=0)  # served from the store
        assert first == again and json.loads(json.dumps(fresh[0])) == first[0] and fresh[1] == first[1]
    assert len(list(tmp_path.glob("eval_reference-*.json"))) == 2


def test_exact_kl_of_reference_to_itself_is_zero(bandit, bandit_evaluator):
    row, samples = bandit_evaluator.evaluate(LMPolicy(bandit.policy().eval()), step=0)
    assert 0.0 <= row["kl"] < 1e-6
    assert abs(row["kl_k1"]) < 1e-5
    assert row["prob_mass"] == pytest.approx(1.0, abs=1e-5)
    assert row["reward_gold"] == pytest.approx(bandit_evaluator.sft_gold, abs=1e-6)
    assert len(samples) == len(bandit.task.eval_prompts)
    # a different policy has positive exact KL
    row2, _ = bandit_evaluator.evaluate(LMPolicy(random_policy(bandit.task, 2)), step=0)
    assert row2["kl"] > 0.05


def test_bandit_samples_are_valid(bandit):
    """Every sampled response is L actions then EOS, for the SFT model and a random one."""
    task = bandit.task
    prompts = task.eval_prompts[:32] * 8
    for model in (bandit.ref, random_policy(task, 3)):
        batch = bandit.engine.sample(model, prompts, generator=make_generator(0))
        assert batch.response.shape == (len(prompts), task.L + 1)
        assert batch.response_mask.all()
        assert (batch.response[:, -1] == task.eos_id).all()
        assert torch.isin(batch.response[:, :-1], torch.as_tensor(task.action_ids)).all()
        idx = {task.response_index(r) for r in batch.responses()}  # raises on an invalid response
        assert len(idx) > 20


# ============================================================================ optimal frontier
def test_optimal_frontier_is_monotone_and_inverted(bandit_evaluator):
    ref, gold, _ = table64(bandit_evaluator)
    betas = [float(b) for b in np.geomspace(50, 0.02, 40)]
    front = optimal_frontier(ref, gold, betas)
    assert [b for b, _, _ in front] == betas
    kls = np.array([k for _, k, _ in front])
    rewards = np.array([r for _, _, r in front])
    assert kls[0] < 1e-3 and kls[-1] > 1.0
    assert np.all(np.diff(kls) > 0) and np.all(np.diff(rewards) > 0)  # beta decreasing -> both increase
    for beta in (5.0, 1.0, 0.3, 0.1):
        kl, r = optimal_point(ref, gold, beta)
        b_inv, r_inv = optimal_reward_at_kl(ref, gold, kl)
        assert b_inv == pytest.approx(beta, rel=1e-4)
        assert r_inv == pytest.approx(r, abs=1e-6)
    # the tilted policy is the argmax of E[r] - beta KL: it beats perturbations of itself
    beta = 0.5
    logp = tilted(ref, gold, beta)
    kl, r = kl_and_reward(logp, ref, gold)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.log_softmax(logp + 0.3 * torch.randn(logp.shape, generator=g, dtype=torch.float64), -1)
        k2, r2 = kl_and_reward(other, ref, gold)
        assert r2 - beta * k2 < r - beta * kl


def test_no_policy_lies_above_the_frontier(bandit_evaluator):
    """Random tilted/perturbed policies never beat the optimal reward at their own KL."""
    ref, gold, proxy = table64(bandit_evaluator)
    g = torch.Generator().manual_seed(1)
    gaps = []
    for i in range(60):
        beta = float(np.exp(torch.empty(1).uniform_(math.log(0.05), math.log(5.0), generator=g)))
        noise = torch.randn(ref.shape, generator=g, dtype=torch.float64) * (0.1 + i / 30)
        per_prompt_beta = beta * torch.exp(torch.randn(ref.shape[0], 1, generator=g, dtype=torch.float64))
        candidates = [
            ref + noise,
            ref + gold / beta + noise,
            ref + gold / per_prompt_beta,
            ref + 0.5 * (gold + proxy) / beta,
        ]
        for logits in candidates:
            logp = torch.log_softmax(logits, -1)
            kl, r = kl_and_reward(logp, ref, gold)
            _, best = optimal_reward_at_kl(ref, gold, kl)
            assert r <= best + 1e-7, (i, kl, r, best)
            gaps.append(best - r)
    assert max(gaps) > 0.05  # the candidates are genuinely sub-optimal, not frontier points


# ================================================================================== best-of-n
@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_of_n_kl_bound(n, bandit, bandit_evaluator):
    table = bandit_evaluator.table
    ref = torch.log_softmax(table.ref_logp.double(), -1)
    for kind in ("learned", "gold"):
        logp = BestOfNPolicy(bandit.ref, n).enumerated_logprobs(bandit.engine_at(1.0, kind), table).double()
        torch.testing.assert_close(
            logp.exp().sum(-1), torch.ones(len(table.prompts), dtype=torch.float64), atol=1e-5, rtol=0
        )
        kl, _ = kl_and_reward(logp, ref, table.gold.double())
        bound = math.log(n) - (n - 1) / n
        assert kl <= bound + 1e-6, (kind, kl, bound)
        assert kl > 0.9 * bound  # close to the bound: the 256 responses rarely tie


@pytest.mark.parametrize("n", [2, 4, 8])
def test_best_of_n_lies_under_the_gold_frontier(n, bandit, bandit_evaluator):
    """Judged by the gold reward it is close to (but not above) the exact gold frontier; judged by
    the proxy its gold reward is also under it."""
    table = bandit_evaluator.table
    ref, gold, _ = table64(bandit_evaluator)
    sft = (ref.exp() * gold).sum(-1).mean().item()
    eff = {}
    for kind in ("gold", "learned"):
        logp = BestOfNPolicy(bandit.ref, n).enumerated_logprobs(bandit.engine_at(1.0, kind), table).double()
        kl, r = kl_and_reward(logp, ref, gold)
        _, best = optimal_reward_at_kl(ref, gold, kl)
        assert r <= best + 1e-6, (kind, kl, r, best)
        eff[kind] = (r - sft) / (best - sft)
    assert eff["gold"] > 0.85, eff
    assert eff["learned"] < eff["gold"]


def test_best_of_n_sampling_picks_the_best(bandit):
    task = bandit.task
    pol = BestOfNPolicy(bandit.ref, 4)
    prompts = task.eval_prompts[:16]
    batch = pol.sample(bandit.engine_at(1.0, "gold"), prompts, make_generator(0))
    all4 = bandit.engine.sample(bandit.ref, [p for p in prompts for _ in range(4)], make_generator(0))
    gold = task.gold_reward(all4.prompts(), all4.responses()).view(16, 4)
    torch.testing.assert_close(task.gold_reward(batch.prompts(), batch.responses()), gold.max(1).values)


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
# (damaged entries, manifests and parallel builds: tests/test_cache.py)
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
