"""KTO (Ethayarajh et al. 2024), ``algorithms/kto.py``: the loss and the plugin.

The loss: float64 gradcheck, closed forms derived by hand from the paper's loss, equality with trl 1.16's
``KTOTrainer._compute_loss`` on the same tensors (values, z0, rewards and gradients), and its invariances (it
sees log pi and log pi_ref only through r, it depends on r only through r - z0 while the clamp is off, z0 carries
no gradient). The mismatched pairs of z0: other prompts' completions, the minibatch's own, never a pair of the
same prompt where a shift avoids it, the same on every run with the same seed. The plugin end to end on a tiny
GPT-2: its value and gradient at pi = pi_ref are the closed forms, its value on a perturbed policy is the formula
on log-probs of unpadded single sequences, the reference never gets gradients. A bad weight fails in one line.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from helpers.algo import make_context, perturb_, preference_batch, random_pairs, sentiment_task, tiny_lm

from rlhf_bench.algorithms.kto import KTO, KTOConfig, kto_loss, mismatched_rows
from rlhf_bench.algorithms.registry import get_algorithm
from rlhf_bench.benchmarks.config import ConfigError, validate
from rlhf_bench.benchmarks.models import SequenceBatch
from rlhf_bench.benchmarks.studies.speed_peers import TRL_PEERS
from rlhf_bench.benchmarks.training.context import split_groups

D = torch.float64
torch.set_num_threads(1)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _kto_by_hand(chosen, rejected, kl, beta, wd, wu) -> float:
    """The paper's loss written out in plain Python: z0 = max(0, mean KL), the mean over all examples."""
    z0 = max(0.0, sum(kl) / len(kl))
    terms = [wd * (1 - _sigmoid(beta * (r - z0))) for r in chosen]
    terms += [wu * (1 - _sigmoid(beta * (z0 - r))) for r in rejected]
    return sum(terms) / len(terms)


def _randn(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(seed)) + shift


# ------------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("kl_shift", [0.8, -3.0], ids=["z0>0", "z0-clamped"])
def test_gradcheck(kl_shift):
    """float64 gradcheck in the chosen and rejected log-ratios, unbalanced classes, both sides of the clamp."""
    c, r = _randn(4, 1).requires_grad_(), _randn(3, 2).requires_grad_()
    kl = _randn(7, 3, kl_shift)
    assert torch.autograd.gradcheck(lambda a, b: kto_loss(a, b, kl, 0.7, 1.3, 0.9)[0], (c, r))


def test_value_and_gradient_at_the_reference_are_the_closed_forms():
    """pi = pi_ref: every r = 0 and the KL estimate is 0, so every sigmoid is 1/2: the loss is
    (n_D lambda_D + n_U lambda_U) / (2 (n_D + n_U)) and dL/dr_i = -lambda_D beta / (4 N) for a desirable
    example, +lambda_U beta / (4 N) for an undesirable one (sigma'(0) = 1/4), N = n_D + n_U."""
    beta, wd, wu = 0.5, 1.2, 0.8
    for n_d, n_u in ((3, 3), (2, 5)):
        c, r = torch.zeros(n_d, dtype=D, requires_grad=True), torch.zeros(n_u, dtype=D, requires_grad=True)
        loss, metrics = kto_loss(c, r, torch.zeros(n_d + n_u, dtype=D), beta, wd, wu)
        n = n_d + n_u
        assert loss.item() == pytest.approx((n_d * wd + n_u * wu) / (2 * n), abs=1e-15)
        assert metrics["kto/z0"].item() == 0.0
        loss.backward()
        assert torch.allclose(c.grad, torch.full_like(c, -wd * beta / (4 * n)), atol=1e-15)
        assert torch.allclose(r.grad, torch.full_like(r, wu * beta / (4 * n)), atol=1e-15)
    balanced, _ = kto_loss(torch.zeros(4, dtype=D), torch.zeros(4, dtype=D), torch.zeros(8, dtype=D), 0.1)
    assert balanced.item() == pytest.approx(0.5, abs=1e-15)  # the defaults lambda_D = lambda_U = 1: (1 + 1) / 4


def test_non_trivial_case_by_hand():
    """Two desirable, one undesirable example, beta 0.5, lambda_D 1.2, lambda_U 0.8, KL rows (0.9, -0.1, 0.4):
    z0 = 0.4; then KL rows averaging below zero: z0 = 0 (the clamp)."""
    beta, wd, wu = 0.5, 1.2, 0.8
    c, r = torch.tensor([0.7, -0.4], dtype=D), torch.tensor([0.3], dtype=D)
    loss, m = kto_loss(c, r, torch.tensor([0.9, -0.1, 0.4], dtype=D), beta, wd, wu)
    desirable = 1.2 * (1 - _sigmoid(0.5 * (0.7 - 0.4))) + 1.2 * (1 - _sigmoid(0.5 * (-0.4 - 0.4)))
    undesirable = 0.8 * (1 - _sigmoid(0.5 * (0.4 - 0.3)))
    by_hand = (desirable + undesirable) / 3  # a mean over the 3 examples
    assert loss.item() == pytest.approx(by_hand, abs=1e-14)
    assert m["kto/z0"].item() == pytest.approx(0.4, abs=1e-15)
    assert m["kto/reward_chosen"].item() == pytest.approx(0.5 * 0.15, abs=1e-15)
    assert m["kto/reward_rejected"].item() == pytest.approx(0.5 * 0.3, abs=1e-15)
    clamped, m = kto_loss(c, r, torch.tensor([-0.5, 0.1], dtype=D), beta, wd, wu)
    assert m["kto/z0"].item() == 0.0 and m["kto/kl_batch"].item() == pytest.approx(-0.2, abs=1e-15)
    by_hand = (1.2 * (1 - _sigmoid(0.35)) + 1.2 * (1 - _sigmoid(-0.2)) + 0.8 * (1 - _sigmoid(-0.15))) / 3
    assert clamped.item() == pytest.approx(by_hand, abs=1e-14)


def _trl_kto(per_token, mask, labels, kl_per_token, ref, ref_kl, beta, wd, wu):
    """trl 1.16's ``KTOTrainer._compute_loss`` (loss_type "kto", precomputed reference log-probs) on given tensors:
    its model's per-token log-probs of the examples and of their KL (mismatched) sequences, zero on padding, and
    the reference's sequence log-probs, through a stand-in model and a trainer that holds only what the method
    reads. Returns the loss and the trainer's recorded metrics."""
    from trl import KTOTrainer

    n, T = per_token.shape
    zeros = torch.zeros(n, T, dtype=per_token.dtype)
    completion = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask.long()], 1)  # trl shifts by one
    inputs = {
        "input_ids": torch.zeros(n, T + 1, dtype=torch.long),  # 0: the examples, 1: their KL sequences
        "attention_mask": torch.ones(n, T + 1, dtype=torch.long),
        "completion_mask": completion,
        "KL_input_ids": torch.ones(n, T + 1, dtype=torch.long),
        "KL_attention_mask": torch.ones(n, T + 1, dtype=torch.long),
        "KL_completion_mask": completion,
        "label": labels,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }

    def model(input_ids, **kw):
        if bool((input_ids == 1).all()):
            return SimpleNamespace(log_probs=kl_per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros)

    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        calculate_KL=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=wd,
        undesirable_weight=wu,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    return trainer._compute_loss(model, inputs, return_outputs=False), trainer._metrics["train"]


@pytest.mark.parametrize("kl_offset", [1.5, -1.5], ids=["z0>0", "z0-clamped"])
def test_equals_trls_kto_loss_on_the_same_tensors(kl_offset):
    """Unbalanced labels (5 desirable, 3 undesirable), float64: loss, z0, rewards and the gradient in the policy's
    log-probs agree with trl's; the KL sequences' log-probs get no gradient on either side."""
    g = torch.Generator().manual_seed(5)
    n, T, beta, wd, wu = 8, 6, 0.3, 1.25, 0.9
    labels = torch.tensor([True, False, True, True, False, True, False, True])
    mask = (torch.rand(n, T, generator=g) < 0.8).to(D)
    mask[:, 0] = 1
    per_token = (-torch.rand(n, T, generator=g, dtype=D) * 3 * mask).requires_grad_()  # (n, T) policy
    kl_per_token = (-torch.rand(n, T, generator=g, dtype=D) * 3 * mask).requires_grad_()  # (n, T) KL sequences
    ref = per_token.detach().sum(1) + torch.randn(n, generator=g, dtype=D)  # (n,) sequence log-probs under pi_ref
    ref_kl = kl_per_token.detach().sum(1) - kl_offset + 0.3 * torch.randn(n, generator=g, dtype=D)  # (n,)
    trl, trl_metrics = _trl_kto(per_token, mask, labels, kl_per_token, ref, ref_kl, beta, wd, wu)
    (trl_grad,) = torch.autograd.grad(trl, per_token)

    logratio = per_token.sum(1) - ref  # (n,)
    ours, metrics = kto_loss(logratio[labels], logratio[~labels], kl_per_token.sum(1) - ref_kl, beta, wd, wu)
    ours_grad, kl_grad = torch.autograd.grad(ours, (per_token, kl_per_token), allow_unused=True)
    assert ours.item() == pytest.approx(trl.item(), abs=1e-12)
    torch.testing.assert_close(ours_grad, trl_grad, rtol=0, atol=1e-12)
    assert kl_grad is None  # z0 is outside the graph
    assert metrics["kto/z0"].item() == pytest.approx(trl_metrics["kl"][-1], abs=1e-12)
    assert (metrics["kto/z0"].item() > 0) == (kl_offset > 0)  # both sides of the clamp are exercised
    assert metrics["kto/reward_chosen"].item() == pytest.approx(trl_metrics["rewards/chosen"][-1], abs=1e-12)
    assert metrics["kto/reward_rejected"].item() == pytest.approx(trl_metrics["rewards/rejected"][-1], abs=1e-12)
    assert abs(trl.item() - (5 * wd + 3 * wu) / 16) > 1e-2  # away from the value at pi = pi_ref


def test_depends_on_r_only_through_r_minus_z0_and_is_order_free():
    """Adding one constant to every log-ratio (examples and KL rows) moves z0 with them while the clamp is off:
    nothing changes; with the clamp on it does. Reordering examples, or KL rows, changes nothing."""
    c, r, kl = _randn(5, 7), _randn(5, 8), _randn(10, 9, 1.0)
    base = kto_loss(c, r, kl, 0.8, 1.1, 0.95)[0].item()
    assert kto_loss(c + 0.6, r + 0.6, kl + 0.6, 0.8, 1.1, 0.95)[0].item() == pytest.approx(base, abs=1e-14)
    moved = kto_loss(c - 3.0, r - 3.0, kl - 3.0, 0.8, 1.1, 0.95)[0].item()  # mean KL < 0: z0 stays at 0
    assert abs(moved - base) > 1e-2
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    shuffled = kto_loss(c[perm], r.flip(0), kl.flip(0), 0.8, 1.1, 0.95)[0].item()
    assert shuffled == pytest.approx(base, abs=1e-14)


def test_z0_carries_no_gradient():
    """KL log-ratios that require gradients are left out of the graph; the gradient is that of the loss with z0
    frozen at its value."""
    c, r = _randn(3, 11).requires_grad_(), _randn(4, 12).requires_grad_()
    kl = _randn(7, 13, 0.5).requires_grad_()
    loss, m = kto_loss(c, r, kl, 0.6, 1.0, 1.0)
    loss.backward()
    assert kl.grad is None and m["kto/z0"].item() > 0
    z0 = kl.detach().mean()
    c2, r2 = c.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    frozen = kto_loss(c2, r2, z0.expand(1), 0.6, 1.0, 1.0)[0]  # one KL row: z0 the same constant
    frozen.backward()
    torch.testing.assert_close(c.grad, c2.grad, rtol=0, atol=1e-15)
    torch.testing.assert_close(r.grad, r2.grad, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------ mismatched pairs
def _queries(prompt_ids: list[int], Tq: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved rows (2m, Tq) of pairs whose prompts are the given ids (left-padded, one real token)."""
    q = torch.zeros(2 * len(prompt_ids), Tq, dtype=torch.long)
    q[:, -1] = torch.tensor(prompt_ids).repeat_interleave(2)
    qm = torch.zeros_like(q)
    qm[:, -1] = 1
    return q, qm


def test_mismatched_rows_rotate_the_pairs_and_keep_the_labels():
    """Distinct prompts: pair j takes pair j-1's completions, chosen rows a chosen one and rejected rows a rejected
    one; the KL completions are a permutation of the minibatch's own (rows rotated by one would give pair j's
    rejected row its own chosen response)."""
    rows, same = mismatched_rows(*_queries([5, 6, 7, 8]))
    assert rows.tolist() == [6, 7, 0, 1, 2, 3, 4, 5]
    assert sorted(rows.tolist()) == list(range(8)) and not same.any()
    assert (rows % 2 == torch.arange(8) % 2).all()


def test_mismatched_rows_avoid_pairs_of_the_same_prompt():
    """Pairs of one ranked list share their prompt: the shift skips those that would meet their own prompt;
    where none can (one prompt only) the rows say so; one pair alone has no other completion."""
    rows, same = mismatched_rows(*_queries([5, 5, 9, 9]))
    assert rows.tolist() == [4, 5, 6, 7, 0, 1, 2, 3] and not same.any()  # shift 2: shift 1 pairs 5 with 5
    # 5, 5, 5, 9, 9: no shift avoids every clash; shifts 1..4 leave 3, 1, 1, 3 pairs with their own prompt
    rows, same = mismatched_rows(*_queries([5, 5, 5, 9, 9]))
    assert rows.tolist() == [6, 7, 8, 9, 0, 1, 2, 3, 4, 5]  # shift 2, the first of the fewest
    assert same.tolist() == [False] * 4 + [True] * 2 + [False] * 4  # pair 2 takes pair 0's completions
    rows, same = mismatched_rows(*_queries([3, 3]))
    assert rows.tolist() == [2, 3, 0, 1] and same.all()
    with pytest.raises(ValueError, match="at least 2 pairs per minibatch"):
        mismatched_rows(*_queries([3]))


# ---------------------------------------------------------------------------------------- the plugin
@pytest.fixture(scope="module")
def sent():
    return sentiment_task(max_new_tokens=10)


def _distinct_prompt_pairs(task, n: int, seed: int):
    """``n`` random pairs whose prompts differ (the mismatched rows are then a rotation by one pair)."""
    out, seen = [], set()
    for p in random_pairs(task, 4 * n, seed=seed, max_len=7):
        if tuple(p[0]) not in seen:
            seen.add(tuple(p[0]))
            out.append(p)
    assert len(out) >= n
    return out[:n]


def _seq_logprob(ctx, model, prompt, response) -> float:
    """log pi(response | prompt) of one unpadded sequence."""
    b = SequenceBatch.from_lists([prompt], [response], ctx.task.pad_id, None)
    with torch.no_grad():
        return ctx.logprobs(model, b)[0].sum().item()


def test_plugin_is_registered_and_declares_itself():
    spec = get_algorithm("kto")
    assert spec.cls is KTO and spec.config_class is KTOConfig
    assert KTO.data == "offline" and not KTO.uses_value_model and not KTO.beta_independent
    assert KTO.trl_peer is None or KTO.trl_peer in TRL_PEERS  # a named peer must be one the speed study can time
    target = KTO.convergence_target(KTOConfig())
    assert target.solve is None and target.name.startswith("none") and target.note


def test_plugin_at_init_is_the_closed_form_in_value_and_gradient(sent):
    """Policy == reference: z0 = 0 and the loss is (lambda_D + lambda_U) / 4; its gradient is that of
    sum_j [-lambda_D beta/4 log pi(y_w^j) + lambda_U beta/4 log pi(y_l^j)] / 2m; the reference is never run with
    gradients and gets none; cached and on-the-fly reference log-probs agree bitwise."""
    m, beta, wd, wu = 6, 0.4, 1.3, 1.0
    ctx = make_context(sent, tiny_lm(sent, seed=1), pairs=random_pairs(sent, 10, seed=2, max_len=7))
    ref_grad_modes = []  # whether gradients were on, at every forward of every module of the reference
    for module in ctx.ref_model.modules():
        module.register_forward_hook(lambda *a: ref_grad_modes.append(torch.is_grad_enabled()))
    algo = KTO(KTOConfig(beta=beta, desirable_weight=wd, undesirable_weight=wu), ctx)
    algo.setup()
    data = algo.prepare(preference_batch(ctx, [7, 1, 4, 0, 9, 3]))
    loss, metrics = algo.loss(data)
    assert torch.isfinite(loss) and loss.item() == pytest.approx((wd + wu) / 4, abs=1e-6)
    assert metrics["kto/z0"].item() == 0.0 and metrics["kto/kl_batch"].item() == pytest.approx(0.0, abs=1e-5)
    policy_params = list(ctx.policy.parameters())
    grads = torch.autograd.grad(loss, policy_params, allow_unused=True)
    logp = (ctx.logprobs(ctx.policy, algo.sequence_batch(data)) * data["response_mask"]).sum(1).view(m, 2)
    surrogate = (-wd * beta / 4 * logp[:, 0] + wu * beta / 4 * logp[:, 1]).sum() / (2 * m)
    expected = torch.autograd.grad(surrogate, policy_params, allow_unused=True)
    assert max(g.abs().max().item() for g in grads if g is not None) > 0
    for a, b in zip(grads, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
    assert ref_grad_modes and not any(ref_grad_modes)
    assert all(p.grad is None and not p.requires_grad for p in ctx.ref_model.parameters())
    on_the_fly = KTO(KTOConfig(precompute_ref_logprobs=False), ctx)
    on_the_fly.setup()
    assert torch.equal(on_the_fly.prepare(preference_batch(ctx, [7, 1, 4]))["ref_logprobs"], data["ref_logprobs"][:6])


@pytest.fixture(scope="module")
def perturbed(sent):
    """A policy away from its reference, minibatch pairs of distinct prompts, and the plugin's loss on them."""
    pairs = _distinct_prompt_pairs(sent, 5, seed=4)
    ctx = make_context(sent, tiny_lm(sent, seed=2), pairs=pairs)
    perturb_(ctx.policy, scale=0.1, seed=9)
    opt = torch.optim.Adam(ctx.policy.parameters(), lr=3e-3)  # the completions more likely under any prompt: z0 > 0
    for _ in range(3):
        batch = ctx.pair_batch(torch.arange(5))
        opt.zero_grad()
        (-(ctx.logprobs(ctx.policy, batch) * batch.response_mask).sum()).backward()
        opt.step()
    ctx.policy.zero_grad(set_to_none=True)
    algo = KTO(KTOConfig(beta=0.7, desirable_weight=1.2, undesirable_weight=0.9), ctx)
    algo.setup()
    data = algo.prepare(preference_batch(ctx, range(5)))
    return ctx, algo, data


def test_plugin_on_a_perturbed_policy_is_the_formula_on_single_sequences(perturbed):
    """Every log-prob from one unpadded sequence at a time: r of each chosen and rejected response, and the KL rows
    (prompt j with pair j-1's completions); the plugin's loss and z0 are the paper's loss on them."""
    ctx, algo, data = perturbed
    pairs = ctx.pairs

    def ratio(prompt, response):
        return _seq_logprob(ctx, ctx.policy, prompt, response) - _seq_logprob(ctx, ctx.ref_model, prompt, response)

    chosen = [ratio(p, c) for p, c, _ in pairs]
    rejected = [ratio(p, r) for p, _, r in pairs]
    kl = [ratio(pairs[j][0], pairs[j - 1][t]) for j in range(5) for t in (1, 2)]  # pairs[-1] for j = 0
    got_kl, same = algo.kl_logratios(data)
    assert got_kl.tolist() == pytest.approx(kl, abs=1e-4) and not same.any()
    loss, metrics = algo.loss(data)
    assert abs(sum(kl) / len(kl)) > 1e-2 and max(abs(x) for x in chosen) > 1e-1  # a non-trivial point
    assert metrics["kto/z0"].item() == pytest.approx(max(0.0, sum(kl) / len(kl)), abs=1e-4)
    assert loss.item() == pytest.approx(_kto_by_hand(chosen, rejected, kl, 0.7, 1.2, 0.9), abs=1e-5)
    assert metrics["kto/kl_same_prompt"].item() == 0.0


def test_plugin_sees_log_probs_only_through_r_and_z0_has_no_gradient(perturbed):
    """A constant added to the policy's and the reference's log-probs of one sequence (an example or a KL row)
    changes nothing; the gradient is the one of the loss with z0 frozen at the value the plugin reports."""
    ctx, algo, data = perturbed
    base_loss, base = algo.loss(data)
    shifts = torch.linspace(-2.0, 3.0, 10).unsqueeze(1)  # (2m, 1) one constant per row
    original = ctx.logprobs

    def shifted(model, batch):
        out = original(model, batch)
        delta = 0.5 * shifts if batch.response is data["response"] else shifts  # the KL rows get other ones
        return out + delta * batch.response_mask

    ctx.logprobs = shifted
    try:
        shifted_data = {**data, "ref_logprobs": data["ref_logprobs"] + 0.5 * shifts * data["response_mask"]}
        loss, metrics = algo.loss(shifted_data)
    finally:
        del ctx.logprobs
    assert loss.item() == pytest.approx(base_loss.item(), abs=1e-5)
    assert metrics["kto/z0"].item() == pytest.approx(base["kto/z0"].item(), abs=1e-5)

    params = [p for p in ctx.policy.parameters()]
    grads = torch.autograd.grad(base_loss, params, allow_unused=True)
    assert base["kto/z0"].item() > 0, "the check needs z0 above the clamp"
    logp = (ctx.logprobs(ctx.policy, algo.sequence_batch(data)) * data["response_mask"]).sum(1)
    r = (logp - (data["ref_logprobs"] * data["response_mask"]).sum(1)).view(-1, 2)
    frozen = kto_loss(r[:, 0], r[:, 1], base["kto/z0"].view(1), 0.7, 1.2, 0.9)[0]
    expected = torch.autograd.grad(frozen, params, allow_unused=True)
    scale = max(b.abs().max().item() for b in expected if b is not None)
    for a, b in zip(grads, expected):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_plugin_is_reproducible_under_the_harness_split(sent):
    """Two runs from the same seed through the harness's ``split_groups`` (global RNG disturbed in between): the
    same mismatched pairs, the same losses and metrics, bitwise."""
    pairs = random_pairs(sent, 12, seed=6, max_len=7)
    runs = []
    for disturb in (1, 2):
        ctx = make_context(sent, tiny_lm(sent, seed=3), pairs=pairs, seed=0)
        perturb_(ctx.policy, scale=0.2, seed=4)
        algo = KTO(KTOConfig(), ctx)
        algo.setup()
        torch.manual_seed(disturb)
        data = algo.prepare(preference_batch(ctx, range(12)))
        out = []
        for _ in range(2):
            for mb in split_groups(data, algo.group_size, 2, ctx.generator):
                loss, metrics = algo.loss(mb)
                out.append((loss.item(), {k: v.item() for k, v in metrics.items()}, mb["query"].tolist()))
        runs.append(out)
    assert runs[0] == runs[1]
    assert len({tuple(map(tuple, q)) for _, _, q in runs[0]}) > 1  # minibatches differ: the pairing follows them


# ------------------------------------------------------------------------------------------- config
def test_bad_weight_fails_in_one_line_naming_the_field(compose):
    with pytest.raises(ConfigError) as err:
        KTOConfig(undesirable_weight=0.0)
    assert str(err.value) == "undesirable_weight must be > 0, got 0.0"
    with pytest.raises(ConfigError) as err:
        validate(compose("algorithm=kto", "algorithm.desirable_weight=-1"))
    assert str(err.value) == "algorithm.desirable_weight must be > 0, got -1.0"
    assert compose("algorithm=kto").algorithm.name == "kto"
