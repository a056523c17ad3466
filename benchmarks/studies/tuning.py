"""Per-algorithm tuning on worlds and seeds held apart from the reported ones.

    python -m rlhf_bench.benchmarks.tuning bandit

reads the protocol ``conf/tuning/<task>.yaml`` (declared before any run: the benchmark whose
budget the runs use, one mid-range beta, the tuning worlds (``task.seed``: a gold reward, data, SFT
base and reward model that no reported benchmark uses) and run seeds, a grid per knob, the
criterion). The algorithms tuned are the registry's (every option that trains,
:func:`~rlhf_bench.benchmarks.plugins.select_options`), each on the knobs its config has: ``lr`` for
all, ``clip_eps`` where there is one, ``updates`` (epochs x minibatches pairs) for all. It runs every
grid point with ``rlhf-bench -m`` (one multirun per algorithm and epochs x minibatches pair, so that
the number of gradient updates per step stays the protocol's), scores each run and writes

- ``results/tuning/<task>/``: the runs, ``scores.csv`` (every candidate, every world and seed) and ``tuning.md``;
- ``conf/tuned/<task>/<option>.yaml``: each option's chosen settings, with every candidate's score in
  its comments, which the run config lays over the option when a benchmark selects ``tuned: <task>``
  (conf/config.yaml); a variant option (``ppo_ptx``) gets the settings of the option it extends;
- ``conf/tuned/<task>.yaml``: where they come from: the command, the grids and the criterion.

Criterion ``final_front_gain``: the front through the SFT point and the run's final evaluation
(KL, gold reward) - linear between them, flat after - averaged over KL in [0, kl_max], minus the
SFT gold reward (:func:`~rlhf_bench.benchmarks.report.frontiers.mean_gain`); the mean over the tuning
replicates (every world x seed) ranks the candidates. It rewards a high gold reward at a low KL, and
penalises a run that overshoots the KL range as one that stops short of it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..formatting import table_head
from ..report.frontiers import front_of, mean_gain
from ..runfiles import EVAL, SUMMARY
from ..utils import atomic_write_text

UPDATE_KNOBS = ("epochs", "minibatches")
UPDATES = "updates"  # the grid knob of (epochs, minibatches) pairs


def tuned_settings(task: str, conf_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The settings ``tuned=<task>`` lays over each option: ``conf/tuned/<task>/<option>.yaml``."""
    folder = Path(conf_dir) if conf_dir else Path(str(files("rlhf_bench.conf").joinpath("tuned")))
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted((folder / task).glob("*.yaml"))}


def option_grids(proto: dict, algorithms: list[str] | None = None) -> dict[str, dict[str, list]]:
    """Each tuned option's grid: the protocol's grid of every knob that the option's config has
    (``updates``: every option). ``algorithms``: the options to tune (default: every option that trains)."""
    from dataclasses import fields

    from ..plugins import algorithm_options, select_options

    specs = algorithm_options()
    chosen = select_options("trained") if algorithms is None else algorithms
    unknown = [a for a in chosen if a not in specs]
    if unknown:
        raise SystemExit(f"rlhf-bench tuning: unknown algorithm option(s) {unknown}; known: {', '.join(specs)}")
    out = {}
    for option in chosen:
        names = {f.name for f in fields(specs[option].config_class)}
        out[option] = {k: v for k, v in proto["grids"].items() if k == UPDATES or k in names}
    return out


def load_protocol(task: str) -> dict[str, Any]:
    path = files("rlhf_bench.conf").joinpath("tuning", f"{task}.yaml")
    if not path.is_file():
        known = sorted(
            p.name[:-5] for p in files("rlhf_bench.conf").joinpath("tuning").iterdir() if p.name.endswith(".yaml")
        )
        raise SystemExit(f"rlhf-bench tuning: no protocol conf/tuning/{task}.yaml; known: {', '.join(known)}")
    return yaml.safe_load(path.read_text())


def candidates(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every point of an algorithm's grid; ``updates`` lists (epochs, minibatches) pairs."""
    grid = dict(grid)
    updates = grid.pop(UPDATES, [[None, None]])
    keys = sorted(grid)
    out = []
    for (epochs, minibatches), values in itertools.product(updates, itertools.product(*(grid[k] for k in keys))):
        point = dict(zip(keys, values))
        if epochs is not None:
            point.update(epochs=int(epochs), minibatches=int(minibatches))
        out.append(point)
    return out


def replicates(proto: dict) -> list[tuple[int, int]]:
    """The (world, seed) pairs every candidate runs on: the protocol's worlds x seeds."""
    return [(int(w), int(s)) for w in proto["worlds"] for s in proto["seeds"]]


def run_grid(proto: dict, label: str, grid: dict, sweep_dir: Path, jobs: int) -> None:
    """One ``rlhf-bench -m`` per (epochs, minibatches) pair; finished runs are skipped by the trainer."""
    grid = dict(grid)
    for epochs, minibatches in grid.pop(UPDATES, [[None, None]]):
        cmd = [
            sys.executable,
            "-m",
            "rlhf_bench.benchmarks.cli",
            "-m",
            f"benchmark={proto['benchmark']}",
            "tuned=none",
            f"algorithm={label}",
            f"algorithm.beta={proto['beta']}",
            f"task.seed={','.join(map(str, proto['worlds']))}",
            f"seed={','.join(map(str, proto['seeds']))}",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={jobs}",
            "hydra.launcher.batch_size=1",
            "~hydra.callbacks.report",
        ]
        cmd += [f"algorithm.{k}={','.join(str(v) for v in values)}" for k, values in sorted(grid.items())]
        if epochs is not None:
            cmd += [f"algorithm.epochs={epochs}", f"algorithm.minibatches={minibatches}"]
        print("+", " ".join(cmd[2:]), flush=True)
        code = subprocess.run(cmd).returncode
        if code not in (0, 1):  # 1: some runs failed (they diverged): scored as such, below
            raise SystemExit(f"rlhf-bench tuning: the runs of {label} could not run (command above)")


def score_run(run_dir: Path, kl_max: float) -> dict[str, Any]:
    """The criterion of one run; a failed run (a non-finite value: the setting diverged) scores -inf."""
    summary = json.loads((run_dir / SUMMARY).read_text())
    who = {
        "label": summary["algorithm"],
        "replicate": (int(summary["config"]["task"]["seed"]), int(summary["seed"])),
        "config": summary["config"]["algorithm"],
    }
    if summary.get("status", "finished") == "failed":
        return {
            **who,
            "kl": float("nan"),
            "reward_gold": float("nan"),
            "score": float("-inf"),
            "failed": summary["reason"],
        }
    rows = [json.loads(line) for line in (run_dir / EVAL).read_text().splitlines()]
    sft, final = rows[0], rows[-1]
    front = front_of([(final["kl"], final["reward_gold"])], (0.0, sft["reward_gold"]))
    return {
        **who,
        "kl": final["kl"],
        "reward_gold": final["reward_gold"],
        "score": mean_gain(front, 0.0, kl_max, baseline=sft["reward_gold"]),
    }


def choose(proto: dict, grids: dict[str, dict], runs: list[dict]) -> tuple[dict, list[dict]]:
    """Mean score over the tuning replicates (worlds x seeds) for every candidate; the best per algorithm."""
    table, chosen = [], {}
    wanted = sorted(replicates(proto))
    for label, grid in grids.items():
        knobs = sorted(set(grid) - {UPDATES}) + (list(UPDATE_KNOBS) if UPDATES in grid else [])
        for point in candidates(grid):
            mine = sorted(
                (r for r in runs if r["label"] == label and all(r["config"][k] == v for k, v in point.items())),
                key=lambda r: r["replicate"],
            )
            found = [r["replicate"] for r in mine]
            if found != wanted:
                raise SystemExit(
                    f"rlhf-bench tuning: {label} {point}: runs for (world, seed) {found}, expected {wanted}"
                )
            mean = sum(r["score"] for r in mine) / len(mine)
            table.append(
                {
                    "label": label,
                    **{k: point[k] for k in knobs},
                    "score": mean,
                    "scores": [r["score"] for r in mine],
                    "kl": [r["kl"] for r in mine],
                }
            )
        best = max((t for t in table if t["label"] == label), key=lambda t: t["score"])
        chosen[label] = {k: best[k] for k in knobs}
    return chosen, table


def write_outputs(task: str, proto: dict, chosen: dict, table: list[dict], out: Path, conf_dir: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    knob_cols = sorted({k for t in table for k in t} - {"label", "score", "scores", "kl"})
    reps = [f"world{w}_seed{s}" for w, s in sorted(replicates(proto))]
    with open(out / "scores.csv", "w") as f:
        f.write(
            ",".join(["label", *knob_cols, "score", *[f"score_{r}" for r in reps], *[f"kl_{r}" for r in reps]]) + "\n"
        )
        for t in table:
            f.write(
                ",".join(
                    str(x) for x in [t["label"], *[t.get(k, "") for k in knob_cols], t["score"], *t["scores"], *t["kl"]]
                )
                + "\n"
            )
    path = write_tuned(task, proto, chosen, table, conf_dir)
    lines = [
        f"<!-- Tuning `{task}`: written by the tuning command; the README quotes it verbatim -->",
        f"`python -m rlhf_bench.benchmarks.tuning {task}`: benchmark "
        f"`{proto['benchmark']}`, beta = {proto['beta']}, worlds (`task.seed`) {proto['worlds']} x seeds "
        f"{proto['seeds']}, criterion "
        f"`{proto['criterion']['name']}` over KL in [0, {proto['criterion']['kl_max']}] (gold-reward gain over SFT; "
        "higher is better).",
        "",
        *table_head(
            ["algorithm", "chosen setting", "score (mean over worlds and seeds)", "untuned default's score"], "llrl"
        ),
    ]
    for label, setting in chosen.items():
        rows = [t for t in table if t["label"] == label]
        best = max(rows, key=lambda t: t["score"])
        untuned = untuned_settings(label, list(setting))
        default = [t for t in rows if all(t[k] == v for k, v in untuned.items())]
        score = f"{default[0]['score']:.4f}" if default else "not in the grid"
        lines.append(f"| {label} | {_key(best)} | {best['score']:.4f} | {score} ({_key(untuned)}) |")
    (out / "tuning.md").write_text("\n".join(lines) + "\n")
    return path


def write_tuned(task: str, proto: dict, chosen: dict, table: list[dict], conf_dir: Path) -> Path:
    """``conf_dir/<task>/<option>.yaml`` for every tuned option and every variant of one (the settings of
    the option it extends), replacing the folder's files; ``conf_dir/<task>.yaml``, their provenance."""
    from ..plugins import algorithm_options, option_parent

    command = f"python -m rlhf_bench.benchmarks.tuning {task}"
    folder = conf_dir / task
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    settings = dict(chosen)
    for option in algorithm_options():
        if option_parent(option) in chosen and option not in chosen:
            settings[option] = chosen[option_parent(option)]
    for option, knobs in settings.items():
        base = option if option in chosen else option_parent(option)
        origin = "" if option == base else f"\n# (`{base}`'s: the option it extends)"
        scores = sorted((t for t in table if t["label"] == base), key=lambda t: -t["score"])
        header = (
            f"# Written by `{command}`: the settings chosen for `{option}`{origin},\n"
            f"# laid over the option by `tuned: {task}`. Every candidate's score (mean over the tuning worlds x\n"
            f"# seeds; results/tuning/{task}/scores.csv), best first:\n"
            + "".join(f"#   {_key(t)}: {t['score']:.6f}\n" for t in scores)
        )
        atomic_write_text(folder / f"{option}.yaml", header + yaml.safe_dump(knobs, sort_keys=True, width=120))
    doc = {
        "tuning": {
            "command": command,
            "benchmark": proto["benchmark"],
            "beta": proto["beta"],
            "worlds": proto["worlds"],
            "seeds": proto["seeds"],
            "criterion": proto["criterion"],
            "grids": proto["grids"],
        },
    }
    header = (
        f"# Written by `{command}` from conf/tuning/{task}.yaml; runs and scores in\n"
        f"# results/tuning/{task}/. The chosen settings are conf/tuned/{task}/<option>.yaml (tuned: {task}).\n"
    )
    path = conf_dir / f"{task}.yaml"
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False, width=120))
    return path


def _key(t: dict) -> str:
    return ",".join(f"{k}={t[k]}" for k in sorted(t) if k not in ("label", "score", "scores", "kl"))


def untuned_settings(label: str, knobs: list[str]) -> dict[str, Any]:
    """The knobs' values without a tuned file (the algorithm YAML's fallbacks)."""
    from .convergence import compose

    algo = compose([f"algorithm={label}"]).algorithm
    return {k: algo[k] for k in knobs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlhf_bench.benchmarks.tuning", description=__doc__.split("\n\n")[0])
    ap.add_argument("task", help="the task whose protocol conf/tuning/<task>.yaml is run")
    ap.add_argument("--out", default=None, help="results directory (default results/tuning/<task>)")
    ap.add_argument("--conf-dir", default=None, help="where <task>.yaml is written (default: the package's conf/tuned)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel runs")
    ap.add_argument("--score-only", action="store_true", help="score the runs already in --out without running")
    ap.add_argument("--algorithms", nargs="+", default=None, help="options to tune (default: every one that trains)")
    args = ap.parse_args(argv)
    proto = load_protocol(args.task)
    grids = option_grids(proto, args.algorithms)
    out = Path(args.out or f"results/tuning/{args.task}")
    runs_dir = out / "runs"
    if not args.score_only:
        for label, grid in grids.items():
            run_grid(proto, label, grid, runs_dir, args.jobs)
    runs = [score_run(d, proto["criterion"]["kl_max"]) for d in sorted(runs_dir.iterdir()) if (d / SUMMARY).is_file()]
    chosen, table = choose(proto, grids, runs)
    conf_dir = Path(args.conf_dir) if args.conf_dir else Path(str(files("rlhf_bench.conf").joinpath("tuned")))
    path = write_outputs(args.task, proto, chosen, table, out, conf_dir)
    print(f"tuned settings: {path.with_suffix('')}/, provenance: {path}")
    print(f"scores: {out / 'scores.csv'}")


if __name__ == "__main__":
    main()
