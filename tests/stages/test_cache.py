"""The shared-stage cache: manifests, rebuilding damaged entries, atomic and parallel builds.

Every test works on its own copy of one tiny cache (a 1-layer model, a few seconds to build), so
that damaging an entry never touches the session's shared cache. Assertions are on what was
reused and rebuilt, never on wall time.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import queue as queue_module
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from rlhf_bench.benchmarks.config import BanditTaskConfig, ModelConfig, PreferenceConfig, RewardModelConfig, SFTConfig
from rlhf_bench.benchmarks.stages import STAGE_FILES, SharedStages
from rlhf_bench.benchmarks.tasks import build_task
from rlhf_bench.benchmarks.utils import MANIFEST, atomic_directory, check_manifest, write_manifest

STAGES = ("sft", "preferences", "reward_model")
BUILDERS = {"sft": "_train_sft", "preferences": "_build_preferences", "reward_model": "_train_reward_model"}


def tiny_stages(cache: str | Path) -> SharedStages:
    """The shared stages of a tiny bandit (1-layer model, 256 demonstrations, 40 ranked lists)."""
    task_cfg = BanditTaskConfig(
        n_eval_prompts=32,
        n_sft_demos=256,
        sft=SFTConfig(epochs=1, batch_size=64),
        preferences=PreferenceConfig(n_prompts=40),
    )
    model_cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2)
    return SharedStages(
        build_task(task_cfg),
        task_cfg,
        model_cfg,
        RewardModelConfig(epochs=1),
        cache,
        torch.device("cpu"),
        progress=False,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A tiny cache built once per module; tests copy it (:func:`cache`) before touching it."""
    root = tmp_path_factory.mktemp("pristine")
    art = tiny_stages(root).prepare()
    assert art.reused == dict.fromkeys(STAGES, False)
    return root


@pytest.fixture
def cache(pristine, tmp_path) -> Path:
    shutil.copytree(pristine, tmp_path / "cache")
    return tmp_path / "cache"


def counting(stages: SharedStages, monkeypatch) -> Counter:
    """Wrap the stage builders of ``stages`` to count how often each runs."""
    runs: Counter = Counter()
    for stage, name in BUILDERS.items():

        def wrapped(*a, _orig=getattr(stages, name), _stage=stage, **k):
            runs[_stage] += 1
            return _orig(*a, **k)

        monkeypatch.setattr(stages, name, wrapped)
    return runs


def entry(stages: SharedStages, stage: str) -> Path:
    return stages.root / stages.keys()[stage]


def leftovers(root: Path) -> list[str]:
    """Temporary or set-aside directories under a task's cache root."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def assert_rebuilt(stages: SharedStages, runs: Counter, art, stage: str) -> None:
    """``stage`` alone was rebuilt (once) and every entry now has a valid manifest."""
    assert art.reused == {s: s != stage for s in STAGES}
    assert runs == Counter({stage: 1})
    for s in STAGES:
        assert check_manifest(entry(stages, s), required=STAGE_FILES[s]) is None, s
    assert leftovers(stages.root) == []


# ================================================================================ manifests
def test_intact_entries_are_reused_and_carry_a_manifest(cache, monkeypatch):
    stages = tiny_stages(cache)
    runs = counting(stages, monkeypatch)
    art = stages.prepare()
    assert art.reused == dict.fromkeys(STAGES, True) and not runs
    for stage in STAGES:
        path = entry(stages, stage)
        manifest = json.loads((path / MANIFEST).read_text())
        assert manifest["stage"] == stage and manifest["key"] == path.name
        listed = {f["path"]: f["size"] for f in manifest["files"]}
        on_disk = {
            p.relative_to(path).as_posix(): p.stat().st_size
            for p in path.rglob("*")
            if p.is_file() and p.name != MANIFEST
        }
        assert listed == on_disk and set(STAGE_FILES[stage]) <= set(listed)


def test_missing_manifest_rebuilds_the_stage(cache, monkeypatch, caplog):
    stages = tiny_stages(cache)
    (entry(stages, "sft") / MANIFEST).unlink()
    runs = counting(stages, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="rlhf_bench.benchmarks.stages"):
        art = stages.prepare()
    assert_rebuilt(stages, runs, art, "sft")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"cache entry {entry(stages, 'sft')}: manifest.json missing; rebuilding"]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "stage, name, damage",
    [
        ("sft", "model.safetensors", _flip),  # same size, other bytes: only the sha256 tells
        ("preferences", "train/data-00000-of-00001.arrow", _flip),
        ("reward_model", "model.safetensors", _truncate),
        ("sft", "metrics.json", _truncate),
    ],
)
def test_damaged_file_is_detected_and_rebuilt(cache, monkeypatch, caplog, stage, name, damage):
    stages = tiny_stages(cache)
    path = entry(stages, stage) / name
    damage(path)
    damaged = path.read_bytes()
    runs = counting(stages, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="rlhf_bench.benchmarks.stages"):
        art = stages.prepare()
    assert_rebuilt(stages, runs, art, stage)
    assert path.read_bytes() != damaged
    assert any(name in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


def test_half_written_entry_is_rebuilt(cache, monkeypatch):
    """An entry with some files but no manifest, e.g. the ``metrics.json`` that once marked an
    entry complete, and no model."""
    stages = tiny_stages(cache)
    path = entry(stages, "reward_model")
    (path / MANIFEST).unlink()
    (path / "model.safetensors").unlink()
    runs = counting(stages, monkeypatch)
    art = stages.prepare()
    assert_rebuilt(stages, runs, art, "reward_model")
    assert (path / "model.safetensors").is_file()
    stages.load_reward_model(art)  # loads


def test_damaged_entry_is_removed_before_its_rebuild(cache, monkeypatch):
    """A damaged entry is gone once seen, even when its rebuild then fails: no one loads it later."""
    stages = tiny_stages(cache)
    path = entry(stages, "preferences")
    _flip(path / "train" / "data-00000-of-00001.arrow")

    def fail(out, art):
        raise RuntimeError("rebuild failed")

    monkeypatch.setattr(stages, "_build_preferences", fail)
    with pytest.raises(RuntimeError, match="rebuild failed"):
        stages.prepare()
    assert not path.exists() and leftovers(stages.root) == []


def test_failed_build_leaves_no_temp_dir_and_orphans_are_removed(tmp_path, monkeypatch):
    stages = tiny_stages(tmp_path)

    def crash(out, art):
        (out / "partial.bin").write_bytes(b"x" * 100)
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(stages, "_train_sft", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        stages.prepare()
    assert leftovers(stages.root) == [] and not entry(stages, "sft").exists()
    orphan = stages.root / f".{stages.keys()['sft']}.tmp-killed"  # as a SIGKILLed build leaves it
    orphan.mkdir()
    (orphan / "config.json").write_text("{}")
    monkeypatch.undo()
    art = stages.prepare()
    assert art.reused == dict.fromkeys(STAGES, False) and leftovers(stages.root) == []


# ======================================================================== the manifest helpers
def _entry_dir(tmp_path: Path) -> Path:
    d = tmp_path / "entry"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha")
    (d / "sub" / "b.bin").write_bytes(bytes(range(256)))
    write_manifest(d, {"stage": "s", "key": "s-1"})
    return d


def _rewrite_manifest(d: Path, edit) -> None:
    manifest = json.loads((d / MANIFEST).read_text())
    edit(manifest)
    (d / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda d: (d / MANIFEST).unlink(), "manifest.json missing"),
        (lambda d: (d / MANIFEST).write_text('{"files": ['), "manifest.json unreadable"),
        (lambda d: (d / MANIFEST).write_text('{"stage": "s"}'), "manifest.json unreadable"),
        (lambda d: (d / "sub" / "b.bin").unlink(), "sub/b.bin missing"),
        (lambda d: (d / "a.txt").write_text("alphabet"), "a.txt has 8 bytes, manifest.json says 5"),
        (lambda d: (d / "a.txt").write_text("ALPHA"), "a.txt does not match its sha256"),
        (lambda d: _rewrite_manifest(d, lambda m: m.update(key="s-2")), "manifest.json has key='s-2', expected 's-1'"),
        (lambda d: _rewrite_manifest(d, lambda m: m["files"].pop(0)), "a.txt not listed in manifest.json"),
        (
            lambda d: _rewrite_manifest(d, lambda m: m["files"][1].update(path="../entry/sub/b.bin")),
            "outside the entry",
        ),
    ],
)
def test_check_manifest_names_the_problem(tmp_path, damage, problem):
    d = _entry_dir(tmp_path)
    assert check_manifest(d, {"stage": "s", "key": "s-1"}, required=["a.txt"]) is None
    damage(d)
    found = check_manifest(d, {"stage": "s", "key": "s-1"}, required=["a.txt"])
    assert found is not None and problem in found and "\n" not in found


def test_check_manifest_ignores_unlisted_files(tmp_path):
    d = _entry_dir(tmp_path)
    (d / "eval_reference-1.json").write_text("{}")  # written beside an entry later (evaluation cache)
    assert check_manifest(d) is None


def test_atomic_directory_replaces_a_leftover_entry_and_cleans_up(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "old.txt").write_text("stale")
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("fresh")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    with pytest.raises(KeyError):
        with atomic_directory(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


# ============================================================================ parallel builds
N_WORKERS = 4


def _prepare_worker(cache: str, barrier, queue) -> None:
    """Spawned: prepare the tiny bandit's shared stages in ``cache`` at the same moment as its siblings."""
    torch.set_num_threads(1)
    stages = tiny_stages(cache)
    barrier.wait(timeout=120)
    art = stages.prepare()
    queue.put((dict(art.reused), art.metrics))


def _collect(procs, queue, n: int) -> list:
    results, deadline = [], time.monotonic() + 300  # a hang guard only; nothing asserts on time
    while len(results) < n and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=1))
        except queue_module.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                break  # a worker crashed: fail now rather than at the deadline
    for p in procs:
        p.join(timeout=60)
        if p.exitcode is None:
            p.kill()
    return results


def test_parallel_prepare_builds_each_stage_once(tmp_path):
    """Four processes preparing the same empty cache at once all succeed; each stage is built by
    exactly one of them and read by the other three; no temporary directory is left."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(N_WORKERS), ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_worker, args=(str(tmp_path / "cache"), barrier, queue)) for _ in range(N_WORKERS)
    ]
    for p in procs:
        p.start()
    results = _collect(procs, queue, N_WORKERS)
    assert [p.exitcode for p in procs] == [0] * N_WORKERS
    assert len(results) == N_WORKERS
    for stage in STAGES:
        assert sorted(r[0][stage] for r in results) == [False] + [True] * (N_WORKERS - 1), stage
        assert all(r[1][stage] == results[0][1][stage] for r in results), stage
    root = tmp_path / "cache" / "bandit"
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert [d.split("-")[0] for d in dirs] == ["preferences", "reward_model", "sft"], dirs  # no temp dirs
    stages = tiny_stages(tmp_path / "cache")
    assert all(check_manifest(entry(stages, s), required=STAGE_FILES[s]) is None for s in STAGES)
