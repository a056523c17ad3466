"""A new algorithm is one module and one entry point.

A throwaway package, installed for these tests only (its module and its ``.dist-info`` with the entry
point, on ``PYTHONPATH``: what ``pip install`` leaves behind), declares one algorithm. Without any file
of the project edited, it appears in the default benchmark's sweep, in that sweep's report with a
colour of its own, in the tuning protocol (on the knobs its config has) and in the convergence study.

And no list of algorithm names is back in the harness or in ``conf/``: a static scan of every
collection literal in ``benchmarks/`` and every YAML value under ``conf/``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rlhf_bench.algorithms.registry import available_algorithms
from rlhf_bench.benchmarks.plugins import algorithm_options

ROOT = Path(__file__).resolve().parents[2]
NAME = "throwaway_pg"

PLUGIN = '''
"""REINFORCE with the batch-mean baseline and the KL in the sequence reward: a test's throwaway plugin."""
from dataclasses import dataclass

import torch

from rlhf_bench.algorithms import Algorithm, AlgorithmConfig, register_algorithm


@dataclass
class ThrowawayConfig(AlgorithmConfig):
    name: str = "throwaway_pg"
    epochs: int = 1
    minibatches: int = 1


@register_algorithm("throwaway_pg", config=ThrowawayConfig)
class ThrowawayPG(Algorithm):
    data = "online"

    @torch.no_grad()
    def prepare(self, rollout):
        mask = rollout.response_mask.to(rollout.logprobs.dtype)  # (B, T)
        kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(-1)  # (B,)
        reward = rollout.rewards - self.cfg.beta * kl  # (B,)
        return {**self.batch_tensors(rollout.batch), "advantages": reward - reward.mean()}

    def loss(self, mb):
        logprobs = self.ctx.logprobs(self.ctx.policy, self.sequence_batch(mb))  # (B, T)
        loss = -(mb["advantages"] * (logprobs * mb["response_mask"]).sum(-1)).mean()
        return loss, {"loss/policy": loss.detach()}
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that has the throwaway plugin installed."""
    site = tmp_path_factory.mktemp("site")
    (site / "throwaway_plugin.py").write_text(PLUGIN)
    dist = site / "throwaway_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[rlhf_bench.algorithms]\n{NAME} = throwaway_plugin\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _python(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_plugin_joins_the_sweeps_the_tuning_and_the_convergence_study(plugin_env):
    found = _python(
        """
        import json
        from hydra import compose, initialize_config_module
        from rlhf_bench.benchmarks import cli  # registers the schemas, the resolvers and the plugins
        from rlhf_bench.benchmarks.studies import convergence, tuning

        with initialize_config_module(config_module=cli.CONFIG_MODULE, version_base="1.3"):
            cfg = compose("config", overrides=[f"benchmark={cli.DEFAULT_BENCHMARK}"], return_hydra_config=True)
        print(json.dumps({
            "sweep": cfg.hydra.sweeper.params.algorithm.split(","),
            "tuning": tuning.option_grids(tuning.load_protocol("bandit")),
            "convergence": convergence.default_algorithms(),
        }))
        """,
        plugin_env,
    )
    assert NAME in found["sweep"] and {"sft", "ppo", "dpo"} <= set(found["sweep"])  # the default benchmark's
    # tuned on the knobs its config has: lr and updates, no clip_eps (it has no clip)
    assert found["tuning"][NAME] == {"lr": [1.0e-4, 3.0e-4, 1.0e-3], "updates": [[4, 2], [2, 4]]}
    assert found["tuning"]["ppo"].keys() == {"lr", "clip_eps", "updates"}
    assert NAME in found["convergence"]


def test_the_plugin_runs_in_the_default_benchmark_and_is_coloured_in_its_report(plugin_env, cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf_bench.benchmarks.cli",
            "benchmark=bandit",  # the default benchmark, its algorithm sweep untouched
            "algorithm.beta=0.1",
            "task.steps=2",
            "task.eval_every=2",
            "task.n_eval_prompts=50",
            "task.sft.epochs=1",
            "task.preferences.n_prompts=200",
            f"cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep}",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        env=plugin_env,
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ran = {json.loads(p.read_text())["algorithm"] for p in sweep.glob("*/summary.json")}
    assert NAME in ran and {"sft", "ppo", "dpo"} <= ran
    report = (sweep / "report.md").read_text()
    assert re.search(rf"^\| {NAME} \|", report, flags=re.M), "no row of the plugin in the report"
    colours = _python(
        f"""
        import json
        from rlhf_bench.benchmarks.report.style import algorithm_color
        names = {sorted(ran)!r}
        print(json.dumps({{n: algorithm_color(n, names) for n in names}}))
        """,
        plugin_env,
    )
    assert colours[NAME] not in {c for n, c in colours.items() if n != NAME}
    assert (sweep / "frontier.png").stat().st_size > 0


# ------------------------------------------------------------------------------------ the scan
#: Registered algorithm names and config options: a literal naming three or more of them is a list of
#: the suite's algorithms. A pair is a comparison (the report's published claims name their two sides).
NAMES = set(algorithm_options()) | set(available_algorithms())
AT_MOST = 2


def _names(values) -> set[str]:
    return {v for v in values if isinstance(v, str) and v in NAMES}


def python_lists(path: Path) -> list[tuple[int, list[str]]]:
    """Collection literals, dict keys and comma-separated strings of a module naming 3+ algorithms."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        elif isinstance(node, ast.Dict):
            values = [k.value for k in node.keys if isinstance(k, ast.Constant)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "," in node.value:
            values = [v.strip() for v in node.value.split(",")]
        else:
            continue
        if len(_names(values)) > AT_MOST:
            out.append((node.lineno, sorted(_names(values))))
    return out


def yaml_lists(path: Path) -> list[tuple[str, list[str]]]:
    """Sequences, mapping keys and comma-separated strings of a YAML file naming 3+ algorithms."""
    out = []

    def walk(x, where: str) -> None:
        values = list(x) if isinstance(x, (dict, list)) else x.split(",") if isinstance(x, str) else []
        if len(_names([str(v).strip() for v in values])) > AT_MOST:
            out.append((where, sorted(_names([str(v).strip() for v in values]))))
        for k, v in x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else []:
            walk(v, f"{where}.{k}")

    walk(yaml.safe_load(path.read_text()), path.name)
    return out


def test_no_list_of_algorithm_names_in_the_harness_or_conf():
    found = [
        f"{p.relative_to(ROOT)}:{line} {names}"
        for p in ROOT.glob("benchmarks/**/*.py")
        for line, names in python_lists(p)
    ]
    found += [f"{p.relative_to(ROOT)} {w} {names}" for p in ROOT.glob("conf/**/*.yaml") for w, names in yaml_lists(p)]
    assert not found, "lists of algorithm names (the registry lists them: benchmarks/plugins.py):\n" + "\n".join(found)


def test_the_scan_sees_the_lists_it_forbids(tmp_path):
    """The scan itself, on the forms the lists took before the registry found the algorithms."""
    module = tmp_path / "m.py"
    module.write_text(
        'ORDER = ["sft", "best_of_n", "dpo"]\nCOLORS = {"ppo": 1, "dpo": 2, "rloo": 3}\nS = "sft,ppo,dpo"\n'
    )
    assert [line for line, _ in python_lists(module)] == [1, 2, 3]
    conf = tmp_path / "c.yaml"
    conf.write_text(
        "params:\n  algorithm: sft,best_of_n,ppo\ngrids:\n  ppo: {lr: [1]}\n  dpo: {lr: [1]}\n  rloo: {lr: [1]}\n"
    )
    assert len(yaml_lists(conf)) == 2
    module.write_text('PAIR = ("p3o_v1", "ppo")\nONE = "sft"\n')
    assert python_lists(module) == []
