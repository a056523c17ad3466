"""Packaging: the wheel installs one top-level import name, ``rlhf_bench``, and the README's plugin
example, copied verbatim into a separate package that declares the entry point, runs through the
installed ``rlhf-bench`` command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_wheel_has_one_top_level_import_name(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the repository
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "results",
            "multirun",
            "outputs",
            "*.egg-info",
            "__pycache__",
            ".rlhf-bench-cache",
        ),
    )
    _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(tmp_path), str(src), cwd=tmp_path)
    (wheel,) = tmp_path.glob("rlhf_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"rlhf_bench"}, top
    folders = [
        p.parent.relative_to(REPO).as_posix()
        for top in ("algorithms", "benchmarks", "conf")
        for p in (REPO / top).rglob("__init__.py")
    ]
    assert len(folders) > 10 and "benchmarks/tasks/hf" in folders
    for folder in folders:  # every package, or a forgotten one would be missing from the wheel silently
        assert f"rlhf_bench/{folder}/__init__.py" in names, folder
    assert "rlhf_bench/conf/config.yaml" in names and "rlhf_bench/conf/algorithm/ppo.yaml" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "rlhf-bench = rlhf_bench.benchmarks.cli:main" in text
    assert "[rlhf_bench.algorithms]" in text and "ppo = rlhf_bench.algorithms.ppo" in text  # built-ins as plugins


def test_the_builtin_algorithms_are_entry_points_like_any_plugin():
    """Every module under algorithms/ that registers an algorithm is declared in the installed
    entry points, the registry keeps no list of its own, and every registered built-in came that way."""
    from importlib import metadata

    from rlhf_bench.algorithms import registry

    declared = {
        ep.value for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP) if ep.value.startswith("rlhf_bench.")
    }
    registering = {
        f"rlhf_bench.algorithms.{p.stem}"
        for p in (REPO / "algorithms").glob("*.py")
        if re.search(r"^@register_algorithm\(", p.read_text(), flags=re.M)
    }
    assert declared == registering
    assert not hasattr(registry, "BUILTIN_MODULES")
    builtins = {
        n for n in registry.available_algorithms() if registry.get_algorithm(n).cls.__module__.startswith("rlhf_bench.")
    }
    assert {registry.get_algorithm(n).cls.__module__ for n in builtins} == declared


def _readme_block(language: str, first_line: str) -> str:
    """The README's fenced ``language`` block that starts with ``first_line``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    matches = [b for b in blocks if b.startswith(first_line)]
    assert len(matches) == 1, f"README has {len(matches)} {language} blocks starting with {first_line!r}"
    return matches[0]


def test_readme_plugin_example_installs_and_runs_from_its_own_package(tmp_path, bandit):
    """The README's module and entry-point blocks, as written, in a package of their own: pip-installed
    (into a target directory on PYTHONPATH, so the test environment is left as it was), found through
    the entry point, composed as ``algorithm=my_algo`` without any YAML file, and trained."""
    pkg = tmp_path / "my_plugin"
    (pkg / "my_package").mkdir(parents=True)
    (pkg / "my_package" / "__init__.py").write_text("")
    (pkg / "my_package" / "my_algo.py").write_text(_readme_block("python", "# my_package/my_algo.py"))
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "my-package"\nversion = "0.1.0"\n\n[tool.setuptools]\npackages = ["my_package"]\n\n'
        + _readme_block("toml", '[project.entry-points."rlhf_bench.algorithms"]')
    )
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(site), str(pkg), cwd=tmp_path)

    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("rlhf-bench")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(exe),
            *bandit.overrides,
            "algorithm=my_algo",
            "algorithm.beta=0.3",
            "task.steps=3",
            "task.eval_every=3",
            f"cache_dir={bandit.cfg.cache_dir}",
            "progress=false",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algorithm_name"] == "my_algo" and summary["beta"] == 0.3
    assert summary["config"]["algorithm"]["baseline"] == "mean"
    train = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["loss/policy"] == r["loss/policy"] for r in train)
