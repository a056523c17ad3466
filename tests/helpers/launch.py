"""Starting N CPU processes of one command, as a user would on N GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .cli import REPO


def launch(*args: str, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N ARGS`` (torchrun underneath; without CUDA
    the run talks through gloo), with one thread per process."""
    exe = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(exe),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
