"""Convergence to the exact optimum on the enumerable bandit.

For each algorithm and beta, train on ``task=bandit`` against the gold reward (no proxy error),
with the settings tuned for the bandit benchmark (``tuned=bandit``), and compare the final policy with the exact KL-regularised optimum ``pi*_beta``:

- ``efficiency = (reward - reward_sft) / (optimal reward at the same KL - reward_sft)``
- ``kl_rel_error = KL / KL(pi*_beta || pi_ref) - 1``

    python -m rlhf_bench.benchmarks.convergence --out results/bandit_convergence

writes ``convergence.csv`` and ``convergence.md`` (and the run directories under ``runs/``).
The slow test ``tests/test_convergence.py`` runs the same grid and checks the thresholds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

ALGORITHMS = ("ppo", "online_dpo", "p3o_v1", "p3o_v2", "dpo")
BETAS = (0.2, 0.6, 2.0)
COLUMNS = ["algorithm", "beta", "seed", "kl", "kl_optimal", "kl_rel_error", "reward_gold", "reward_optimal_at_beta",
           "reward_sft", "efficiency", "train_seconds"]


def compose(overrides: Sequence[str]):
    """Compose the run config exactly as ``rlhf-bench`` would, from Python."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from rlhf_bench.benchmarks.cli import CONFIG_MODULE, quiet_libraries

    quiet_libraries()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run_point(algorithm: str, beta: float, out_dir: str, cache_dir: str, overrides: Sequence[str] = (),
              seed: int = 0) -> dict:
    """Train one (algorithm, beta, seed) against the gold bandit reward, with the bandit's tuned
    settings (conf/tuned/bandit.yaml); return its convergence row."""
    from rlhf_bench.benchmarks.runs import run

    cfg = compose([f"algorithm={algorithm}", f"algorithm.beta={beta}", "task=bandit", "reward_model=gold",
                   "tuned=bandit", f"seed={seed}", f"cache_dir={cache_dir}", "progress=false", *overrides])
    run_dir = Path(out_dir) / "runs" / (f"{algorithm}_beta{beta:g}" + ("" if seed == 0 else f"_seed{seed}"))
    summary = run(cfg, run_dir)
    if summary["status"] == "failed":
        raise SystemExit(f"rlhf-bench convergence: {algorithm} beta={beta:g} seed={seed} failed: {summary['reason']}")
    rows = [json.loads(line) for line in open(run_dir / "eval.jsonl")]
    final, sft = rows[-1], rows[0]
    kl_opt = summary["optimal_at_beta"]["kl"]
    return {"algorithm": algorithm, "beta": beta, "seed": seed, "kl": final["kl"], "kl_optimal": kl_opt,
            "kl_rel_error": final["kl"] / kl_opt - 1.0, "reward_gold": final["reward_gold"],
            "reward_optimal_at_beta": summary["optimal_at_beta"]["reward_value"], "reward_sft": sft["reward_gold"],
            "efficiency": final["efficiency"], "train_seconds": summary["train_seconds"]}


def _point(args):
    return run_point(*args)


def convergence_grid(out_dir: Path, cache_dir: Path, algorithms: Sequence[str] = ALGORITHMS,
                     betas: Sequence[float] = BETAS, jobs: int = 2, overrides: Sequence[str] = (),
                     seed: int = 0) -> list[dict]:
    """Run the grid (``jobs`` processes in parallel) and write ``convergence.csv`` / ``.md``."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build the shared stages once before fanning out (the lock would also serialise them).
    from rlhf_bench.benchmarks.runs import run

    run(compose(["algorithm=sft", "task=bandit", "reward_model=gold", f"cache_dir={cache_dir}", "progress=false",
                 *overrides]), out_dir / "runs" / "sft")
    points = [(a, b, str(out_dir), str(cache_dir), tuple(overrides), seed) for a in algorithms for b in betas]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(_point, points))
    with open(out_dir / "convergence.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = ["| algorithm | beta | KL | KL(pi*_beta) | KL rel. error | gold reward | optimal reward at beta | efficiency | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['beta']:g} | {r['kl']:.3f} | {r['kl_optimal']:.3f} | "
                     f"{100 * r['kl_rel_error']:+.1f}% | {r['reward_gold']:.3f} | {r['reward_optimal_at_beta']:.3f} | "
                     f"{r['efficiency']:.3f} | {r['train_seconds']:.0f} |")
    (out_dir / "convergence.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/bandit_convergence"))
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("RLHF_BENCH_CACHE", ".rlhf-bench-cache")))
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    p.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. task.steps=300")
    a = p.parse_args(argv)
    t0 = time.time()
    convergence_grid(a.out, a.cache_dir, a.algorithms, a.betas, a.jobs, a.overrides, a.seed)
    print((a.out / "convergence.md").read_text())
    print(f"wrote {a.out / 'convergence.csv'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
