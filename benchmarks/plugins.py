"""Algorithm registry.

An algorithm registers with the :func:`register_algorithm` decorator when its module is imported,
and a module is found through the entry-point group ``rlhf_bench.algorithms``: each entry point
names a module (or object) whose import registers its algorithms. The built-in ones are declared
in this package's ``pyproject.toml`` exactly as a third-party package declares its own::

    [project.entry-points."rlhf_bench.algorithms"]
    my_algo = "my_package.my_algo"

A built-in module that fails to import is an error; a third-party one is logged and skipped.

The registry also stores each algorithm's config dataclass in Hydra's ConfigStore as
``schema/algorithm/<name>``, which the YAML under ``conf/algorithm/`` extends
(``defaults: [/schema/algorithm/<name>@_here_]``), and as the option ``algorithm/<name>`` with the
dataclass's defaults, so that ``algorithm=<name>`` works for a plugin that ships no YAML file. A
YAML file of the same name under ``conf/algorithm/`` is the option instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Callable, TypeVar

from hydra.core.config_store import ConfigStore

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "rlhf_bench.algorithms"
BUILTIN_PREFIX = "rlhf_bench."  # entry points into this package: the built-in algorithms


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    cls: type
    config_class: type


_REGISTRY: dict[str, AlgorithmSpec] = {}
_loaded = False
T = TypeVar("T", bound=type)


def _option_file(option: str):
    """conf/algorithm/<option>.yaml in the installed package (it may not exist)."""
    from importlib.resources import files

    return files("rlhf_bench.conf").joinpath("algorithm", f"{option}.yaml")


def _has_yaml_option(name: str) -> bool:
    return _option_file(name).is_file()


def option_algorithm(option: str) -> str | None:
    """The registered algorithm an ``algorithm=<option>`` YAML option configures: its ``name`` when it sets
    one, else the schema it extends (``/schema/algorithm/<name>@_here_``), else that of the option it
    extends (``ppo_ptx`` extends ``ppo``). None for an option that is not a YAML file."""
    from omegaconf import OmegaConf

    path = _option_file(option)
    if not path.is_file():
        return None
    node = OmegaConf.create(path.read_text())
    if node.get("name"):
        return str(node.name)
    for entry in node.get("defaults") or []:
        entry = str(entry)
        schema = re.fullmatch(r"/schema/algorithm/(\w+)@_here_", entry)
        if schema:
            return schema.group(1)
        if entry != "_self_":
            return option_algorithm(entry)
    return None


def register_algorithm(name: str, config: type | None = None, option: bool = True) -> Callable[[T], T]:
    """Class decorator: ``@register_algorithm("ppo", config=PPOConfig)``.

    ``option=False`` registers no ``algorithm=<name>`` option (when YAML files under other names,
    such as ``p3o_v1`` and ``p3o_v2``, are the algorithm's options).
    """

    def deco(cls: T) -> T:
        cfg_cls = config or getattr(cls, "config_class")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            log.warning("algorithm '%s' re-registered by %s (was %s)", name, cls, _REGISTRY[name].cls)
        cls.name = name
        cls.config_class = cfg_cls
        _REGISTRY[name] = AlgorithmSpec(name, cls, cfg_cls)
        cs = ConfigStore.instance()
        cs.store(group="schema/algorithm", name=name, node=cfg_cls)
        if option and not _has_yaml_option(name):
            cs.store(group="algorithm", name=name, node=cfg_cls(name=name, label=name))
        return cls

    return deco


def load_algorithms() -> None:
    """Import every entry point of ``rlhf_bench.algorithms``, the built-in ones included."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    builtin = 0
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value.startswith(BUILTIN_PREFIX):
            ep.load()  # a broken built-in is a bug of this package: raise
            builtin += 1
            continue
        try:
            ep.load()
        except Exception as e:  # a broken third-party plugin must not take the suite down
            log.error("could not load algorithm plugin '%s' (%s): %s", ep.name, ep.value, e)
    if not builtin:
        _loaded = False
        raise RuntimeError(
            f"no built-in algorithm is declared under the entry points '{ENTRY_POINT_GROUP}': the "
            "installed metadata of rlhf-bench is stale or missing; reinstall it (pip install -e ., after removing "
            "any rlhf_bench.egg-info left in the checkout by an older install)"
        )


def available_algorithms() -> list[str]:
    load_algorithms()
    return sorted(_REGISTRY)


def get_algorithm(name: str) -> AlgorithmSpec:
    load_algorithms()
    if name not in _REGISTRY:
        raise KeyError(f"unknown algorithm '{name}'; known algorithms: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
