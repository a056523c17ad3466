"""Exact limits of RLHF objectives on an enumerable bandit (the KL-regularised optimum
pi*_beta, Rafailov et al. 2023 eq. 4; PPO as Huang et al. 2024 run it; the REINFORCE family's objectives).

Each function returns, per prompt, the policy that an objective's EXPECTED update converges to,
from the tables ``ref_logp`` (P, N) = log pi_ref and ``rewards`` (P, N) over the N = A**L responses
of every prompt (response index ``n = sum_t a_t A**(L-1-t)``, tasks/bandit.py; the forced <eos>
has log-prob 0 and k3 = 0, so it changes nothing below).

The policy is TABULAR: one softmax over the A actions at every prefix state s (level t holds the
A**t prefixes of length t, state index = prefix index, child of (s, b) = s*A + b). pi_ref's
conditionals come from the sequence table by marginalising: viewing a (P, N) table as
(P, A**(t+1), A**(L-t-1)) groups responses by their prefix of length t+1.

Targets: :func:`reverse_kl_optimum` (pi*_beta), :func:`grpo_k3_target` (GRPO / Dr.GRPO with k3 in
the loss: NOT pi*_beta), :func:`ppo_k3_reward_limit` (None: ill-posed, see there); :func:`distances`
gives KL(pi || target). :func:`drift` is the exact expected update of each objective, used for the
residuals and by :func:`semi_gradient_flow`.

Notation: for a terminal function h (P, N) and optional per-token rewards c(s, b),
``Q(s, b) = c(s, b) + V(s b)``, ``V(s) = sum_b pi(b|s) Q(s, b)``, ``V(y) = h(y)``; P_pi(s) is the
probability of prefix s. The expected gradient of ``E_pi[sum_t c + h]`` (c, h not differentiated)
w.r.t. the logits z_s is ``P_pi(s) pi(b|s) (Q(s, b) - V(s))``. Stationarity never depends on the
factor P_pi(s) > 0, so :func:`drift` returns the update divided by it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import torch

from . import tilted

D = torch.float64


class Target(NamedTuple):
    logp: torch.Tensor  # (P, N) log-probabilities of the target policy over responses
    residual: float  # max |drift| (:func:`drift`, i.e. without the factor P_pi(s)) over prompts, states, actions
    iterations: int
    converged: bool


# ----------------------------------------------------------------------------- the response tree
def conditionals(logp: torch.Tensor, A: int, L: int) -> list[torch.Tensor]:
    """Per-level log pi(b|s) of a sequence table (P, N): ``[(P, A**t, A) for t < L]``."""
    P, out = logp.shape[0], []
    for t in range(L):
        child = torch.logsumexp(logp.reshape(P, A ** (t + 1), -1), -1).view(P, A**t, A)  # log P(s b)
        out.append(child - torch.logsumexp(child, -1, keepdim=True))
    return out


def sequences(conds: list[torch.Tensor]) -> torch.Tensor:
    """log pi(y) (P, N) from per-level log-conditionals (the inverse of :func:`conditionals`)."""
    lp = conds[0].new_zeros(conds[0].shape[0], 1)  # (P, 1): the empty prefix
    for c in conds:
        lp = (lp.unsqueeze(-1) + c).flatten(1)  # (P, A**(t+1))
    return lp


def _values(conds, h, ptok=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Backward pass: W(s, b) = V(s b) (P, A**t, A) and V(s) (P, A**t) per level, for terminal h (P, N)
    and per-token rewards given as ``ptok[t] = pi(b|s) c(s, b)`` (P, A**t, A) (None: none), so that
    ``pi (Q - V) = pi W + ptok - pi V`` stays finite where c does not (k3 as pi -> 0)."""
    L, P, A = len(conds), h.shape[0], conds[0].shape[-1]
    Ws, Vs, V = [None] * L, [None] * L, h
    for t in reversed(range(L)):
        W = V.reshape(P, A**t, A)  # (P, A**t, A)
        V = (conds[t].exp() * W + (0.0 if ptok is None else ptok[t])).sum(-1)  # (P, A**t)
        Ws[t], Vs[t] = W, V
    return Ws, Vs


def _pi_k3(logp, ref_logp):
    """pi * k3 = pi (pi_ref/pi - log(pi_ref/pi) - 1) = pi_ref - pi - pi log(pi_ref/pi), finite as pi -> 0."""
    return ref_logp.exp() - logp.exp() - logp.exp() * (ref_logp - logp)


def drift(conds, ref_conds, h, beta: float, kind: str) -> list[torch.Tensor]:
    """Expected update direction on the logits of every state, divided by P_pi(s): per level (P, A**t, A).

    - ``"k3_loss"`` (GRPO, beta*k3 in the loss; h = E[A_1 | y_1 = y]):
      ``pi (Q_h - V_h) - beta (pi - pi_ref)``;
    - ``"k1_reward"`` (PPO, per-token reward -beta (log pi - log pi_ref), stop-gradient; h = r):
      ``pi (Q - V)``;
    - ``"k3_reward"`` (PPO, per-token reward -beta k3, stop-gradient; h = r): ``pi (Q - V)``.
    """
    ptok = {
        "k3_loss": None,
        "k1_reward": [-beta * c.exp() * (c - rc) for c, rc in zip(conds, ref_conds)],
        "k3_reward": [-beta * _pi_k3(c, rc) for c, rc in zip(conds, ref_conds)],
    }[kind]
    Ws, Vs = _values(conds, h, ptok)
    out = [c.exp() * (W - V.unsqueeze(-1)) for c, W, V in zip(conds, Ws, Vs)]
    if ptok is not None:
        out = [d + pt for d, pt in zip(out, ptok)]
    if kind == "k3_loss":
        out = [d - beta * (c.exp() - rc.exp()) for d, c, rc in zip(out, conds, ref_conds)]
    return out


def max_residual(drifts: list[torch.Tensor]) -> float:
    return max(d.abs().max().item() for d in drifts)


def prefix_probs(conds) -> list[torch.Tensor]:
    """P_pi(s) per level: [(P, A**t)]."""
    out, p = [], conds[0].new_ones(conds[0].shape[0], 1)
    for c in conds:
        out.append(p)
        p = (p.unsqueeze(-1) * c.exp()).flatten(1)
    return out


# --------------------------------------------------------------------------- per-state solvers
def _tilt_solve(W, ref_c, beta):
    """k1 per-token reward: pi(Q - V) = 0 with Q_b = W_b - beta log(pi_b/ref_b) gives
    pi ∝ ref exp(W/beta) and V = beta logsumexp(log ref + W/beta). (P, S, A) -> ((P, S, A), (P, S))."""
    x = ref_c + W / beta
    return torch.log_softmax(x, -1), beta * torch.logsumexp(x, -1)


def _forward_kl_solve(W, ref_c, beta, iters: int = 200):
    """k3 in the loss: pi_b (W_b - V) = beta (pi_b - ref_b) on the simplex, i.e.
    argmax_pi sum_b pi_b W_b + beta sum_b ref_b log pi_b: ``pi_b = ref_b / (tau + d_b)``,
    ``d_b = (max W - W_b)/beta`` with tau the root of g(tau) = sum_b ref_b/(tau + d_b) - 1 (convex,
    decreasing). Newton from tau0 = max(ref_argmax, 1 - sum_b ref_b d_b) <= root (Jensen) rises
    monotonically to the root (about log2(1/tau0) + 5 steps). Returns (log pi (P, S, A), V (P, S))."""
    ref = ref_c.exp()
    d = (W.amax(-1, keepdim=True) - W) / beta  # (P, S, A) >= 0
    tau = torch.maximum(ref.gather(-1, W.argmax(-1, keepdim=True)), 1 - (ref * d).sum(-1, keepdim=True))
    for _ in range(iters):
        q = ref / (tau + d)
        step = (q.sum(-1, keepdim=True) - 1) / (q / (tau + d)).sum(-1, keepdim=True)
        tau = tau + step
        if (step / tau).abs().max() <= 1e-12:  # quadratic convergence: tau is now exact to rounding
            break
    logpi = torch.log_softmax(ref_c - torch.log(tau + d), -1)
    return logpi, (logpi.exp() * W).sum(-1)


def _sweep(ref_conds, h, beta, solve) -> list[torch.Tensor]:
    """Exact stationary policy for a FIXED terminal h: leaves first, each level solved against
    the values of the levels below it."""
    L, P, A = len(ref_conds), h.shape[0], ref_conds[0].shape[-1]
    conds, V = [None] * L, h
    for t in reversed(range(L)):
        conds[t], V = solve(V.reshape(P, A**t, A), ref_conds[t], beta)
    return conds


def _fixed_point(ref_conds, beta, adv, solve, kind, tol, damping, max_iter, logp0=None):
    """Damped fixed point on the terminal function: h <- h + damping (adv(pi(h)) - h), where pi(h)
    is the exact :func:`_sweep`, from h = adv(logp0 or pi_ref); stops when the max |drift| at pi(h)
    with h = adv(pi(h)) is below tol."""
    h = adv(sequences(ref_conds) if logp0 is None else logp0)
    for it in range(1, max_iter + 1):
        conds = _sweep(ref_conds, h, beta, solve)
        h_new = adv(sequences(conds))
        res = max_residual(drift(conds, ref_conds, h_new, beta, kind))
        if res < tol:
            break
        h = h + damping * (h_new - h)
    return Target(sequences(conds), res, it, res < tol)


# ------------------------------------------------------------------------- group advantages
def pair_advantage(d: torch.Tensor, eps: float) -> torch.Tensor:
    """GRPO advantage of member 1 of a group of 2 with d = r_1 - r_2: mean (r_1 + r_2)/2, unbiased
    std |d|/sqrt(2), so A_1 = (d/2) / (|d|/sqrt(2) + eps)."""
    return 0.5 * d / (d.abs() / math.sqrt(2) + eps)


class GroupAdvantage:
    """h(y) = E[A_1 | y_1 = y], the other G-1 members drawn i.i.d. from pi: callable logp (P, N) -> (P, N).

    - ``scale="none"`` (Dr.GRPO, A_i = r_i - mean): exactly h = (G-1)/G (r - E_pi r), any G;
    - ``scale="group"``, G = 2: exactly ``h(y) = sum_y' pi(y') pair_advantage(r(y) - r(y'))``;
    - ``scale="group"``, G > 2: ``h(y) = sum_k w_k A_1(r(y), r(o_k))`` over tuples o_k of the G-1
      others: every tuple when N**(G-1) <= ``exact_max`` (w_k = prod pi), otherwise ``mc_draws``
      tuples drawn (fixed seed) from a proposal q with self-normalised weights prod pi/q.
      :meth:`refresh` (required before the first call) sets q to the current pi; the solver does
      so ``mc_stages`` times. Near q = pi the error of h is about std(A_1)/sqrt(mc_draws) <=
      1.2/sqrt(mc_draws) per response (0.04 at 1024). Measured on the target: bandit-size tables
      (N = 256, G = 3, beta = 0.6, 1024 draws) give KL 4e-4 between two seeds' targets (the G = 2
      and G = 3 targets differ by 0.13); A = L = 2, G = 3, 4096 draws: KL 1e-5 to the exact target.
    """

    def __init__(self, rewards, group_size=2, scale="group", eps=1e-4, exact_max=4096, mc_draws=1024, seed=0):
        if scale not in ("group", "none") or group_size < 2:
            raise ValueError(f"scale must be 'group' or 'none' and group_size >= 2, got {scale!r}, {group_size}")
        self.r, self.G, self.scale, self.eps = rewards.to(D), group_size, scale, eps
        P, N = rewards.shape
        self.mc = scale == "group" and group_size > 2 and N ** (group_size - 1) > exact_max
        self.mc_draws, self.seed, self.stage, self.idx = mc_draws, seed, 0, None
        if scale == "group" and group_size == 2:
            self.M = pair_advantage(self.r.unsqueeze(2) - self.r.unsqueeze(1), eps)  # (P, N, N)
        elif scale == "group" and not self.mc:
            grids = torch.meshgrid(*[torch.arange(N)] * (group_size - 1), indexing="ij")
            self._tuples(torch.stack([g.flatten() for g in grids], -1).expand(P, -1, -1), None)

    def _tuples(self, idx, logq):
        """Fix the tuples idx (P, K, G-1) of other members and precompute Psi (P, N, K) = A_1 of a
        group (r(y), others): with o, ss the others' mean and sum of squared deviations, adding r
        gives mean shift r - mean = (G-1)/G (r - o) and sum of squares ss + (G-1)/G (r - o)**2."""
        P, K, _ = idx.shape
        self.idx, self.logq, G = idx, logq, self.G
        others = torch.gather(self.r.unsqueeze(1).expand(P, K, -1), 2, idx)  # (P, K, G-1)
        o = others.mean(-1).unsqueeze(1)  # (P, 1, K)
        ss = ((others - others.mean(-1, keepdim=True)) ** 2).sum(-1).unsqueeze(1)  # (P, 1, K)
        dev = (self.r.unsqueeze(-1) - o).mul_((G - 1) / G)  # (P, N, K): r(y) - group mean
        std = dev.square().mul_(G / (G - 1)).add_(ss).div_(G - 1).sqrt_().add_(self.eps)  # (P, N, K)
        self.Psi = dev.div_(std)  # (P, N, K)

    def refresh(self, logp):
        """Monte Carlo only: draw the tuples afresh from q = exp(logp) (P, N); call before first use."""
        if self.mc:
            gen = torch.Generator().manual_seed(self.seed + self.stage)
            P, K, G1 = logp.shape[0], self.mc_draws, self.G - 1
            idx = torch.multinomial(logp.exp(), K * G1, replacement=True, generator=gen).view(P, K, G1)
            self._tuples(idx, logp.clone())
            self.stage += 1

    def __call__(self, logp):
        p = logp.exp()  # (P, N)
        if self.scale == "none":
            return (self.G - 1) / self.G * (self.r - (p * self.r).sum(-1, keepdim=True))
        if self.G == 2:
            return torch.einsum("pnm,pm->pn", self.M, p)
        P, K, G1 = self.idx.shape
        lw = torch.gather(logp.unsqueeze(1).expand(P, K, -1), 2, self.idx).sum(-1)  # (P, K)
        if self.logq is not None:
            lw = lw - torch.gather(self.logq.unsqueeze(1).expand(P, K, -1), 2, self.idx).sum(-1)
        return torch.bmm(self.Psi, torch.softmax(lw, -1).unsqueeze(-1)).squeeze(-1)  # (P, N)


# ------------------------------------------------------------------------------------ targets
def reverse_kl_optimum(ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """pi*_beta ∝ pi_ref exp(r/beta) (Rafailov et al. 2023, eq. 4): (P, N) log-probs. The limit of PPO with
    k1 in the reward, RLOO, REINFORCE++, P3O and online DPO with soft Bradley-Terry labels."""
    return tilted(ref_logp.to(D), rewards.to(D), beta)


def k1_reward_target(ref_logp, rewards, beta, *, A, L, tol=1e-12, max_iter=10) -> Target:
    """The generic solver on PPO with k1 per-token rewards (stop-gradient): stationary where
    pi(Q - V) = 0 at every state. Must equal :func:`reverse_kl_optimum` (a check of the solver)."""
    ref_c = conditionals(ref_logp.to(D), A, L)
    r = rewards.to(D)
    return _fixed_point(ref_c, beta, lambda logp: r, _tilt_solve, "k1_reward", tol, 1.0, max_iter)


def grpo_k3_target(
    ref_logp,
    rewards,
    beta,
    *,
    A,
    L,
    group_size=2,
    scale="group",
    eps=1e-4,
    tol=1e-10,
    damping=0.5,
    max_iter=2000,
    exact_max=4096,
    mc_draws=1024,
    mc_stages=3,
    seed=0,
) -> Target:
    """Limit of GRPO with beta*k3 IN THE LOSS, token-level surrogate at rho = 1, advantages
    (r_i - mean_G)/(std_G + eps) (torch's unbiased std; ``scale="none"``: r_i - mean_G, Dr.GRPO).

    Derivation. Per group of G responses drawn from pi_old = pi the loss is
    ``1/G sum_i 1/|o_i| sum_t [-rho_t A_i + beta k3_t]``. Its gradient in rho is
    ``-A_i grad log pi(y_t|s_t)``; that of k3_t = pi_ref/pi - log(pi_ref/pi) - 1 is
    ``(1 - pi_ref/pi) grad log pi``, whose expectation over y_t ~ pi(.|s) is, in the logits z_s,
    ``sum_b (pi_b - ref_b)(e_b - pi) = pi(.|s) - pi_ref(.|s)``. The members are exchangeable, so
    the surrogate's expectation is that of ``h(y_1) sum_t log pi(y_t|s_t)`` with
    ``h(y) = E[A_1 | y_1 = y]`` (:class:`GroupAdvantage`), and the expected ascent direction on z_s is
    ``P_pi(s) [pi(b|s) (Q_h(s,b) - V_h(s)) - beta (pi(b|s) - pi_ref(b|s))] / |o|``: every response has
    the same length on the bandit, so 1/|o| (of both terms) is a constant factor. The k3 term
    pulls toward pi_ref in FORWARD KL, sum_s P_pi(s) KL(pi_ref(.|s) || pi(.|s)) with P_pi(s) held fixed.

    Solver. For a fixed h the stationary condition is, at each state, the argmax of
    ``sum_b pi_b Q_h(s,b) + beta sum_b pi_ref_b log pi_b``; solving the leaves first gives the exact
    policy pi(h) (:func:`_sweep`). h depends on pi, so h is iterated to the fixed point
    h = h(pi(h)) with damping. Returns :class:`Target` (logp (P, N), the max |drift| at it, the
    iterations, whether max |drift| < tol). With ``scale="none"``, h = (G-1)/G (r - E_pi r) and the
    target is this per-state forward-KL optimum for r at beta G/(G-1), reached in one sweep.
    For G > 2 with N**(G-1) > exact_max, h is a Monte Carlo estimate (see :class:`GroupAdvantage`), its
    proposal refreshed to the solution ``mc_stages`` times; the residual is that of the estimate.

    Checks (tests/evaluation/test_targets.py): the plain gradient flow of the same drift from pi_ref converges
    to this point (it is the attractor, not just a stationary point), and the autograd gradient of
    a direct transcription of the GRPO loss, expected over every group, vanishes here (< 1e-10)
    and not at pi*_beta (~0.08). On bandit-size tables (P = 200, N = 256, G = 2) the damping 0.5
    iteration reached tol 1e-10 in 27-55 iterations for beta in [0.02, 10], ~3 s on one core;
    G = 3 (Monte Carlo) ~20 s.
    """
    ref_c = conditionals(ref_logp.to(D), A, L)
    adv = GroupAdvantage(rewards, group_size, scale, eps, exact_max, mc_draws, seed)
    logp, out, stages = sequences(ref_c), None, mc_stages if adv.mc else 1
    for stage in range(stages):  # Monte Carlo: early stages to 1e-6, each warm-started
        adv.refresh(logp)
        stage_tol = tol if stage == stages - 1 else max(tol, 1e-6)
        out = _fixed_point(ref_c, beta, adv, _forward_kl_solve, "k3_loss", stage_tol, damping, max_iter, logp)
        logp = out.logp
    return out


# --------------------------------------------------------------------------- gradient flows
def semi_gradient_flow(ref_logp, rewards, beta, *, A, L, kind, steps, lr, adv=None, weighted=True, natural=False):
    """Euler steps ``z_s += lr * drift_s * [P_pi(s)] / [pi(.|s)]`` of the expected update on the tabular
    logits from pi_ref: ``weighted`` keeps the factor P_pi(s) (the plain expected gradient);
    ``natural`` divides by pi(b|s) (per-state natural gradient: with k1 rewards every direction
    then relaxes at rate beta). Neither changes the stationary points. ``adv`` maps logp (P, N) ->
    h (P, N) (default: the rewards). Returns (per-level log-conditionals, max |drift| at the end)."""
    ref_c = conditionals(ref_logp.to(D), A, L)
    z, r = [c.clone() for c in ref_c], rewards.to(D)
    for _ in range(steps):
        conds = [torch.log_softmax(zi, -1) for zi in z]
        d = drift(conds, ref_c, r if adv is None else adv(sequences(conds)), beta, kind)
        if natural:
            d = [di / c.exp() for di, c in zip(d, conds)]
        if weighted:
            d = [di * w.unsqueeze(-1) for di, w in zip(d, prefix_probs(conds))]
        z = [zi + lr * di for zi, di in zip(z, d)]
    conds = [torch.log_softmax(zi, -1) for zi in z]
    return conds, max_residual(drift(conds, ref_c, r if adv is None else adv(sequences(conds)), beta, kind))


PPO_K3_REWARD_ILL_POSED = (
    "PPO with k3 as a stop-gradient per-token reward has no interior stable stationary point: "
    "its expected flow drives low-value actions to probability 0 (logits -> -inf at rate "
    "beta pi_ref(b|s) P(s)) and collapses to a near-deterministic, path-dependent policy"
)


def ppo_k3_reward_limit(ref_logp, rewards, beta, *, A, L, horizon: Optional[float] = None, lr: float = 1.0):
    """PPO/REINFORCE with k3 as a per-token REWARD (stop-gradient), exact advantages: the expected
    semi-gradient on z_s is ``P_pi(s) pi(b|s) (Q(s,b) - V(s))`` with per-token rewards -beta k3.

    Finding: ILL-POSED as a target; returns None (reason: :data:`PPO_K3_REWARD_ILL_POSED`).
    - At one state (values W_b) the semi-gradient is ``pi_b (W_b - V) - beta grad_b KL(pi||pi_ref)
      + beta (pi_b - pi_ref_b)``: the reverse-KL pull plus a forward-KL PUSH (the exact opposite of
      GRPO's k3-in-loss term), i.e. gradient ascent on ``E_pi W - beta KL(pi||pi_ref) + beta
      KL(pi_ref||pi)``, which is unbounded above (+inf wherever some pi_b -> 0).
    - Fixed points ``W_b - beta f(x_b) = const``, f(x) = 1/x + log x - 1, x_b = pi_b/pi_ref_b: on the
      branch x_b < 1, f' < 0, so raising pi_b raises its Q (unstable); a stable point needs x_b > 1 on
      its whole support, impossible with full support (sum_b pi_ref_b x_b = 1) unless W is constant.
      As pi_b -> 0 the drift on z_b tends to -beta pi_ref(b|s) (< 0): low-value actions are driven
      to probability 0 and their logits diverge linearly; the residual never vanishes.
    - Measured (expected flow from pi_ref, Euler lr = 1, horizon 2000, P = 200, A = L = 4):
      random tables, beta = 0.2, 2, 10: 1.0-1.3 responses of probability > 1e-6 per prompt (pi*_beta
      is spread at beta = 2, 10), max |drift| 1.2-9.4, not -> 0; the surviving response changes with
      the step size (lr 0.1 vs 1: 1-23 of 200 prompts) and without the P(s) factor (115-149).
      Bandit gold reward with the demonstrations' behaviour policy as pi_ref, beta = 0.6: max
      probability 0.98 on average, KL(pi || pi_ref) 4.07 against 0.80 for pi*_beta, the mode is the
      best response on 28% of prompts, and dropping P(s) changes the end point on 102 of 200.
      So no policy is "the" limit, and KL(pi || limit) is infinite or set by the horizon.

    ``horizon`` (flow time = steps * lr) returns instead the fixed-horizon flow from pi_ref as a
    :class:`Target` (converged=False) for diagnostics.
    """
    if horizon is None:
        return None
    steps = int(round(horizon / lr))
    conds, res = semi_gradient_flow(ref_logp, rewards, beta, A=A, L=L, kind="k3_reward", steps=steps, lr=lr)
    return Target(sequences(conds), res, steps, False)


# -------------------------------------------------------------------------------- distances
def distances(logp: torch.Tensor, targets: dict) -> dict:
    """Exact KL(pi || target), mean over prompts, of a policy table logp (P, N) against each target
    (a (P, N) log-prob table or a :class:`Target`; None -> None)."""
    out, lp = {}, logp.to(D)
    for name, t in targets.items():
        if t is None:
            out[name] = None
            continue
        q = (t.logp if isinstance(t, Target) else t).to(D)  # (P, N)
        terms = torch.where(lp > -math.inf, lp.exp() * (lp - q), torch.zeros_like(lp))  # 0 log 0 = 0
        out[name] = max(terms.sum(-1).mean().item(), 0.0)
    return out


# ------------------------------------------------------------------- what a plugin converges to
class Objective(NamedTuple):
    """What an algorithm's objective converges to on an enumerable task (exact expectations, a
    tabular policy), declared by the plugin (``Algorithm.convergence_target``) so that the harness
    keeps no list of names. ``solve(ref_logp, rewards, beta, A=, L=)`` returns the target's
    log-probabilities (P, N) or a :class:`Target`; ``None`` when no target is derived, with ``note``
    saying why."""

    name: str
    solve: Optional[Callable[..., Any]] = None
    note: str = ""


PI_STAR = Objective(
    "pi*_beta",
    lambda ref_logp, rewards, beta, **_: reverse_kl_optimum(ref_logp, rewards, beta),
    "the reverse-KL-regularised optimum pi_ref exp(r/beta) / Z (Rafailov et al. 2023, eq. 4)",
)


def grpo_objective(group_size: int, scale: str) -> Objective:
    """GRPO / Dr.GRPO with beta k3 in the loss: :func:`grpo_k3_target`."""
    name = "GRPO k3-in-loss fixed point" + (" (Dr.GRPO advantages)" if scale == "none" else "")
    return Objective(
        name,
        lambda ref_logp, rewards, beta, *, A, L: grpo_k3_target(
            ref_logp, rewards, beta, A=A, L=L, group_size=group_size, scale=scale
        ),
        f"stationary point of the expected GRPO update, G = {group_size}, scale_rewards = {scale}",
    )


def target_table(
    objective: Objective, ref_logp: torch.Tensor, rewards: torch.Tensor, beta: float, *, A: int, L: int
) -> Optional[Target]:
    """Solve ``objective`` on (P, N) tables; None when it has no derived target."""
    if objective.solve is None:
        return None
    out = objective.solve(ref_logp.to(D), rewards.to(D), beta, A=A, L=L)
    return out if isinstance(out, Target) else Target(out, 0.0, 0, True)
