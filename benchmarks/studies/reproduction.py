"""Do two runs of the same benchmark reach the same verdicts? Compares the pooled comparisons of two
sweep directories (their ``comparisons.csv``, written by the report), typically the same command run
with other CPU kernels, whose round-off trains other SFT bases and reward models:

    python -m rlhf_bench.benchmarks.reproduction results/bandit results/bandit_avx2 --out results/bandit_kernels

writes ``reproduction.csv`` (one row per pooled comparison present in both) and ``reproduction.md``:
how many verdicts agree, which change, whether any **flips** between *better* and *worse* (the one
change a verdict must never make), whether each pooled estimate lies within the other's interval,
how many runs ended with bitwise-equal final metrics, and what set the kernels on each side
(``summary.json``'s ``numerics``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from ..formatting import table_head
from ..report.loading import load_runs

KEY = ("task", "reward_model", "beta", "a", "b")
COLUMNS = [
    *KEY,
    "gap_1",
    "ci_low_1",
    "ci_high_1",
    "verdict_1",
    "gap_2",
    "ci_low_2",
    "ci_high_2",
    "verdict_2",
    "same_verdict",
    "flip",
    "estimates_within_each_other",
]


def _f(x: str) -> float:
    return float(x) if x not in ("", None) else math.nan


def pooled_rows(sweep: Path) -> dict[tuple, dict]:
    """(task, reward model, beta, a, b) -> the pooled row of ``comparisons.csv``."""
    path = Path(sweep) / "comparisons.csv"
    if not path.is_file():
        raise SystemExit(
            f"rlhf-bench reproduction: {path} not found; build the report first (rlhf-bench-report {sweep})"
        )
    with open(path, newline="") as f:
        return {tuple(r[k] for k in KEY): r for r in csv.DictReader(f) if r.get("world", "pooled") == "pooled"}


def compare_rows(one: dict, two: dict) -> dict:
    """One comparison in both sweeps: same verdict, a flip (better <-> worse), and whether each pooled
    estimate lies within the other's interval (false when either has none)."""
    g1, l1, h1 = _f(one["gap"]), _f(one["ci_low"]), _f(one["ci_high"])
    g2, l2, h2 = _f(two["gap"]), _f(two["ci_low"]), _f(two["ci_high"])
    v1, v2 = one["verdict"], two["verdict"]
    within = all(map(math.isfinite, (l1, h1, l2, h2))) and l2 <= g1 <= h2 and l1 <= g2 <= h1
    return {
        **{k: one[k] for k in KEY},
        "gap_1": g1,
        "ci_low_1": l1,
        "ci_high_1": h1,
        "verdict_1": v1,
        "gap_2": g2,
        "ci_low_2": l2,
        "ci_high_2": h2,
        "verdict_2": v2,
        "same_verdict": v1 == v2,
        "flip": {v1, v2} == {"better", "worse"},
        "estimates_within_each_other": within,
    }


def _numerics(runs) -> str:
    seen = Counter(
        json.dumps(
            {k: (r.summary.get("numerics") or {}).get(k) for k in ("cpu_capability", "blas", "env")}, sort_keys=True
        )
        for r in runs
    )
    return "; ".join(f"{k} ({n} runs)" for k, n in seen.most_common())


def _identical_runs(runs1, runs2) -> tuple[int, int]:
    """(runs whose final evaluation is bitwise equal in both sweeps, runs present in both)."""
    key = lambda r: (r.task, r.reward_model, r.algorithm, None if r.beta_independent else r.beta, r.world, r.seed)  # noqa: E731
    other = {key(r): r for r in runs2}
    both = [(r, other[key(r)]) for r in runs1 if key(r) in other]
    return sum(json.dumps(a.final, sort_keys=True) == json.dumps(b.final, sort_keys=True) for a, b in both), len(both)


def write(sweeps: Sequence[Path], out: Path) -> Path:
    one, two = pooled_rows(sweeps[0]), pooled_rows(sweeps[1])
    rows = [compare_rows(one[k], two[k]) for k in one if k in two]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "reproduction.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    runs1, _ = load_runs([sweeps[0]])
    runs2, _ = load_runs([sweeps[1]])
    same, both = _identical_runs(runs1, runs2)
    flips = [r for r in rows if r["flip"]]
    changed = [r for r in rows if not r["same_verdict"]]
    either = sum(r["estimates_within_each_other"] or _one_inside(r) for r in rows)
    L = [
        "# Reproduction of the verdicts",
        "",
        f"`python -m rlhf_bench.benchmarks.reproduction {sweeps[0]} {sweeps[1]} --out {out}`",
        "",
        f"- 1: `{sweeps[0]}`: {_numerics(runs1)}",
        f"- 2: `{sweeps[1]}`: {_numerics(runs2)}",
        "",
        f"Runs whose final evaluation is bitwise equal in both: {same} of {both}.",
        "",
        f"Pooled comparisons in both: {len(rows)}. Same verdict: {len(rows) - len(changed)}. "
        f"Changed: {len(changed)}. **Flips between better and worse: {len(flips)}.** Pooled estimates within "
        f"each other's interval: {sum(r['estimates_within_each_other'] for r in rows)} of {len(rows)}; at least one "
        f"within the other's: {either} of {len(rows)}.",
        "",
    ]
    shown = changed + [r for r in rows if r["same_verdict"] and not r["estimates_within_each_other"]]
    if shown:
        L += [
            "Comparisons whose verdict changed, or whose estimates lie outside each other's interval:",
            "",
            *table_head(["task", "β", "a", "b", "1: gap [interval] verdict", "2: gap [interval] verdict", "flip"]),
        ]
        for r in shown:
            L.append(
                f"| {r['task']} | {r['beta']} | {r['a']} | {r['b']} | {_cell(r, 1)} | {_cell(r, 2)} | "
                f"{'**yes**' if r['flip'] else 'no'} |"
            )
    (out / "reproduction.md").write_text("\n".join(L) + "\n")
    return out / "reproduction.md"


def _one_inside(r: dict) -> bool:
    """One pooled estimate lies within the other sweep's interval."""
    return (r["ci_low_2"] <= r["gap_1"] <= r["ci_high_2"]) or (r["ci_low_1"] <= r["gap_2"] <= r["ci_high_1"])


def _cell(r: dict, i: int) -> str:
    g, lo, hi = r[f"gap_{i}"], r[f"ci_low_{i}"], r[f"ci_high_{i}"]
    interval = f" [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(lo) else ""
    return f"{g:+.3f}{interval} {r[f'verdict_{i}']}"


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m rlhf_bench.benchmarks.reproduction", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("sweeps", nargs=2, type=Path, metavar="SWEEP_DIR")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    print(write(a.sweeps, a.out))


if __name__ == "__main__":
    main()
