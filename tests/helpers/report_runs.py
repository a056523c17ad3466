"""Synthetic run directories for the report's tests: runs whose gold and proxy rewards follow a known
curve, written as the trainer writes them (no model is trained).

- :func:`make_run`, :func:`make_sweep`: one world, a few algorithms that reach known shares of the optimal
  gain; :func:`read_csv`.
- :func:`make_world_sweep`: several worlds (``task.seed``), each with its own reward scale and SFT reward.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from rlhf_bench.benchmarks.report.loading import load_runs

TRAINED = {"ppo": 0.75, "dpo": 0.6, "p3o_v2": 0.9}  # share of the optimal gain each reaches
N_PROMPTS = 12
STEPS = 100
EVAL_EVERY = 25


def prompt_of(i: int, task: str = "bandit") -> str:
    return f"<bos> c{i % 4} n{i % 7} n{(3 * i) % 11}" if task == "bandit" else f"<bos> w{i} w{i + 1}"


def sft_reward_of(i: int) -> float:  # SFT reward of prompt i
    return round(math.sin(1.7 * i), 6)


def optimal_kl(beta: float) -> float:
    return 0.6 / beta


def optimal_gold(kl: float) -> float:
    return 1.3 * math.sqrt(kl)


def optimal_proxy(kl: float) -> float:
    return 1.6 * math.sqrt(kl)


def make_run(
    sweep: Path,
    name: str,
    algorithm: str,
    beta: float,
    seed: int,
    task: str = "bandit",
    reward_model: str = "learned",
    prompts=None,
    noise: float = 0.0,
    summary: bool = True,
) -> Path:
    """One fake run directory with summary.json, eval.jsonl, samples.jsonl and optimal_frontier.csv."""
    d = sweep / name
    d.mkdir(parents=True)
    trained = algorithm in TRAINED
    steps = STEPS if trained else 0
    q = TRAINED.get(algorithm, 0.0)
    jitter = 1.0 + 0.06 * ((seed * 7919 + int(beta * 1000)) % 5 - 2)
    rows = []
    for step in range(0, steps + 1, EVAL_EVERY):
        if trained:
            kl = optimal_kl(beta) * (0.9 + 0.1 * q) * jitter * (step / steps) ** 0.7
            gold = q * optimal_gold(kl) - 0.06 * kl
            proxy = q * optimal_proxy(kl)
        elif algorithm == "best_of_n":
            kl, gold, proxy = 0.64, 0.7 * optimal_gold(0.64), 0.85 * optimal_proxy(0.64)
        else:
            kl, gold, proxy = 0.0, 0.0, 0.0
        row = {
            "step": step,
            "kl": kl + 1e-9 * seed,
            "kl_k1": kl * 1.01,
            "reward_gold": gold + 0.013 * seed,
            "reward_proxy": proxy + 0.011 * seed,
            "length": 4.0,
            "eos_rate": 1.0,
        }
        if task == "bandit":
            row["efficiency"] = None if step == 0 or not trained else q
            row["prob_mass"] = 1.0
        rows.append(row)
    with open(d / "eval.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    final = rows[-1]
    shift = final["reward_gold"]  # >= 0 for every algorithm: sample-wise above SFT unless noise
    prompts = prompts or [prompt_of(i, task) for i in range(N_PROMPTS)]
    with open(d / "samples.jsonl", "w") as f:
        for i, p in enumerate(prompts):
            wobble = noise * math.sin(3.1 * i + 1.3 * seed + 7 * q + beta)
            g = sft_reward_of(i) + (shift * (1.2 + 0.5 * math.sin(i)) + wobble if algorithm != "sft" else 0.0)
            pr = sft_reward_of(i) + 0.1 + (final["reward_proxy"] * 1.1 + wobble if algorithm != "sft" else 0.0)
            resp = " ".join(["a1"] * (1 + (i + seed) % 4) + ["<eos>"])
            f.write(json.dumps({"prompt": p, "response": resp, "reward_gold": g, "reward_proxy": pr}) + "\n")
    if task == "bandit":
        with open(d / "optimal_frontier.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["reward", "beta", "kl", "reward_value"])
            for name_, fn in (("gold", optimal_gold), ("proxy", optimal_proxy)):
                for b in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0):
                    w.writerow([name_, b, optimal_kl(b), fn(optimal_kl(b))])
    if summary:
        s = {
            "algorithm": algorithm,
            "algorithm_name": algorithm,
            "beta": beta,
            "seed": seed,
            "task": task,
            "reward_model": reward_model,
            "steps": steps,
            "final": final,
            "wall_time_seconds": 10.0 + seed + 5 * q,
            "train_seconds": 8.0 + seed,
            "config": {
                "task": {"name": task, "steps": STEPS},
                "seed": seed,
                "algorithm": {"name": algorithm, "label": algorithm, "beta": beta},
            },
            "versions": {"torch": "2.4.0", "python": "3.11"},
            "git_revision": "abc123",
        }
        if task == "bandit" and trained:
            s["optimal_at_beta"] = {
                "kl": optimal_kl(beta),
                "reward_value": optimal_proxy(optimal_kl(beta)),
                "reward": "proxy",
            }
        (d / "summary.json").write_text(json.dumps(s, indent=2))
    (d / ".hydra").mkdir()
    return d


def make_sweep(
    sweep: Path,
    algorithms=("sft", "best_of_n", "ppo", "dpo"),
    betas=(0.1, 0.5),
    seeds=(0, 1),
    task: str = "bandit",
    noise: float = 0.0,
    start: int = 0,
) -> list[Path]:
    """A Hydra-like multirun dir: ``<num>_<algo>_beta<b>_seed<s>`` for the full grid (sft and
    best_of_n included at every beta, as a real sweep runs them)."""
    out, num = [], start
    for a in algorithms:
        for b in betas:
            for s in seeds:
                out.append(make_run(sweep, f"{num}_{a}_beta{b}_seed{s}", a, b, s, task=task, noise=noise))
                num += 1
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------ several worlds
QUALITY = {"dpo": 0.6, "ppo": 0.75, "p3o_v2": 0.9}  # share of the optimal gain each reaches
OFFSET = {0: 0.0, 1: 3.0, 2: -2.0}  # each world's SFT gold reward: not comparable between worlds
PROXY_OFFSET = {0: 0.5, 1: -1.0, 2: 4.0}
BETAS = (0.1, 0.5)
STEPS, EVAL_EVERY = 100, 25
OPT_BETAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def world_scale(world: int) -> float:  # how much gold reward the optimum buys per sqrt(nat), per world
    return 1.3 * (1.0 + 0.2 * world)


def gold_gain(algorithm: str, world: int, kl: float) -> float:
    q = QUALITY[algorithm] * (1.0 - 0.1 * world if algorithm == "p3o_v2" else 1.0)
    return q * world_scale(world) * math.sqrt(kl) - 0.06 * kl


def write_world_run(d: Path, algorithm: str, beta: float, world: int, seed: int) -> None:
    d.mkdir(parents=True)
    trained = algorithm in QUALITY
    rows = []
    for step in range(0, (STEPS if trained else 0) + 1, EVAL_EVERY):
        kl = optimal_kl(beta) * (0.95 + 0.02 * seed) * (step / STEPS) ** 0.7 if trained else 0.0
        gold = gold_gain(algorithm, world, kl) + (0.01 * seed if step else 0.0) if trained else 0.0
        proxy = 1.6 * QUALITY.get(algorithm, 0.0) * math.sqrt(kl)
        rows.append(
            {"step": step, "kl": kl, "reward_gold": OFFSET[world] + gold, "reward_proxy": PROXY_OFFSET[world] + proxy}
        )
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(d / "optimal_frontier.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reward", "beta", "kl", "reward_value"])
        for b in OPT_BETAS:
            w.writerow(["gold", b, optimal_kl(b), OFFSET[world] + world_scale(world) * math.sqrt(optimal_kl(b))])
            w.writerow(["proxy", b, optimal_kl(b), PROXY_OFFSET[world] + 1.6 * math.sqrt(optimal_kl(b))])
    summary = {
        "algorithm": algorithm,
        "beta": beta,
        "seed": seed,
        "world": world,
        "task": "bandit",
        "reward_model": "learned",
        "steps": STEPS if trained else 0,
        "final": rows[-1],
        "config": {
            "task": {"name": "bandit", "seed": world},
            "seed": seed,
            "algorithm": {"name": algorithm, "label": algorithm, "beta": beta},
        },
        "shared": {
            "metrics": {
                "reward_model": {"rm/heldout_accuracy_gold": 0.7 + 0.05 * world, "rm/heldout_accuracy_labels": 0.8}
            }
        },
    }
    if trained:
        summary["optimal_at_beta"] = {
            "kl": optimal_kl(beta),
            "reward": "proxy",
            "reward_value": PROXY_OFFSET[world] + 1.6 * math.sqrt(optimal_kl(beta)),
        }
    (d / "summary.json").write_text(json.dumps(summary))


def make_world_sweep(sweep: Path, worlds=(0, 1, 2), seeds=(0, 1), algorithms=("sft", "dpo", "ppo", "p3o_v2")):
    """A sweep of every algorithm x beta x world x seed; the runs loaded."""
    for a in algorithms:
        for b in BETAS:
            for w in worlds:
                for s in seeds:
                    write_world_run(sweep / f"{a}_b{b}_w{w}_s{s}", a, b, w, s)
    runs, _ = load_runs([sweep])
    return runs
