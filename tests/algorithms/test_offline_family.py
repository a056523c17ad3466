"""The offline losses of issue 24: DPO's flip-robust loss types (conservative DPO, robust DPO, hinge), SimPO and
ORPO. For each: float64 gradcheck, closed forms written from the papers' equations in the test, equality with
trl's code on the same tensors (trl 1.16: DPOTrainer's loss, CPOTrainer.cpo_loss, ORPOTrainer.odds_ratio_loss),
the invariances that hold, and the plugins end to end on a tiny model (SimPO and ORPO run no reference)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers.algo import make_context, preference_batch, random_pairs, sentiment_task, tiny_lm

from rlhf_bench.algorithms.dpo import DPOConfig
from rlhf_bench.algorithms.losses import dpo_loss
from rlhf_bench.algorithms.orpo import ORPO, ORPOConfig, log_odds, orpo_loss
from rlhf_bench.algorithms.simpo import SimPO, SimPOConfig, simpo_loss
from rlhf_bench.benchmarks.config import ConfigError

D = torch.float64
torch.set_num_threads(1)


def _logratios(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dtype=D, generator=g), torch.randn(n, dtype=D, generator=g)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------------- DPO loss types
@pytest.mark.parametrize("loss_type,eps", [("cdpo", 0.2), ("robust", 0.2), ("hinge", 0.0)])
def test_gradcheck_flip_robust_dpo_losses(loss_type, eps):
    c, r = (x.clone().requires_grad_() for x in _logratios())
    c.data[0] += 5.0  # one pair past the hinge (beta * Delta > 1): the flat side of max(0, .) is checked too
    assert torch.autograd.gradcheck(lambda a, b: dpo_loss(a, b, 0.7, loss_type, label_smoothing=eps)[0], (c, r))


def test_flip_robust_losses_closed_forms_by_hand():
    """One pair with Delta = 0.9, beta = 0.5, eps = 0.2, from the papers' equations."""
    beta, eps, delta = 0.5, 0.2, 0.9
    c, r = torch.tensor([1.2], dtype=D), torch.tensor([0.3], dtype=D)
    x = beta * delta
    expected = {
        "cdpo": -(1 - eps) * _log_sigmoid(x) - eps * _log_sigmoid(-x),
        "robust": (-(1 - eps) * _log_sigmoid(x) + eps * _log_sigmoid(-x)) / (1 - 2 * eps),
        "hinge": max(0.0, 1 - x),
    }
    for loss_type, value in expected.items():
        got = dpo_loss(c, r, beta, loss_type, label_smoothing=eps if loss_type != "hinge" else 0.0)[0].item()
        assert got == pytest.approx(value, abs=1e-12), loss_type


def test_robust_dpo_is_unbiased_under_flips_and_cdpo_is_the_smoothed_target():
    """Chowdhury et al.'s defining property: averaged over a flip at rate eps (the pair read the other way round
    with probability eps), the robust loss is the clean DPO loss; cDPO is DPO against the soft label 1 - eps; with
    eps = 0 both are DPO."""
    c, r = _logratios(8, seed=3)
    beta, eps = 0.8, 0.15
    clean = -F.logsigmoid(beta * (c - r))  # per pair
    per_pair = lambda a, b, t, e: dpo_loss(a[None], b[None], beta, t, label_smoothing=e)[0]  # noqa: E731
    for i in range(len(c)):
        flipped = (1 - eps) * per_pair(c[i], r[i], "robust", eps) + eps * per_pair(r[i], c[i], "robust", eps)
        assert flipped.item() == pytest.approx(clean[i].item(), abs=1e-12)
    soft = dpo_loss(c, r, beta, "sigmoid", labels=torch.full_like(c, 1 - eps))[0]
    assert dpo_loss(c, r, beta, "cdpo", label_smoothing=eps)[0].item() == pytest.approx(soft.item(), abs=1e-12)
    for loss_type in ("cdpo", "robust"):
        assert dpo_loss(c, r, beta, loss_type)[0].item() == pytest.approx(clean.mean().item(), abs=1e-12)


def test_hard_labels_orient_the_flip_robust_losses():
    """Label 0 (the second response won) is the same loss as the pair written winner first."""
    c, r = _logratios(5, seed=4)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=D)
    win_c, win_r = torch.where(labels > 0, c, r), torch.where(labels > 0, r, c)
    for loss_type, eps in (("cdpo", 0.1), ("robust", 0.1), ("hinge", 0.0)):
        a = dpo_loss(c, r, 0.6, loss_type, labels=labels, label_smoothing=eps)[0]
        b = dpo_loss(win_c, win_r, 0.6, loss_type, label_smoothing=eps)[0]
        assert a.item() == pytest.approx(b.item(), abs=1e-12), loss_type


def _trl_dpo_loss(per_token: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, loss_type, beta, eps) -> torch.Tensor:
    """trl 1.16's ``DPOTrainer._compute_loss`` on given tensors: its model's per-token log-probs (chosen rows first,
    then rejected, zero on padding) and the reference's sequence log-probs, through a stand-in model and trainer
    that hold only what the method reads."""
    from trl import DPOTrainer

    n, T = per_token.shape
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros(n, T, dtype=per_token.dtype),
        mean_logits=torch.zeros(n, T, dtype=per_token.dtype),
        is_top1=torch.zeros(n, T, dtype=torch.bool),
    )
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=eps,
        use_weighting=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    completion = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask.long()], 1)  # trl shifts by one
    inputs = {
        "input_ids": torch.zeros(n, T + 1, dtype=torch.long),
        "attention_mask": torch.ones(n, T + 1, dtype=torch.long),
        "completion_mask": completion,
        "ref_chosen_logps": ref[: n // 2],
        "ref_rejected_logps": ref[n // 2 :],
    }
    return trainer._compute_loss(lambda **kw: outputs, inputs, return_outputs=False)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("robust", 0.2), ("hinge", 0.0)])
def test_dpo_losses_equal_trls_on_the_same_tensors(loss_type, eps):
    g = torch.Generator().manual_seed(7)
    P, T, beta = 5, 6, 0.4
    mask = (torch.rand(2 * P, T, generator=g) < 0.8).to(D)
    per_token = -torch.rand(2 * P, T, generator=g, dtype=D) * 3 * mask  # (2P, T): chosen rows, then rejected
    ref = -torch.rand(2 * P, generator=g, dtype=D) * 8  # (2P,) sequence log-probs under pi_ref
    trl = _trl_dpo_loss(per_token, mask, ref, loss_type, beta, eps)
    logratio = per_token.sum(1) - ref  # (2P,)
    ours, _ = dpo_loss(logratio[:P], logratio[P:], beta, loss_type, label_smoothing=eps)
    assert ours.item() == pytest.approx(trl.item(), abs=1e-12)
    assert abs(trl.item() - (math.log(2) if loss_type != "hinge" else 1.0)) > 1e-2  # away from the trivial point


def test_label_smoothing_is_checked():
    with pytest.raises(ConfigError, match=r"label_smoothing must be in \[0, 0.5\), got 0.5"):
        DPOConfig(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="label_smoothing must be 0 with loss_type sigmoid"):
        DPOConfig(loss_type="sigmoid", label_smoothing=0.1)


# ------------------------------------------------------------------------------------------- SimPO
def test_simpo_gradcheck_and_closed_form():
    c, r = (x.clone().requires_grad_() for x in _logratios(4, seed=5))
    assert torch.autograd.gradcheck(lambda a, b: simpo_loss(a, b, 2.0, 1.0)[0], (c, r))
    # one pair by hand (Meng et al. 2024, eq. 6): averaged log-probs -0.7 and -1.3, beta 2, gamma 1
    got = simpo_loss(torch.tensor([-0.7], dtype=D), torch.tensor([-1.3], dtype=D), 2.0, 1.0)[0].item()
    assert got == pytest.approx(-_log_sigmoid(2.0 * (-0.7 + 1.3) - 1.0), abs=1e-12)


def test_simpo_equals_trls_cpo_simpo_loss_on_the_same_tensors():
    from trl.experimental.cpo import CPOTrainer

    c, r = _logratios(6, seed=6)
    beta, gamma = 2.5, 1.25
    stand_in = SimpleNamespace(
        alpha=0.0, accelerator=SimpleNamespace(device="cpu"), loss_type="simpo", simpo_gamma=gamma, beta=beta
    )
    stand_in.label_smoothing = 0.0
    losses, _, _ = CPOTrainer.cpo_loss(stand_in, c, r)
    assert simpo_loss(c, r, beta, gamma)[0].item() == pytest.approx(losses.mean().item(), abs=1e-12)


def test_simpo_normalises_length_and_needs_no_reference():
    """A response and the same response's tokens repeated have the same per-token average: the same loss (the
    length normalisation SimPO is built on); a shift of every token log-prob of both responses changes nothing."""
    from rlhf_bench.algorithms.simpo import average_pair_logprobs

    lp = torch.tensor([[-0.5, -1.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=D)
    longer = torch.tensor([[-0.5, -1.0, -0.5, -1.0], [-2.0, -2.0, 0.0, 0.0]], dtype=D)
    mask_long = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=D)
    a = simpo_loss(*average_pair_logprobs(lp.view(2, 4), mask), 1.5, 0.75)[0]
    b = simpo_loss(*average_pair_logprobs(longer, mask_long), 1.5, 0.75)[0]
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    c = simpo_loss(*average_pair_logprobs((lp - 0.3) * mask, mask), 1.5, 0.75)[0]
    assert a.item() == pytest.approx(c.item(), abs=1e-12)


# -------------------------------------------------------------------------------------------- ORPO
def test_orpo_gradcheck_closed_form_and_stable_odds():
    c, r = (-(x.abs() + 0.1).requires_grad_() for x in _logratios(4, seed=8))  # average log-probs < 0
    nll = torch.tensor(0.8, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, n: orpo_loss(a, b, n, 0.3)[0], (c, r, nll))
    # one pair by hand (Hong et al. 2024, eq. 6-7): average likelihoods P_w = 0.5, P_l = 0.2, lambda 0.1, NLL 1.0
    pw, pl = 0.5, 0.2
    ratio = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
    one = torch.tensor(1.0, dtype=D)
    got = orpo_loss(torch.tensor([math.log(pw)], dtype=D), torch.tensor([math.log(pl)], dtype=D), one, 0.1)
    assert got[0].item() == pytest.approx(1.0 - 0.1 * _log_sigmoid(ratio), abs=1e-12)
    # log(P / (1 - P)) stays finite and exact as P -> 1 (the average log-prob -> 0-)
    tiny = torch.tensor([-1e-12], dtype=D)
    assert log_odds(tiny).item() == pytest.approx(math.log((1 - 1e-12) / 1e-12), rel=1e-9)


def test_orpo_odds_ratio_term_equals_trls_on_the_same_tensors():
    from trl.experimental.orpo import ORPOTrainer

    c, r = (-(x.abs() + 0.05) for x in _logratios(6, seed=9))
    lam = 0.25
    stand_in = SimpleNamespace(beta=lam, accelerator=SimpleNamespace(device="cpu"))
    losses = ORPOTrainer.odds_ratio_loss(stand_in, c, r)[0]  # lambda * log sigmoid(log odds ratio), in float32
    nll = torch.tensor(0.9, dtype=D)
    assert orpo_loss(c, r, nll, lam)[0].item() == pytest.approx(nll.item() - losses.mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------------- the plugins
@pytest.fixture
def sent():
    return sentiment_task()


@pytest.mark.parametrize("cls,cfg", [(SimPO, SimPOConfig(beta=1.0)), (ORPO, ORPOConfig(lam=0.2))])
def test_reference_free_plugins_run_no_reference(sent, cls, cfg):
    """setup, prepare and loss never run the reference model (a forward hook counts its calls), the loss is
    finite and its gradient reaches the policy; ORPO's value at init is its closed form on the same log-probs."""
    pairs = random_pairs(sent, 8, seed=2)
    ctx = make_context(sent, tiny_lm(sent, seed=1), pairs=pairs)
    calls = []
    ctx.ref_model.register_forward_hook(lambda *a: calls.append(1))
    algo = cls(cfg, ctx)
    algo.setup()
    data = algo.prepare(preference_batch(ctx, range(8)))
    loss, metrics = algo.loss(data)
    loss.backward()
    assert calls == [] and torch.isfinite(loss)
    grads = [p.grad for p in ctx.policy.parameters() if p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) > 0
    assert all(p.grad is None for p in ctx.ref_model.parameters())
    with torch.no_grad():
        lp = ctx.logprobs(ctx.policy, algo.sequence_batch(data))
        m = data["response_mask"]
        avg = ((lp * m).sum(1) / m.sum(1)).view(-1, 2)
        if cls is ORPO:
            nll = -(lp[0::2] * m[0::2]).sum() / m[0::2].sum()
            odds = [a - math.log(1 - math.exp(a)) for a in avg.flatten().tolist()]
            term = sum(-_log_sigmoid(odds[2 * i] - odds[2 * i + 1]) for i in range(8)) / 8
            assert loss.item() == pytest.approx(nll.item() + 0.2 * term, rel=1e-5)
        else:
            margins = (1.0 * (avg[:, 0] - avg[:, 1]) - 0.5).tolist()
            assert loss.item() == pytest.approx(sum(-_log_sigmoid(x) for x in margins) / 8, rel=1e-5)


def test_reference_free_configs_are_checked():
    with pytest.raises(ConfigError, match="lam must be > 0"):
        ORPOConfig(lam=0.0)
    with pytest.raises(ConfigError, match="gamma_beta_ratio must be >= 0"):
        SimPOConfig(gamma_beta_ratio=-1.0)
    assert ORPO.beta_independent and not SimPO.beta_independent


def test_online_dpo_takes_the_flip_robust_losses_with_zero_one_labels_only():
    from rlhf_bench.algorithms.online_dpo import OnlineDPOConfig

    OnlineDPOConfig(pair_labels="hard", loss_type="robust", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="pair_labels must be hard or sampled with loss_type cdpo"):
        OnlineDPOConfig(pair_labels="soft", loss_type="cdpo", label_smoothing=0.1)


@pytest.mark.parametrize("algorithm", ["simpo", "orpo"])
def test_the_budget_of_a_reference_free_run_holds_no_reference_tokens(bandit, cache_dir, tmp_path, algorithm):
    """Through the CLI: every token a SimPO or ORPO run puts through a model in training is a policy token with
    gradients (forward = backward); offline DPO's budget also holds the reference's forward over every pair."""
    from conftest import BANDIT_OVERRIDES
    from helpers.cli import rlhf_bench

    budgets = {}
    for name in (algorithm, "dpo"):
        run_dir = tmp_path / name
        args = [*BANDIT_OVERRIDES, f"algorithm={name}", "progress=false", f"cache_dir={cache_dir}"]
        r = rlhf_bench(*args, f"hydra.run.dir={run_dir}")
        assert r.returncode == 0, r.stderr[-3000:]
        budgets[name] = json.loads((run_dir / "summary.json").read_text())["budget"]
    ours, dpo = budgets[algorithm], budgets["dpo"]
    assert ours["forward_tokens"] == ours["backward_tokens"] == dpo["backward_tokens"] > 0
    assert dpo["forward_tokens"] > dpo["backward_tokens"]
