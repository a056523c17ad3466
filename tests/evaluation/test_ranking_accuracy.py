"""Ranking accuracy on the held-out preference pairs (Chen et al. 2024, arXiv 2405.19534).

The evaluation's ``ranking_accuracy`` is the share of the held-out pairs (every ranked list expanded
into its C(K,2) pairs, chosen = ranked higher) a policy ranks correctly by ``log pi/pi_ref``, ties
counting 1/2; ``ranking_accuracy_gold`` the same against the gold order, pairs with equal or unknown
gold left out. Checked: the reference scores exactly 0.5; a tilt toward the chosen responses scores
1.0; ties; the code against a direct transcription of the definition; best-of-n's exact law; the
cached reference row; a bandit run writes the columns and the report (tables, frontier.csv) carries
them, also beside run directories written before the columns existed.
"""

from __future__ import annotations

import csv
import json
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from rlhf_bench.algorithms.baselines import BestOfNPolicy
from rlhf_bench.benchmarks import report as rep
from rlhf_bench.benchmarks.data import expand_pairs
from rlhf_bench.benchmarks.evaluation import Evaluator, LMPolicy, ResponseTable
from rlhf_bench.benchmarks.evaluation.ranking import HeldoutPairs, ranking_accuracies, ranking_accuracy
from rlhf_bench.benchmarks.training import runs

COLUMNS = ("ranking_accuracy", "ranking_accuracy_gold")


# ------------------------------------------------------------------------------------- helpers
class _Tilted:
    """pi_ref tilted by a score per (prompt, response): ``pi ∝ pi_ref exp(s)`` over every enumerated
    response of the bandit, its log-probs read from the exact table (a policy known exactly)."""

    def __init__(self, ref, score):
        self.ref, self.score = ref, score  # score(prompt ids, response ids) -> float

    def sample(self, engine, prompts, generator):
        return engine.sample(self.ref, prompts, generator)

    def enumerated_logprobs(self, engine, table):
        return table.ref_logp

    def sequence_logprobs(self, engine, pairs):
        table = ResponseTable.build(engine, pairs.prompts)
        s = torch.tensor([[self.score(p, r) for r in table.responses] for p in pairs.prompts])
        tilted = torch.log_softmax(table.ref_logp.double() + s, -1)  # (P, N)
        rows, cols = pairs.table_index(engine.task)
        return tilted[rows, cols]


def _hand_built(task, n_lists: int = 6, k: int = 4, seed: int = 0) -> datasets.Dataset:
    """Ranked lists of distinct bandit responses (texts, as the preference stage stores them), the
    ranking random, the gold in the label order with a tie and an unknown value in some lists."""
    rng = random.Random(seed)
    responses = task.all_responses()
    rows = {"prompt": [], "responses": [], "ranking": [], "gold": []}
    for i in range(n_lists):
        picks = rng.sample(range(len(responses)), k)
        order = list(range(k))
        rng.shuffle(order)
        gold = [0.0] * k
        for pos, j in enumerate(order):  # gold agrees with the ranking
            gold[j] = float(k - pos)
        if i % 3 == 1:
            gold[order[1]] = gold[order[0]]  # a gold tie between the two best
        if i % 3 == 2:
            gold[order[-1]] = None  # an unknown gold value
        rows["prompt"].append(task.decode_prompt(task.eval_prompts[i]))
        rows["responses"].append([task.decode_response(responses[j]) for j in picks])
        rows["ranking"].append(order)
        rows["gold"].append(gold)
    return datasets.Dataset.from_dict(rows)


def _rank_score(ds: datasets.Dataset, task, sign: float = 1.0):
    """A score per (prompt, response) that grows with the ranking label of ``ds`` (``sign=-1``: the reverse)."""
    score = {}
    for p, rs, order in zip(ds["prompt"], ds["responses"], ds["ranking"]):
        for pos, j in enumerate(order):
            score[(tuple(task.encode_prompt(p)), tuple(task.encode_response(rs[j])))] = sign * (len(order) - pos)
    return lambda p, r: score.get((tuple(p), tuple(r)), 0.0)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------- the measure
def test_ties_count_half():
    assert ranking_accuracy(torch.tensor([1.0, 0.0, -1.0, 0.0])) == 0.5
    assert ranking_accuracy(torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(2 / 3)
    assert ranking_accuracy(torch.zeros(7)) == 0.5  # exactly, counted in integers
    assert ranking_accuracy(torch.tensor([-1.0, float("nan")])) == 0.0  # NaN is not a correct ranking
    assert ranking_accuracy(torch.zeros(0)) is None
    # items 0..2, pairs (0,1) (0,2) (1,2): log-ratios 1, 1, 0 -> tie, win, win
    out = ranking_accuracies(
        torch.tensor([1.0, 1.0, 0.0]),
        torch.tensor([0, 0, 1]),
        torch.tensor([1, 2, 2]),
        torch.tensor([3.0, 3.0, 2.0]),
        torch.tensor([2.0, 1.0, 1.0]),
    )
    assert out == {"ranking_accuracy": 2.5 / 3, "ranking_accuracy_gold": 2.5 / 3}


def test_gold_variant_leaves_out_gold_ties_and_unknown_gold():
    lr = torch.tensor([0.0, 1.0, 2.0, 3.0])
    chosen, rejected = torch.tensor([0, 0, 1, 2, 3]), torch.tensor([1, 2, 2, 3, 0])
    nan = math.nan
    gc = torch.tensor([1.0, 5.0, 2.0, nan, 0.0], dtype=torch.float64)
    gr = torch.tensor([1.0, 4.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    # pair 0: gold tie (out); pair 3: unknown (out); pair 1: gold says 0 > 2, lr says 2 > 0: wrong;
    # pair 2: gold says 2 > 1, lr agrees: right; pair 4: gold says 0 > 3, lr says 3 > 0: wrong
    out = ranking_accuracies(lr, chosen, rejected, gc, gr)
    assert out["ranking_accuracy_gold"] == 1 / 3
    assert out["ranking_accuracy"] == 1 / 5  # the labels: pair 4 only (3 > 0) right
    none = ranking_accuracies(lr, chosen, rejected, torch.full((5,), nan, dtype=torch.float64), gr)
    assert none["ranking_accuracy_gold"] is None  # no gold: null
    ties = ranking_accuracies(lr, chosen, rejected, gr, gr)
    assert ties["ranking_accuracy_gold"] is None  # every pair a gold tie: no pair to count


class _TextTask:
    """encode_prompt / encode_response of a task whose texts are space-separated integers."""

    @staticmethod
    def encode_prompt(text):
        return [int(t) for t in text.split()]

    encode_response = encode_prompt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_direct_transcription_of_the_definition(seed):
    """Random ranked lists (repeated prompts, responses repeated within a list, K varying), random
    log-prob tables on a coarse grid (so that log-ratio ties occur) and gold with ties and unknowns:
    the pairs are expand_pairs', and the accuracies those of the definition, pair by pair."""
    rng = random.Random(seed)
    rows = {"prompt": [], "responses": [], "ranking": [], "gold": []}
    for _ in range(40):
        k = rng.randint(2, 5)
        rows["prompt"].append(" ".join(str(rng.randint(1, 4)) for _ in range(2)))
        rows["responses"].append([" ".join(str(rng.randint(1, 3)) for _ in range(2)) for _ in range(k)])
        order = list(range(k))
        rng.shuffle(order)
        rows["ranking"].append(order)
        rows["gold"].append([None if rng.random() < 0.15 else float(rng.randint(0, 3)) for _ in range(k)])
    ds = datasets.Dataset.from_dict(rows)
    logp, ref = {}, {}
    for p, rs in zip(ds["prompt"], ds["responses"]):
        for r in rs:
            logp.setdefault((p, r), rng.randint(-6, 0) / 2)
            ref.setdefault((p, r), rng.randint(-6, 0) / 2)

    def lr(p, r):
        return logp[(p, r)] - ref[(p, r)]

    def score(a, b):  # a is the preferred one
        return 1.0 if lr(*a) > lr(*b) else 0.5 if lr(*a) == lr(*b) else 0.0

    pairs = expand_pairs(ds)
    labels = [score((p, c), (p, r)) for p, c, r in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"])]
    gold_scores = []
    for p, rs, g in zip(ds["prompt"], ds["responses"], ds["gold"]):
        for i in range(len(rs)):
            for j in range(i + 1, len(rs)):
                if g[i] is None or g[j] is None or g[i] == g[j]:
                    continue
                w, lo = (i, j) if g[i] > g[j] else (j, i)
                gold_scores.append(score((p, rs[w]), (p, rs[lo])))

    held = HeldoutPairs.from_lists(_TextTask(), ds)
    assert len(held) == len(pairs)
    assert [held.responses[i] for i in held.chosen] == [_TextTask.encode_response(c) for c in pairs["chosen"]]
    items = [
        (" ".join(map(str, held.prompts[q])), " ".join(map(str, r))) for q, r in zip(held.item_prompt, held.responses)
    ]
    assert len(set(items)) == len(items)  # each distinct (prompt, response) once
    held.ref_logp = torch.tensor([ref[it] for it in items])
    out = held.accuracies(torch.tensor([logp[it] for it in items]))
    assert out["ranking_accuracy"] == pytest.approx(sum(labels) / len(labels), abs=1e-12)
    assert out["ranking_accuracy_gold"] == pytest.approx(sum(gold_scores) / len(gold_scores), abs=1e-12)
    assert 0 < labels.count(0.5) < len(labels)  # ties did occur


# ------------------------------------------------------------------------ the bandit's evaluation
@pytest.fixture(scope="module")
def heldout_evaluator(bandit):
    """Evaluator of the small bandit with the shared held-out preference pairs (no cache)."""
    return Evaluator(
        bandit.engine,
        bandit.task.eval_prompts[:16],
        seed=bandit.groups["task"].eval_seed,
        heldout=bandit.artifacts.preferences("heldout"),
    )


def test_reference_policy_scores_exactly_half(bandit, heldout_evaluator):
    """pi = pi_ref: every log-ratio is 0, every pair a tie: exactly 0.5 against the labels and the
    gold order; the same for a fresh copy of the SFT base (the trainer's policy at step 0)."""
    ev = heldout_evaluator
    assert len(ev.heldout) == len(expand_pairs(bandit.artifacts.preferences("heldout")))
    for policy in (LMPolicy(bandit.ref), LMPolicy(bandit.policy().eval())):
        row, _ = ev.evaluate(policy, 0)
        assert (row["ranking_accuracy"], row["ranking_accuracy_gold"]) == (0.5, 0.5)
    row, _ = ev.evaluate_reference(LMPolicy(bandit.policy().eval()), 0)
    assert (row["ranking_accuracy"], row["ranking_accuracy_gold"]) == (0.5, 0.5)


def test_policy_tilted_toward_the_chosen_ranks_every_pair(bandit):
    """pi_ref tilted toward the responses ranked higher (a real distribution over the bandit's
    responses) ranks every pair of a hand-built set right: 1.0; tilted the other way: 0.0. The gold
    order (the labels', with a tie and an unknown value left out) gives the same."""
    task, engine = bandit.task, bandit.engine
    ds = _hand_built(task)
    ev = Evaluator(engine, task.eval_prompts[:8], seed=0, heldout=ds)
    assert len(ev.heldout) == 6 * 6
    row, _ = ev.evaluate(_Tilted(bandit.ref, _rank_score(ds, task)), 1)
    assert (row["ranking_accuracy"], row["ranking_accuracy_gold"]) == (1.0, 1.0)
    row, _ = ev.evaluate(_Tilted(bandit.ref, _rank_score(ds, task, -1.0)), 1)
    assert (row["ranking_accuracy"], row["ranking_accuracy_gold"]) == (0.0, 0.0)


def test_best_of_n_ranks_by_its_exact_law(bandit, heldout_evaluator):
    """Best-of-n's log-ratio to pi_ref increases with the reward it picks by, so it ranks the held-out
    pairs as the proxy reward does; off enumerable tasks it has no sequence law: null columns. A
    policy without ``sequence_logprobs`` gets null columns too."""
    ev, task = heldout_evaluator, bandit.task
    held = ev.heldout
    row, _ = ev.evaluate(BestOfNPolicy(bandit.ref, 4), 0)
    table = held.response_table()
    rows, cols = held.table_index(task)
    proxy = table.proxy[rows, cols].double()
    by_reward = held.accuracies(held.ref_logp.double() + proxy)  # log-ratio = proxy reward
    assert row["ranking_accuracy"] == by_reward["ranking_accuracy"]
    assert row["ranking_accuracy_gold"] == by_reward["ranking_accuracy_gold"]
    assert row["ranking_accuracy"] != 0.5
    one, _ = ev.evaluate(BestOfNPolicy(bandit.ref, 1), 0)  # best of 1 is pi_ref
    assert (one["ranking_accuracy"], one["ranking_accuracy_gold"]) == (0.5, 0.5)

    not_enumerable = SimpleNamespace(task=SimpleNamespace(enumerable=False))
    assert BestOfNPolicy(bandit.ref, 4).sequence_logprobs(not_enumerable, held) is None

    class NoLogprobs:
        def sample(self, engine, prompts, generator):
            return engine.sample(bandit.ref, prompts, generator)

        def enumerated_logprobs(self, engine, table):
            return table.ref_logp

    row, _ = ev.evaluate(NoLogprobs(), 0)
    assert (row["ranking_accuracy"], row["ranking_accuracy_gold"]) == (None, None)


def test_the_cached_reference_row_carries_the_columns(bandit, tmp_path):
    """The step-0 evaluation stored beside the reward model has the columns (0.5), is served again,
    and a store written without a held-out set (or by an older version) is not reused for one."""
    task = bandit.task
    heldout = bandit.artifacts.preferences("heldout")
    plain = Evaluator(bandit.engine, task.eval_prompts[:8], seed=5, cache_dir=tmp_path)
    row, _ = plain.evaluate_reference(LMPolicy(bandit.ref), 0)
    assert (row["ranking_accuracy"], row["ranking_accuracy_gold"]) == (None, None)
    ev = Evaluator(bandit.engine, task.eval_prompts[:8], seed=5, cache_dir=tmp_path, heldout=heldout)
    first, _ = ev.evaluate_reference(LMPolicy(bandit.ref), 0)
    again, _ = ev.evaluate_reference(LMPolicy(bandit.ref), 3)
    assert (first["ranking_accuracy"], first["ranking_accuracy_gold"]) == (0.5, 0.5)
    assert {**first, "step": 3} == again
    assert len(list(tmp_path.glob("eval_reference-*.json"))) == 2
    assert len(list(tmp_path.glob("heldout_ref_logp-*.pt"))) == 1
    # the reference log-probs are stored once and equal a fresh computation
    fresh = Evaluator(bandit.engine, task.eval_prompts[:8], seed=5, heldout=heldout)
    assert torch.equal(fresh.heldout.ref_logp, ev.heldout.ref_logp)


# ------------------------------------------------------------------------ runs and the report
def _strip_columns(run_dir: Path, seed: int) -> None:
    """Make ``run_dir`` look like one written before the columns existed (and give it another seed)."""
    rows = _read_jsonl(run_dir / "eval.jsonl")
    (run_dir / "eval.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k not in COLUMNS}) + "\n" for r in rows)
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["final"] = {k: v for k, v in summary["final"].items() if k not in COLUMNS}
    summary["seed"] = seed
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_bandit_runs_write_the_columns_and_the_report_carries_them(bandit, run_config, tmp_path):
    sweep = tmp_path / "sweep"
    for name, overrides in (
        ("dpo", ["algorithm=dpo", "task.steps=4", "task.eval_every=2"]),
        ("sft", ["algorithm=sft"]),
        ("best_of_n", ["algorithm=best_of_n", "algorithm.n=4"]),
    ):
        runs.run(run_config(bandit, *overrides), sweep / name)
    dpo = _read_jsonl(sweep / "dpo" / "eval.jsonl")
    assert [r["step"] for r in dpo] == [0, 2, 4]
    for r in dpo:
        assert 0.0 <= r["ranking_accuracy"] <= 1.0 and 0.0 <= r["ranking_accuracy_gold"] <= 1.0
    assert (dpo[0]["ranking_accuracy"], dpo[0]["ranking_accuracy_gold"]) == (0.5, 0.5)  # step 0: the SFT base
    assert dpo[-1]["ranking_accuracy"] != 0.5  # trained on the preference data: it has moved
    sft = _read_jsonl(sweep / "sft" / "eval.jsonl")
    assert [(r["ranking_accuracy"], r["ranking_accuracy_gold"]) for r in sft] == [(0.5, 0.5)]
    bon = _read_jsonl(sweep / "best_of_n" / "eval.jsonl")[-1]
    assert bon["ranking_accuracy"] is not None and bon["ranking_accuracy"] != 0.5
    summary = json.loads((sweep / "dpo" / "summary.json").read_text())
    assert summary["final"]["ranking_accuracy"] == dpo[-1]["ranking_accuracy"]

    md = rep.build_report([sweep]).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| algorithm | β | worlds×seeds"))
    assert "| ranking accuracy | ranking accuracy (gold) |" in header
    names = header.strip("| ").split(" | ")
    for alg, final in (("sft", sft[-1]), ("dpo", dpo[-1]), ("best_of_n", bon)):
        line = next(line for line in md.splitlines() if line.startswith(f"| {alg} |"))
        cells = dict(zip(names, line.strip("| ").split(" | ")))
        assert cells["ranking accuracy"] == f"{final['ranking_accuracy']:.3f}"  # one seed: the value
        assert cells["ranking accuracy (gold)"] == f"{final['ranking_accuracy_gold']:.3f}"
    assert "Ranking accuracy (Chen et al. 2024)" in md
    rows = _read_csv(sweep / "frontier.csv")
    assert list(rows[0])[-2:] == list(COLUMNS)
    got = {(r["algorithm"], int(r["step"])): r for r in rows}
    for r in dpo:
        assert float(got[("dpo", r["step"])]["ranking_accuracy"]) == r["ranking_accuracy"]
        assert float(got[("dpo", r["step"])]["ranking_accuracy_gold"]) == r["ranking_accuracy_gold"]
    assert float(got[("sft", 0)]["ranking_accuracy"]) == 0.5

    # a run directory written before the columns existed, beside the others: still reported
    shutil.copytree(sweep / "dpo", sweep / "dpo_old")
    _strip_columns(sweep / "dpo_old", seed=1)
    md = rep.build_report([sweep]).read_text()
    line = next(line for line in md.splitlines() if line.startswith("| dpo |"))
    cells = dict(zip(names, line.strip("| ").split(" | ")))
    assert cells["worlds×seeds"] == "1×2" and cells["ranking accuracy"] == f"{dpo[-1]['ranking_accuracy']:.3f} (n=1)"
    old = [r for r in _read_csv(sweep / "frontier.csv") if r["algorithm"] == "dpo" and r["seed"] == "1"]
    assert len(old) == 3 and all(r["ranking_accuracy"] == r["ranking_accuracy_gold"] == "" for r in old)

    # only old run directories: no ranking column, empty frontier.csv cells, no crash
    only_old = tmp_path / "old"
    only_old.mkdir()
    shutil.copytree(sweep / "dpo_old", only_old / "dpo_old")
    md = rep.build_report([only_old]).read_text()
    assert "ranking accuracy" not in md and "Ranking accuracy" not in md
    rows = _read_csv(only_old / "frontier.csv")
    assert rows and all(r["ranking_accuracy"] == "" for r in rows)
