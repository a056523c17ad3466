"""Small shared utilities: seeding, hashing, atomic writes, cache manifests, provenance."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np
import torch

PACKAGES = ("torch", "transformers", "trl", "datasets", "hydra-core", "wandb", "accelerate", "matplotlib", "rlhf-bench")


def seed_everything(seed: int) -> torch.Generator:
    """Seed every global random source (python, numpy, torch CPU and CUDA) and return a torch
    Generator seeded the same way, for code that takes an explicit generator."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return make_generator(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` (``cuda`` means the current CUDA device, ``cuda:N``), seeded."""
    g = torch.Generator(device=concrete_device(device))
    g.manual_seed(int(seed))
    return g


def concrete_device(device: str | torch.device) -> torch.device:
    """``device`` with its index: an accelerator named without one (``cuda``) is its current device."""
    device = torch.device(device)
    if device.type == "cpu" or device.index is not None:
        return device
    module = getattr(torch, device.type, None)
    current = getattr(module, "current_device", None)
    return torch.device(device.type, current()) if current is not None else device


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether two devices are one (``cuda`` and ``cuda:0`` are, when 0 is the current device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    return a.type == "cpu" or concrete_device(a) == concrete_device(b)


def sampling_generator(generator: torch.Generator, device: str | torch.device, *seed_parts: Any) -> torch.Generator:
    """The stream that samples tokens on ``device``: ``generator`` itself on the CPU (the streams of every
    committed result), else a generator on ``device`` seeded from ``seed_parts``, so that sampling never
    moves a (B, V) tensor between the host and the device."""
    if same_device(generator.device, device):
        return generator
    return make_generator(derive_seed(*seed_parts, "sampling"), device)


def derive_seed(*parts: Any) -> int:
    """A deterministic 63-bit seed derived from any hashable description (e.g. ``(seed, "eval")``)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of a JSON-serialisable description (key order independent)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success it is renamed to ``final`` in one
    step, so readers never see a half-written directory. A ``final`` that exists by then (a damaged
    entry that could not be removed) is replaced. On failure the temporary directory is removed.
    Call it while holding the lock that guards ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            discard_directory(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def discard_directory(path: Path) -> None:
    """Remove ``path``: first renamed aside in one step (so ``path`` is gone at once, whatever
    happens to the removal), then deleted."""
    path = Path(path)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale-", dir=path.parent))
    os.replace(path, aside / "entry")
    shutil.rmtree(aside, ignore_errors=True)


def remove_orphans(final: Path) -> list[Path]:
    """Remove the temporary and set-aside siblings of ``final`` (``.<name>.tmp-*``, ``.<name>.stale-*``)
    that a killed process left behind; returns them. Only while holding the lock that guards ``final``."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    found = [p for kind in ("tmp", "stale") for p in final.parent.glob(f".{final.name}.{kind}-*")]
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return found


# ------------------------------------------------------------------------------ cache manifests
MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``manifest.json`` into ``directory``: ``extra`` (e.g. the entry's name and key) and
    ``files``, every file under it (relative path, size in bytes, sha256). Write it last, once
    everything else is in place: its presence marks the entry complete."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST)
    listing = [
        {"path": p.relative_to(directory).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)} for p in files
    ]
    path = directory / MANIFEST
    atomic_write_text(path, json.dumps({**dict(extra or {}), "files": listing}, indent=1))
    return path


def check_manifest(
    directory: Path, expected: Optional[Mapping[str, Any]] = None, required: Iterable[str] = ()
) -> Optional[str]:
    """What is wrong with the entry ``directory`` (a short phrase), or None when it is intact.

    Intact: ``manifest.json`` is present and parses, holds the ``expected`` values (e.g. stage and
    key), lists every ``required`` file, and every file it lists is present with the listed size
    and sha256. Files it does not list (written beside the entry later) are ignored.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return f"{MANIFEST} missing"
    try:
        manifest = json.loads(path.read_text())
        listing = {e["path"]: (int(e["size"]), str(e["sha256"])) for e in manifest["files"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__}: {e})".replace("\n", " ")
    for key, value in (expected or {}).items():
        if manifest.get(key) != value:
            return f"{MANIFEST} has {key}={manifest.get(key)!r}, expected {value!r}"
    unlisted = [name for name in required if name not in listing]
    if unlisted:
        return f"{unlisted[0]} not listed in {MANIFEST}"
    for rel, (size, sha) in listing.items():
        problem = _listed_file_problem(directory, rel, size, sha)
        if problem:
            return problem
    return None


def _listed_file_problem(directory: Path, rel: str, size: int, sha: str) -> Optional[str]:
    file = directory / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"{MANIFEST} lists {rel!r}, outside the entry"
    if not file.is_file():
        return f"{rel} missing"
    if file.stat().st_size != size:
        return f"{rel} has {file.stat().st_size} bytes, {MANIFEST} says {size}"
    if file_sha256(file) != sha:
        return f"{rel} does not match its sha256 in {MANIFEST}"
    return None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` whole or not at all: ``write(f)`` fills a temporary file beside it, which is flushed
    to disk and renamed over ``path`` (the directory then synced too), so that a crash at any moment
    leaves the old file or the new one, never a part. The one writer of every file a run or a cache
    must be able to trust: summaries, manifests, checkpoints, cached tables."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    import platform
    import sys

    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    return out


#: Environment variables that change which kernels (hence which round-off) torch and MKL use.
NUMERICS_ENV = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
)


def numerics() -> dict[str, Any]:
    """What decides a run's round-off beside the package versions: torch's CPU kernel level
    (``torch.backends.cpu.get_cpu_capability()``: DEFAULT, AVX2, AVX512, ...), the BLAS and LAPACK
    torch was built with, its thread counts, the CPU model, and the environment variables that
    select kernels (those set). Runs agree to the bit only where all of these agree; verdicts must
    agree everywhere (README, "Reference results")."""
    import platform
    import re

    config = torch.__config__.show()
    build = {k.lower(): v for k, v in re.findall(r"\b(BLAS_INFO|LAPACK_INFO)=([^,\s]+)", config)}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": build.get("blas_info", "unknown"),
        "lapack": build.get("lapack_info", "unknown"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "env": {k: os.environ[k] for k in NUMERICS_ENV if k in os.environ},
    }


#: What the package is made of, in its repository: a change there changes what a run computes.
PACKAGE_PATHS = ("algorithms", "benchmarks", "conf", "pyproject.toml")


def git_revision(path: Path | None = None) -> str:
    """The git revision of the code that ran, with ``-dirty`` when a tracked file of the package's code or
    config (``algorithms/``, ``benchmarks/``, ``conf/``, ``pyproject.toml``) has changes. Other files do not
    change what runs: results (a re-run of a benchmark into its committed sweep directory writes there while
    it adds runs), the README, the tests."""
    path = Path(path or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *(f":(top){p}" for p in PACKAGE_PATHS)],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW, with the fused kernel where torch has one for the parameters' device (CPU and CUDA):
    one kernel per step instead of a dozen small ops per tensor."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and (x != x):  # NaN -> null keeps the JSON strict
        return None
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return x
