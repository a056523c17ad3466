"""Running the ``rlhf-bench`` console script from tests, on small shared stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Small shared stages for the CLI runs (n_eval_prompts left at its default of 200).
SMALL = [
    "task=bandit",
    "task.n_sft_demos=1000",
    "task.sft.epochs=1",
    "task.preferences.n_prompts=100",
    "reward_model.epochs=1",
    "progress=false",
    "threads=1",
]


def rlhf_bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed console script (falls back to ``python -m rlhf_bench.benchmarks.cli``)."""
    exe = Path(sys.executable).with_name("rlhf-bench")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rlhf_bench.benchmarks.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
