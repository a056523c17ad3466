"""Which of DPO's losses do noisy preference labels favour? Reads the sweeps of ``benchmark=label_noise``
(dpo and every option that extends it, over worlds and seeds, at one label noise per sweep directory; runs added
to a sweep directory under another ``algorithm.label``, such as cDPO with another flip rate, join its comparisons):

    rlhf-bench benchmark=label_noise task.preferences.label_temperature=1 hydra.sweep.dir=results/label_noise/t1
    rlhf-bench benchmark=label_noise task.preferences.label_temperature=1 algorithm=dpo_cdpo \
        algorithm.label_smoothing=0.3 algorithm.label=dpo_cdpo_eps0.3 hydra.sweep.dir=results/label_noise/t1
    python -m rlhf_bench.benchmarks.label_noise results/label_noise/t1 ...

and writes ``label_noise.md`` / ``.csv`` beside them:

- the noise each level actually put into the training pairs: the share of the C(K,2) pairs of each
  ranked list whose preferred response has the lower gold reward (pairs of equal gold are not
  counted), per world, from the preference data the runs trained on;
- every pooled all-beta comparison within the family (gold-reward gap at matched KL, the interval
  over worlds), read from each sweep's ``comparisons.csv``;
- the loss the data favour at that level, the one *better* than every other, and the one they put last, *worse*
  than every other; else "cannot tell".

The flip rates are read from the shared stages' cache the sweep used (``summary.json``'s
``shared.dirs.preferences``); run this on the machine that ran the sweeps.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Sequence

from ..formatting import table_head
from ..runfiles import SUMMARY
from .reproduction import pooled_rows

COLUMNS = ["label_temperature", "a", "b", "gap", "ci_low", "ci_high", "worlds", "verdict"]


def pair_flip_rate(preferences_dir: Path) -> float:
    """Share of the training pairs (every pair of a ranked list) whose preferred response has the lower
    gold reward; pairs of equal gold are left out."""
    import datasets

    train = datasets.load_from_disk(str(Path(preferences_dir) / "train"))
    flipped = total = 0
    for ranking, gold in zip(train["ranking"], train["gold"]):
        ranked = [gold[i] for i in ranking]  # best first, as the judge ranked them
        for i in range(len(ranked)):
            for j in range(i + 1, len(ranked)):
                if ranked[i] != ranked[j]:
                    total += 1
                    flipped += ranked[i] < ranked[j]
    return flipped / total


def sweep_level(sweep: Path) -> tuple[float, dict[int, float]]:
    """The sweep's label temperature and each world's pair flip rate."""
    temperatures, rates = set(), {}
    for summary_path in sorted(Path(sweep).glob(f"*/{SUMMARY}")):
        summary = json.loads(summary_path.read_text())
        temperatures.add(float(summary["config"]["task"]["preferences"]["label_temperature"]))
        world = int(summary["world"])
        if world not in rates:
            prefs = Path(summary["shared"]["dirs"]["preferences"])
            if not (prefs / "train").is_dir():
                raise SystemExit(
                    f"rlhf-bench label_noise: {prefs} (the preference data of {summary_path.parent.name}) is not "
                    "in the cache; run this where the sweep ran, or re-run the sweep to rebuild it"
                )
            rates[world] = pair_flip_rate(prefs)
    if len(temperatures) != 1:
        raise SystemExit(
            f"rlhf-bench label_noise: {sweep} holds label temperatures {sorted(temperatures)}; one per sweep directory"
        )
    return temperatures.pop(), rates


def family_rows(sweep: Path, temperature: float) -> list[dict]:
    """The pooled all-beta comparisons of the sweep (every pair of its algorithms)."""
    out = []
    for (_, _, beta, a, b), r in sorted(pooled_rows(sweep).items()):
        if beta == "all":
            out.append(
                {
                    "label_temperature": temperature,
                    "a": a,
                    "b": b,
                    "gap": float(r["gap"]),
                    "ci_low": float(r["ci_low"]),
                    "ci_high": float(r["ci_high"]),
                    "worlds": int(r["worlds"]),
                    "verdict": r["verdict"],
                }
            )
    return out


def favoured(rows: Sequence[dict], verdict: str = "better") -> str:
    """The algorithm *better* than every other in the rows (both orientations read), else "cannot tell";
    ``verdict="worse"``: the one *worse* than every other (the loss the data disfavour)."""
    other = {"better": "worse", "worse": "better"}[verdict]
    names = sorted({r[k] for r in rows for k in ("a", "b")})
    for name in names:
        beats = {r["b"] for r in rows if r["a"] == name and r["verdict"] == verdict}
        beats |= {r["a"] for r in rows if r["b"] == name and r["verdict"] == other}
        if beats == set(names) - {name}:
            return name
    return "cannot tell"


def markdown(levels: Sequence[tuple[float, dict[int, float], list[dict]]]) -> str:
    lines = [
        "<!-- written by python -m rlhf_bench.benchmarks.label_noise; the README quotes it verbatim -->",
        "Pair flip rate: the share of the training pairs whose preferred response has the lower gold reward"
        " (per world). The options `dpo_cdpo` and `dpo_robust` assume a flip rate ε = 0.1; a label"
        " `<option>_eps<ε>` is the option run with another ε. Gaps: gold reward at matched KL, pooled over"
        " worlds, all β (95% interval over worlds).",
        "",
    ]
    for temperature, rates, rows in levels:
        mean = sum(rates.values()) / len(rates)
        per_world = ", ".join(f"{w}: {rate:.3f}" for w, rate in sorted(rates.items()))
        lines += [
            f"**Label temperature {temperature:g}**: pair flip rate {mean:.3f} (mean over {len(rates)} worlds;"
            f" {per_world}). Favoured: **{favoured(rows)}**; last: **{favoured(rows, 'worse')}**.",
            "",
            *table_head(["comparison", "gap", "95% interval", "worlds", "verdict"]),
            *(
                f"| {r['a']} − {r['b']} | {r['gap']:+.3f} | [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | "
                f"{r['worlds']} | {r['verdict']} |"
                for r in rows
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep directories of benchmark=label_noise, one per level")
    p.add_argument("--out", type=Path, default=None, help="default: the sweeps' common parent")
    a = p.parse_args(argv)
    out = a.out or Path(a.sweeps[0]).parent
    levels = []
    for sweep in a.sweeps:
        temperature, rates = sweep_level(sweep)
        levels.append((temperature, rates, family_rows(sweep, temperature)))
    levels.sort(key=lambda level: level[0])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "label_noise.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*COLUMNS, "pair_flip_rate"])
        w.writeheader()
        for _, rates, rows in levels:
            flip = sum(rates.values()) / len(rates)
            w.writerows({**r, "pair_flip_rate": flip} for r in rows)
    (out / "label_noise.md").write_text(markdown(levels))
    print((out / "label_noise.md").read_text())
    print(f"wrote {out / 'label_noise.md'} and .csv")


if __name__ == "__main__":
    main()
