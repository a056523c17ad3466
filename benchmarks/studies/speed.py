"""Side by side: the harness's speed against the field's own code, on one model, device and setting.

``python -m rlhf_bench.benchmarks.speed MODEL_DIR [--device auto] [--dtype bfloat16] [--out DIR]``

- **Sampling**: the harness's sampler (:func:`~rlhf_bench.benchmarks.rollout.sample_responses`) against
  ``model.generate(do_sample=True, top_k=0)``: the same prompts (random token ids of
  ``--prompt-tokens``), ``--prompts x --responses`` sequences of exactly ``--new-tokens`` tokens, full
  vocabulary, temperature 1; the two interleaved, ``--repeats`` times.
- **A training step** of each algorithm (``--algorithms``, default every trained one), through
  ``rlhf-bench`` on ``task=hf`` with this model as the SFT base, a function judge, ``--prompts`` prompts a
  step, the algorithm's default updates (4 epochs x 2 minibatches) and ``--beta``: the median of the
  steps' ``time/step_seconds`` after the first. Beside it, trl's trainer for the same algorithm where trl
  has one (the algorithm's ``trl_peer``, timed by :data:`.speed_peers.TRL_PEERS`): ``GRPOTrainer`` and ``RLOOTrainer``
  with the same prompts, 2 generations a
  prompt, the same new tokens, beta and 8 updates per generation (2 steps per generation x 4
  iterations), timed per generation cycle; ``DPOTrainer`` (precomputed reference log-probs) per update
  of ``--prompts / 2`` pairs, against the harness's DPO step divided by its 8 updates.

Writes ``speed.csv`` (every measurement) and ``speed.md`` (medians and ratios) into ``--out``. Wall times
on CUDA are taken after ``torch.cuda.synchronize``. The machine, device and versions head the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..formatting import MISSING, number, table_head
from ..rollout import sample_responses
from ..runfiles import SUMMARY, TIME
from ..utils import make_generator, package_versions
from .speed_peers import peer_of
from .speed_setup import COMPILED, UPDATES, _timed, random_model, random_prompts


# ------------------------------------------------------------------------------------------ sampling
def time_sampling(model, tokenizer, device: torch.device, a) -> list[dict]:
    """The harness's sampler and ``generate``, interleaved: one row per repeat and side."""
    prompts = [p for p in random_prompts(tokenizer, a.prompts, a.prompt_tokens) for _ in range(a.responses)]
    ids = torch.tensor(prompts, device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_tokens = len(prompts) * a.new_tokens

    def harness(compiled: bool = False):
        # eos -1: no row ends early, every sequence has exactly new_tokens tokens, like generate below
        out = sample_responses(
            model,
            prompts,
            eos_id=-1,
            pad_id=pad,
            max_new_tokens=a.new_tokens,
            generator=make_generator(0, device),
            compiled=compiled,
        )
        assert out.response.shape == (len(prompts), a.new_tokens)

    def generate():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=a.new_tokens,
            min_new_tokens=a.new_tokens,
            pad_token_id=pad,
        )
        assert out.shape == (len(prompts), a.prompt_tokens + a.new_tokens)

    sides = [("rlhf-bench", harness), ("generate", generate)]
    rows = []
    with torch.no_grad():
        if not a.no_compiled:
            sides.insert(1, (COMPILED, lambda: harness(compiled=True)))
            first = _timed(sides[1][1], device)  # compiles, for this batch's shapes
            rows.append({"measurement": "compilation", "who": COMPILED, "repeat": 0, "seconds": first})
        for _, fn in sides:
            fn()  # warm-up (allocator, kernels)
        for r in range(a.repeats):
            for who, fn in sides:
                s = _timed(fn, device)
                rows.append(
                    {
                        "measurement": "sampling",
                        "who": who,
                        "repeat": r,
                        "seconds": s,
                        "tokens_per_second": n_tokens / s,
                    }
                )
    return rows


# ------------------------------------------------------------------------------- the harness's steps
def harness_steps(a, workdir: Path) -> list[dict]:
    """One ``rlhf-bench -m`` over the algorithms; each run's step times after the first."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    texts = [tok.decode(p) for p in random_prompts(tok, 4 * a.prompts, a.prompt_tokens, seed=1)]
    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    sweep = workdir / "runs"
    cmd = [
        sys.executable,
        "-m",
        "rlhf_bench.benchmarks.cli",
        "-m",
        "task=hf",
        "model=pretrained",
        f"model.pretrained={a.model}",
        f"model.dtype={a.dtype}",
        f"device={a.device}",
        f"task.prompts={prompts}",
        "task.judge.fn=rlhf_bench.benchmarks.studies.speed_setup:length_judge",
        f"task.steps={a.steps}",
        f"task.eval_every={a.steps}",
        "task.n_eval_prompts=8",
        f"task.prompts_per_step={a.prompts}",
        f"task.max_new_tokens={a.new_tokens}",
        f"task.max_prompt_tokens={a.prompt_tokens}",
        "task.preferences.n_prompts=16",
        "reward_model.epochs=1",
        f"algorithm={','.join(a.algorithms)}",
        f"algorithm.beta={a.beta}",
        "checkpoint.every=0",
        "progress=false",
        f"hydra.sweep.dir={sweep}",
        f"threads={torch.get_num_threads()}",  # the threads trl's trainers and generate get in this process
        f"cache_dir={workdir / 'cache'}",
        "~hydra.callbacks.report",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rlhf-bench speed: the harness's runs failed:\n{done.stderr[-2000:]}")
    runs = sorted(sweep.glob(f"*/{SUMMARY}"))
    if len(runs) != len(a.algorithms):
        logs = "".join(p.read_text()[-600:] for p in sweep.glob("*/cli.log"))
        raise SystemExit(f"rlhf-bench speed: {len(runs)} of the harness's {len(a.algorithms)} runs finished:\n{logs}")
    rows = []
    for summary in runs:
        label = json.loads(summary.read_text())["config"]["algorithm"]["label"]
        steps = [json.loads(line) for line in open(summary.parent / TIME)]
        steps = [r["time/step_seconds"] for r in steps if "time/step_seconds" in r][1:]  # the first warms up
        rows += [
            {"measurement": f"step {label}", "who": "rlhf-bench", "repeat": i, "seconds": s}
            for i, s in enumerate(steps)
        ]
    return rows


# ------------------------------------------------------------------------------------------ outputs
def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _cell(xs: Sequence[float], fmt: str) -> str:
    if not xs:
        return MISSING
    return f"{_median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}}, n={len(xs)})"


def summary_rows(rows: list[dict]) -> list[dict]:
    """One row per measurement: the harness's median, the peer's, and the harness's time over the peer's."""
    out = []
    sampling = {
        who: [r["tokens_per_second"] for r in rows if r["measurement"] == "sampling" and r["who"] == who]
        for who in ("rlhf-bench", COMPILED, "generate")
    }
    for who, what in (("rlhf-bench", "sampling"), (COMPILED, "sampling, compiled decode step")):
        if sampling[who]:
            out.append(
                {
                    "measurement": f"{what} (tokens/s)",
                    "rlhf-bench": _cell(sampling[who], ",.0f"),
                    "peer": "model.generate",
                    "peer value": _cell(sampling["generate"], ",.0f"),
                    "time ratio": _median(sampling["generate"]) / _median(sampling[who]),
                }
            )
    compile_s = [r["seconds"] for r in rows if r["measurement"] == "compilation"]
    if compile_s:
        out.append(
            {
                "measurement": "compiling the decode step, first batch (s)",
                "rlhf-bench": _cell(compile_s, ".1f"),
                "peer": "",
                "peer value": MISSING,
                "time ratio": float("nan"),
            }
        )
    for m in dict.fromkeys(r["measurement"] for r in rows if r["measurement"].startswith("step ")):
        ours = [r["seconds"] for r in rows if r["measurement"] == m and r["who"] == "rlhf-bench"]
        peer = [r for r in rows if r["measurement"] == m and r["who"] != "rlhf-bench"]
        theirs = [r["seconds"] * r.get("units", 1) for r in peer]
        out.append(
            {
                "measurement": f"{m} (s)",
                "rlhf-bench": _cell(ours, ".3f"),
                "peer": peer[0]["who"] if peer else "none in trl",
                "peer value": _cell(theirs, ".3f"),
                "time ratio": _median(ours) / _median(theirs) if theirs else float("nan"),
            }
        )
    return out


def write(rows: list[dict], a, device: torch.device, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["measurement", "who", "repeat", "seconds", "tokens_per_second", "units"])
        w.writeheader()
        w.writerows(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    versions = package_versions()
    L = [
        # a comment: the README quotes the table without it, so the quote carries no heading
        "<!-- Speed, side by side: written by rlhf_bench.benchmarks.speed -->",
        f"`python -m rlhf_bench.benchmarks.speed {' '.join(sys.argv[1:]) if a.argv is None else ' '.join(a.argv)}`",
        "",
        f"Device: {device} ({name}), {a.dtype}, torch threads {torch.get_num_threads()}; "
        f"torch {versions.get('torch')}, transformers {versions.get('transformers')}, trl {versions.get('trl')}. "
        f"Model {a.described}; {a.prompts} prompts x {a.responses} responses of {a.new_tokens} new tokens after "
        f"{a.prompt_tokens} prompt tokens; beta {a.beta}; {UPDATES} updates per step. Medians (range, count); "
        "the time ratio is the harness's time over the peer's for the same work (below 1: the harness is faster; "
        "a DPO step holds 8 of trl's updates).",
        "",
        *table_head(["measurement", "rlhf-bench", "peer", "peer's", "time ratio"], "llllr"),
    ]
    for r in summary_rows(rows):
        ratio = number(r["time ratio"], 2)
        L.append(f"| {r['measurement']} | {r['rlhf-bench']} | {r['peer']} | {r['peer value']} | {ratio} |")
    (out / "speed.md").write_text("\n".join(L) + "\n")
    return out / "speed.md"


def trained_algorithms() -> list[str]:
    """The ``algorithm`` options of the installed plugins whose algorithm trains (``data`` online or offline),
    variants included, sorted."""
    from ..plugins import algorithm_options, installed, installed_modules

    modules = installed_modules()
    return [o for o, spec in algorithm_options().items() if spec.cls.data != "none" and installed(spec, modules)]


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlhf_bench.benchmarks.speed", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "model",
        help="a Hugging Face causal LM directory (with its tokenizer), or 'random': a random "
        "GPT-2 of --vocab, --layers, --dims and --heads, written to OUT/work/model",
    )
    ap.add_argument("--vocab", type=int, default=50257, help="random model: vocabulary (GPT-2's by default)")
    ap.add_argument("--layers", type=int, default=2, help="random model: layers")
    ap.add_argument("--dims", type=int, default=64, help="random model: hidden size")
    ap.add_argument("--heads", type=int, default=2, help="random model: attention heads")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--prompts", type=int, default=64, help="prompts per step (and sampled prompts)")
    ap.add_argument("--responses", type=int, default=2, help="responses per prompt")
    ap.add_argument("--new-tokens", type=int, default=53)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="sampling measurements per side")
    ap.add_argument("--steps", type=int, default=4, help="training steps per algorithm (the first is left out)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--algorithms", default=None, help="comma-separated (default: every trained algorithm)")
    ap.add_argument("--no-steps", action="store_true", help="sampling only")
    ap.add_argument("--no-compiled", action="store_true", help="without the compiled decode step's sampling")
    ap.add_argument("--no-peers", action="store_true", help="the harness's steps only, not trl's")
    ap.add_argument("--out", type=Path, default=Path("speed"))
    a = ap.parse_args(argv)
    a.argv = list(argv) if argv is not None else None
    a.described = f"`{a.model}`"
    known = trained_algorithms()
    a.algorithms = a.algorithms.split(",") if a.algorithms else known
    unknown = sorted(set(a.algorithms) - set(known))
    if unknown:
        raise SystemExit(f"rlhf-bench speed: unknown algorithm(s) {unknown}; known: {', '.join(known)}")
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(a.device)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if a.model == "random":
        a.model = str(random_model(a.out / "work" / "model", a.vocab, a.layers, a.dims, a.heads))
        a.described = f"a random GPT-2 (n_layer {a.layers}, n_embd {a.dims}, n_head {a.heads}, vocabulary {a.vocab:,})"

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).to(device).eval()
    rows = time_sampling(model, tok, device, a)
    del model
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not a.no_steps:
        rows += harness_steps(a, work)
        for label in a.algorithms:
            peer = None if a.no_peers else peer_of(label)
            if peer is not None:
                who, seconds, units = peer(a, device, work)
                rows += [
                    {"measurement": f"step {label}", "who": who, "repeat": i, "seconds": s, "units": units}
                    for i, s in enumerate(seconds)
                ]
    print(f"speed: {write(rows, a, device, a.out)}")


if __name__ == "__main__":
    main()
