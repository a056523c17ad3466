"""Convergence to the exact optimum on the enumerable bandit.

For each algorithm and beta, train on ``task=bandit`` against the gold reward (no proxy error),
with the settings tuned for the bandit benchmark (``tuned=bandit``), and compare the final policy with the exact
KL-regularised optimum ``pi*_beta``:

- ``efficiency = (reward - reward_sft) / (optimal reward at the same KL - reward_sft)``
- ``kl_rel_error = KL / KL(pi*_beta || pi_ref) - 1``, ``kl_to_optimum = KL(pi || pi*_beta)``

and with the policy its objective actually converges to, as the plugin declares it
(``Algorithm.convergence_target``; :mod:`~rlhf_bench.benchmarks.evaluation.targets` solves it exactly on the
run's own tables, recomputed from ``runs/<name>/policy`` and the shared SFT base): ``target``,
its KL and gold reward, ``kl_rel_error_target`` and ``kl_to_target = KL(pi || target)``.
:func:`default_algorithms` adds the configurations whose objective is not ``pi*_beta``'s (PPO with a k3 reward,
online DPO with hard labels).

    python -m rlhf_bench.benchmarks.convergence --out results/bandit_convergence

writes ``convergence.csv`` and ``convergence.md`` (and the run directories under ``runs/``).
The slow test ``tests/evaluation/test_convergence.py`` runs the same grid and checks the thresholds.
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

import torch

from ..formatting import number, table_head
from ..runfiles import EVAL, SUMMARY


def default_algorithms() -> list[str]:
    """What the study runs unless told otherwise, found through the registry: every option that trains
    (:func:`~rlhf_bench.benchmarks.plugins.select_options`), each followed by the configurations its
    algorithm declares for this study (``Algorithm.convergence_variants``, e.g. ``ppo_k3``)."""
    from ..plugins import convergence_variants, select_options

    variants = convergence_variants()
    out: list[str] = []
    for option in select_options("trained"):
        out += [option, *(v for v, (algorithm, _) in variants.items() if algorithm == option)]
    return out + [v for v in variants if v not in out]


def variant_overrides(name: str) -> list[str]:
    """The overrides that configure ``name``: ``algorithm=<name>`` for an option, the declared ones for a
    convergence variant (on top of ``algorithm=<its algorithm>`` unless they choose the option)."""
    from ..plugins import convergence_variants

    variants = convergence_variants()
    if name not in variants:
        return [f"algorithm={name}"]
    algorithm, overrides = variants[name]
    chosen = any(o.startswith("algorithm=") for o in overrides)
    return [*([] if chosen else [f"algorithm={algorithm}"]), *overrides]


BETAS = (0.2, 0.6, 2.0)
COLUMNS = [
    "algorithm",
    "beta",
    "seed",
    "kl",
    "kl_optimal",
    "kl_rel_error",
    "reward_gold",
    "reward_optimal_at_beta",
    "reward_sft",
    "efficiency",
    "kl_to_optimum",
    "target",
    "kl_target",
    "kl_rel_error_target",
    "reward_target",
    "kl_to_target",
    "target_residual",
    "train_seconds",
]


def compose(overrides: Sequence[str]):
    """Compose the run config exactly as ``rlhf-bench`` would, from Python."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from ..cli import CONFIG_MODULE, quiet_libraries

    quiet_libraries()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run_point(
    name: str, beta: float, out_dir: str, cache_dir: str, overrides: Sequence[str] = (), seed: int = 0
) -> dict:
    """Train one (algorithm or variant, beta, seed) against the gold bandit reward, with the bandit's
    tuned settings (conf/tuned/bandit/<option>.yaml); return its convergence row."""
    from ..training.runs import run

    cfg = compose(
        [
            *variant_overrides(name),
            f"algorithm.beta={beta}",
            "task=bandit",
            "reward_model=gold",
            "tuned=bandit",
            f"seed={seed}",
            f"cache_dir={cache_dir}",
            "progress=false",
            *overrides,
        ]
    )
    run_dir = Path(out_dir) / "runs" / (f"{name}_beta{beta:g}" + ("" if seed == 0 else f"_seed{seed}"))
    summary = run(cfg, run_dir)
    if summary["status"] == "failed":
        raise SystemExit(f"rlhf-bench convergence: {name} beta={beta:g} seed={seed} failed: {summary['reason']}")
    rows = [json.loads(line) for line in open(run_dir / EVAL)]
    final, sft = rows[-1], rows[0]
    kl_opt = summary["optimal_at_beta"]["kl"]
    row = {
        "algorithm": name,
        "beta": beta,
        "seed": seed,
        "kl": final["kl"],
        "kl_optimal": kl_opt,
        "kl_rel_error": final["kl"] / kl_opt - 1.0,
        "reward_gold": final["reward_gold"],
        "reward_optimal_at_beta": summary["optimal_at_beta"]["reward_value"],
        "reward_sft": sft["reward_gold"],
        "efficiency": final["efficiency"],
        "train_seconds": summary["train_seconds"],
    }
    return {**row, **target_columns(run_dir, cfg, beta, final["kl"])}


def target_columns(run_dir: Path, cfg, beta: float, kl: float) -> dict:
    """Where the run ended against where its objective converges (the plugin's declared target,
    ``Algorithm.convergence_target``, solved exactly on the run's own tables): KL(pi || pi*_beta),
    and for another target its KL to pi_ref, gold reward and KL(pi || target)."""
    from omegaconf import OmegaConf

    from ..evaluation import kl_and_reward
    from ..evaluation.targets import PI_STAR, distances, reverse_kl_optimum, target_table
    from ..plugins import get_algorithm

    spec = get_algorithm(cfg.algorithm.name)
    acfg = spec.config_class(**OmegaConf.to_container(cfg.algorithm, resolve=True))
    objective = spec.cls.convergence_target(acfg)
    t = enumerated_tables(run_dir)
    star = reverse_kl_optimum(t["ref_logp"].double(), t["gold"], beta)
    out = {"kl_to_optimum": distances(t["logp"], {"star": star})["star"], "target": objective.name}
    if objective is PI_STAR or objective.solve is None:
        return {
            **out,
            **dict.fromkeys(("kl_target", "kl_rel_error_target", "reward_target", "kl_to_target", "target_residual")),
        }
    task = cfg.task
    target = target_table(objective, t["ref_logp"], t["gold"], beta, A=task.n_actions, L=task.response_len)
    kl_t, reward_t = kl_and_reward(target.logp, t["ref_logp"].double(), t["gold"])
    return {
        **out,
        "kl_target": kl_t,
        "kl_rel_error_target": kl / kl_t - 1.0,
        "reward_target": reward_t,
        "kl_to_target": distances(t["logp"], {"t": target})["t"],
        "target_residual": target.residual,
    }


def enumerated_tables(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exact tables of a finished enumerable run, recomputed from its files: ``logp`` of the
    final policy (``run_dir/policy``), ``ref_logp`` of the shared SFT base and the ``gold`` reward,
    each (P, N) over the task's evaluation prompts and every response (as its evaluation did)."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from ..config import TASK_SCHEMAS
    from ..evaluation import PrefixTree
    from ..rollout import RolloutEngine
    from ..tasks import build_task

    summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    task_cfg = summary["config"]["task"]
    task_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TASK_SCHEMAS[task_cfg["name"]]), task_cfg))
    task = build_task(task_cfg)
    load = lambda d: AutoModelForCausalLM.from_pretrained(str(d)).eval()  # noqa: E731
    ref, policy = load(summary["shared"]["dirs"]["sft"]), load(Path(run_dir) / "policy")
    engine = RolloutEngine(
        task, ref, None, reward_kind="gold", temperature=task_cfg.temperature, device=torch.device("cpu")
    )
    responses, prompts = task.all_responses(), [list(p) for p in task.eval_prompts]
    tree = PrefixTree(responses, engine.logit_mask)
    gold = task.gold_reward([p for p in prompts for _ in responses], responses * len(prompts))
    return {
        "logp": tree.logprobs(policy, prompts, engine),
        "ref_logp": tree.logprobs(ref, prompts, engine),
        "gold": gold.view(len(prompts), len(responses)).double(),
    }


def _point(args):
    return run_point(*args)


def convergence_grid(
    out_dir: Path,
    cache_dir: Path,
    algorithms: Sequence[str] | None = None,
    betas: Sequence[float] = BETAS,
    jobs: int = 2,
    overrides: Sequence[str] = (),
    seed: int = 0,
) -> list[dict]:
    """Run the grid (``jobs`` processes in parallel; ``algorithms``: :func:`default_algorithms` unless
    given) and write ``convergence.csv`` / ``.md``."""
    algorithms = default_algorithms() if algorithms is None else algorithms
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build the shared stages once before fanning out (the lock would also serialise them). They do not
    # depend on the algorithm, so its overrides (algorithm.lr=...) are not the SFT run's.
    from ..training.runs import run

    shared = [o for o in overrides if not o.lstrip("+~").startswith("algorithm.")]
    run(
        compose(
            ["algorithm=sft", "task=bandit", "reward_model=gold", f"cache_dir={cache_dir}", "progress=false", *shared]
        ),
        out_dir / "runs" / "sft",
    )
    points = [(a, b, str(out_dir), str(cache_dir), tuple(overrides), seed) for a in algorithms for b in betas]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(_point, points))
    with open(out_dir / "convergence.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out_dir / "convergence.md").write_text(markdown(rows))
    return rows


def _f(x, digits: int = 3, pct: bool = False) -> str:
    return number(x, 1, signed=True, percent=True) if pct else number(x, digits)


def markdown(rows: list[dict]) -> str:
    """Two tables: where every run ended against pi*_beta, and against its own objective's target."""
    head = ["algorithm", "beta", "KL", "KL(pi*_beta)", "KL rel. error", "gold reward", "optimal reward at beta"]
    lines = table_head([*head, "efficiency", "KL(pi ‖ pi*_beta)", "train s"])
    for r in rows:
        lines.append(
            f"| {r['algorithm']} | {r['beta']:g} | {r['kl']:.3f} | {r['kl_optimal']:.3f} | "
            f"{_f(r['kl_rel_error'], pct=True)} | {r['reward_gold']:.3f} | {r['reward_optimal_at_beta']:.3f} | "
            f"{r['efficiency']:.3f} | {_f(r['kl_to_optimum'], 4)} | {r['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "What each objective converges to (the plugin's declared target, solved exactly on the run's "
        "tables; KL to pi_ref and gold reward of the target, the run's KL error against it, KL(pi ‖ target)):",
        "",
        *table_head(
            ["algorithm", "beta", "target", "target KL", "target gold reward", "KL rel. error to target"]
            + ["KL(pi ‖ target)", "KL(pi ‖ pi*_beta)"]
        ),
    ]
    for r in rows:
        lines.append(
            f"| {r['algorithm']} | {r['beta']:g} | {r['target']} | {_f(r['kl_target'])} | "
            f"{_f(r['reward_target'])} | {_f(r['kl_rel_error_target'], pct=True)} | "
            f"{_f(r['kl_to_target'], 4)} | {_f(r['kl_to_optimum'], 4)} |"
        )
    return "\n".join(lines) + "\n"


def read_rows(path: Path) -> list[dict]:
    """The rows of a ``convergence.csv``, numbers as floats (an empty cell: None)."""
    text = {"algorithm", "target"}
    with open(path, newline="") as f:
        return [
            {k: v if k in text else (float(v) if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)
        ]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/bandit_convergence"))
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("RLHF_BENCH_CACHE", ".rlhf-bench-cache")))
    p.add_argument("--algorithms", nargs="+", default=None, help="default: every algorithm that trains, and variants")
    p.add_argument("--betas", nargs="+", type=float, default=list(BETAS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown-only", action="store_true", help="rewrite convergence.md from --out's convergence.csv")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. task.steps=300")
    a = p.parse_args(argv)
    if a.markdown_only:
        (a.out / "convergence.md").write_text(markdown(read_rows(a.out / "convergence.csv")))
        print(f"wrote {a.out / 'convergence.md'}")
        return
    t0 = time.time()
    convergence_grid(a.out, a.cache_dir, a.algorithms, a.betas, a.jobs, a.overrides, a.seed)
    print((a.out / "convergence.md").read_text())
    print(f"wrote {a.out / 'convergence.csv'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
