"""Starting N CPU processes of one command, as a user would on N GPUs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from .cli import REPO


def free_port() -> int:
    """A TCP port nobody listens on now: two launches at once each need their own rendezvous port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(processes: int) -> list[str]:
    return [
        "--main_process_port",
        str(free_port()),
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
    ]


def launch(*args: str, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N ARGS`` (torchrun underneath; without CUDA
    the run talks through gloo), with one thread per process."""
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", *_flags(processes), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def start(*args: str, processes: int = 2, cwd=REPO) -> subprocess.Popen:
    """:func:`launch` without waiting (:func:`kill_tree` ends it as a machine that goes down would)."""
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", *_flags(processes), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun starts each worker in a session of its own, so
    a process group does not reach them)."""
    import psutil

    parent = psutil.Process(pid)
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
