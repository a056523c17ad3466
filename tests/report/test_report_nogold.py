"""The report on runs without a gold reward (``task=hf`` with no gold judge): ``reward_gold`` is null in
every eval.jsonl row, in summary.json's ``final`` and in every sample, and summary.json says
``"gold_reward": false``. The report says in one sentence near the top that the gold columns are absent
and why, shows the proxy reward, labelled *proxy*, and writes no NaN or 0 in place of a gold value; in a
sweep that mixes such runs with runs that have a gold reward, the gold groups' numbers are unchanged.
Fast: synthetic run directories, as in test_report.py.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import pytest
from helpers.report_runs import make_sweep, read_csv

from rlhf_bench.benchmarks import report as rep

SENTENCE = (
    "its gold columns are absent because the task has no gold judge (set `task.judge.model` or "
    "`task.judge.fn` to get them)"
)
ALGOS = ("sft", "best_of_n", "ppo", "dpo", "p3o_v2")
CSVS = ("frontier.csv", "winrates.csv", "comparisons.csv")


def strip_gold(run_dir: Path) -> Path:
    """Rewrite a fabricated run as the trainer writes one of a task without a gold judge."""
    for name in ("eval.jsonl", "samples.jsonl"):
        rows = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
        (run_dir / name).write_text("".join(json.dumps({**r, "reward_gold": None}) + "\n" for r in rows))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["final"]["reward_gold"] = None
    summary["gold_reward"] = False
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def nogold_sweep(d: Path, **kw) -> Path:
    for run in make_sweep(d, algorithms=ALGOS, betas=(0.1, 0.5), seeds=(0, 1), task="hf", **kw):
        strip_gold(run)
    return d


def no_nan(text: str) -> bool:
    return re.search(r"\bnan\b", text, re.IGNORECASE) is None


def section(md: str, heading: str) -> str:
    """From ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    rest = md.split(heading, 1)[1]
    return heading + re.split(rf"\n#{{1,{len(level)}}} ", rest, maxsplit=1)[0]


@pytest.fixture()
def figures(monkeypatch):
    """The figures saved by the report, by file name."""
    from matplotlib.figure import Figure

    saved: dict[str, Figure] = {}
    real = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        saved[Path(path).name] = fig
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_report_without_gold_says_so_and_uses_the_proxy(tmp_path, figures):
    d = nogold_sweep(tmp_path / "sweep")
    with warnings.catch_warnings():
        warnings.simplefilter("error", rep.ReportWarning)  # a clean sweep without gold warns about nothing
        md = rep.build_report([d]).read_text()
    top = md.split("## What was run")[0]
    assert SENTENCE in top and "proxy reward" in top and md.count(SENTENCE) == 1
    assert no_nan(md), md
    for name in CSVS:
        assert no_nan((d / name).read_text()), name

    # the results table: no gold column, the proxy reward and the proxy judge's win rate vs SFT
    results = section(md, "### Task `hf`, learned reward model")
    header = next(line for line in results.splitlines() if line.startswith("| algorithm | β | worlds×seeds"))
    assert "gold" not in header and "| proxy reward |" in header and "win rate vs SFT (proxy)" in header
    assert "proxy reward only (no gold judge)" in results.splitlines()[0]
    assert "| algorithm | β | proxy judge [95% CI] | comparisons |" in results
    assert "gold judge [" not in results and "100.0%" in results  # ppo's samples beat SFT's on every prompt
    ppo = next(line for line in results.splitlines() if line.startswith("| ppo | 0.1 | 1×2 |"))
    cells = dict(zip(header.split(" | "), ppo.split(" | ")))
    assert cells["win rate vs SFT (proxy)"] == "100.0% ± 0.0"  # per seed, by the proxy judge

    # frontier.csv keeps an empty reward_gold column; the proxy values are copied
    rows = read_csv(d / "frontier.csv")
    assert rows and all(r["reward_gold"] == "" for r in rows)
    assert all(math.isfinite(float(r["reward_proxy"])) for r in rows)
    # win rates: the proxy judge only
    assert {r["judge"] for r in read_csv(d / "winrates.csv")} == {"proxy"}
    # comparisons on the proxy reward, said so; no claim checked on them
    gaps = read_csv(d / "comparisons.csv")
    assert gaps and {r["reward"] for r in gaps} == {"proxy"} and all(r["gap"] not in ("", "nan") for r in gaps)
    assert "### Task `hf`, learned reward model: proxy reward (no gold judge)" in md
    assert "## The papers' claims" not in md
    conv = section(md, "## Convergence")
    assert "its KL or proxy reward (no gold judge) changed" in conv and "gold reward" not in conv
    assert re.search(r"largest relative change: KL [0-9.]+%, proxy reward [0-9.]+%\.", conv)

    plots = section(md, "## Plots")
    assert "the proxy reward panel only" in plots and "proxy reward judge, for lack of a gold judge" in plots

    # the figures: the proxy panel alone, labelled proxy
    front = figures["frontier.png"]
    assert [ax.get_ylabel() for ax in front.axes] == ["proxy reward"]
    assert "proxy reward" in front.axes[0].get_title() and "no gold judge" in front._suptitle.get_text()
    win = figures["winrate.png"]
    assert "(proxy judge," in win._suptitle.get_text() and "gold" not in win._suptitle.get_text()
    assert any("proxy reward judge" in ax.get_ylabel() for ax in win.axes)  # the colour bar


def test_mixed_sweep_keeps_the_gold_group_unchanged(tmp_path, figures):
    gold, hf = tmp_path / "gold", tmp_path / "hf"
    make_sweep(gold, algorithms=ALGOS, betas=(0.1, 0.5), seeds=(0, 1))
    nogold_sweep(hf, start=100)
    alone = rep.build_report([gold], out_dir=tmp_path / "alone").read_text()
    mixed = rep.build_report([gold, hf], out_dir=tmp_path / "mixed").read_text()

    assert SENTENCE not in alone and mixed.count(SENTENCE) == 1
    assert "for task `hf`" in mixed.split("## What was run")[0]
    for heading in ("### Task `bandit`, learned reward model",):
        assert section(mixed.split("## Results")[1], heading) == section(alone.split("## Results")[1], heading)
        assert section(mixed.split("## Pairwise")[1], heading) == section(alone.split("## Pairwise")[1], heading)
    assert no_nan(mixed)
    bandit = section(mixed.split("## Results")[1], "### Task `bandit`, learned reward model")
    assert "| KL | gold reward | proxy reward |" in bandit and "win rate vs SFT (gold)" in bandit
    assert "| algorithm | β | gold judge [95% CI] | proxy judge [95% CI] | comparisons |" in bandit
    assert "gold reward (the proxy reward for runs without a gold judge) changed" in section(mixed, "## Convergence")
    for name in CSVS:
        text = (tmp_path / "mixed" / name).read_text()
        assert no_nan(text), name
        rows_mixed = [r for r in read_csv(tmp_path / "mixed" / name) if r["task"] == "bandit"]
        rows_alone = read_csv(tmp_path / "alone" / name)
        if name == "comparisons.csv":  # the mixed file says which reward each gap is on
            assert {r.pop("reward") for r in rows_mixed} == {"gold"}
            assert "reward" not in rows_alone[0]
        assert rows_mixed == rows_alone, name
    hf_rows = [r for r in read_csv(tmp_path / "mixed" / "frontier.csv") if r["task"] == "hf"]
    assert hf_rows and all(r["reward_gold"] == "" for r in hf_rows)
    assert {(r["task"], r["judge"]) for r in read_csv(tmp_path / "mixed" / "winrates.csv")} == {
        ("bandit", "gold"),
        ("bandit", "proxy"),
        ("hf", "proxy"),
    }
    # the claims are checked on the gold group only
    claims = section(mixed, "## The papers' claims")
    assert "| bandit |" in claims and "| hf |" not in claims and "not checked on `hf`" in claims
    assert section(alone, "## The papers' claims").split("\n", 3)[3] in claims

    # frontier.png: both columns; the hf row's gold panel says why it is empty
    front = figures["frontier.png"]
    labels = [ax.get_ylabel() if ax.axison else "off" for ax in front.axes]
    assert labels == ["gold reward", "proxy reward", "off", "proxy reward"]
    assert "no gold judge" in " ".join(t.get_text() for t in front.axes[2].texts)
    win = figures["winrate.png"]
    assert "hf: proxy, no gold judge" in win._suptitle.get_text()
    assert any("proxy judge" in ax.get_title() and ax.get_title().startswith("hf") for ax in win.axes)


def test_group_with_and_without_gold_is_reported_on_the_proxy(tmp_path):
    d = tmp_path / "sweep"
    runs = make_sweep(d, algorithms=("sft", "ppo"), betas=(0.1,), seeds=(0, 1), task="hf")
    strip_gold(runs[-1])  # one ppo seed had no gold judge
    with pytest.warns(rep.ReportWarning, match="hf/learned: 1 of 4 runs have no gold reward"):
        md = rep.build_report([d]).read_text()
    assert SENTENCE in md and no_nan(md)
    assert {r["judge"] for r in read_csv(d / "winrates.csv")} == {"proxy"}


@pytest.mark.parametrize(
    "flag, value, gold", [(None, 0.5, True), (True, 0.5, True), (False, 0.0, False), (None, None, False)]
)
def test_a_run_has_gold_by_its_flag_and_its_values(tmp_path, flag, value, gold):
    """``"gold_reward": false`` wins over any value written in the gold fields (a 0.0 placeholder is not a
    gold reward), and a run whose gold values are all null has none either; older runs lack the flag."""
    d = tmp_path / "sweep"
    runs = make_sweep(d, algorithms=("sft", "ppo"), betas=(0.1,), seeds=(0, 1), task="hf")
    for run in runs:
        for name in ("eval.jsonl", "samples.jsonl"):
            rows = [json.loads(line) for line in (run / name).read_text().splitlines()]
            (run / name).write_text("".join(json.dumps({**r, "reward_gold": value}) + "\n" for r in rows))
        summary = json.loads((run / "summary.json").read_text())
        summary["final"]["reward_gold"] = value
        if flag is not None:
            summary["gold_reward"] = flag
        (run / "summary.json").write_text(json.dumps(summary))
    loaded, _ = rep.load_runs([d])
    assert [r.has_gold for r in loaded] == [gold] * len(loaded)
    md = rep.build_report([d]).read_text()
    assert (SENTENCE in md) is not gold
    assert ({r["judge"] for r in read_csv(d / "winrates.csv")} == {"proxy"}) is not gold
