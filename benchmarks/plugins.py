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

Whatever enumerates algorithms asks the registry, so that a plugin is one module and one entry point:
:func:`select_options` gives the options of the installed plugins (variants such as ``ppo_ptx`` left
out) that the benchmark sweeps (the ``${algorithms:}`` resolver in ``conf/benchmark/*.yaml``), the tuning
and the convergence study run; :func:`convergence_variants` the configurations the plugins declare for
that study. The report, built from run files alone, orders and colours whatever names it finds.
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


def _extends(option: str) -> tuple[str, str] | None:
    """What a YAML option builds on: ``("schema", <algorithm>)`` when its defaults extend a registered
    schema (``/schema/algorithm/<name>@_here_``), ``("option", <option>)`` when they extend another
    option (``ppo_ptx`` extends ``ppo``); None for an option that is not a YAML file or extends nothing."""
    from omegaconf import OmegaConf

    path = _option_file(option)
    if not path.is_file():
        return None
    for entry in OmegaConf.create(path.read_text()).get("defaults") or []:
        entry = str(entry)
        schema = re.fullmatch(r"/schema/algorithm/(\w+)@_here_", entry)
        if schema:
            return "schema", schema.group(1)
        if entry != "_self_":
            return "option", entry
    return None


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
    base = _extends(option)
    if base is None:
        return None
    return base[1] if base[0] == "schema" else option_algorithm(base[1])


def option_parent(option: str) -> str | None:
    """The option a YAML option extends (``ppo`` for ``ppo_ptx``), else None. Such an option is a
    *variant*: the benchmarks sweep the options that extend a schema directly, and a variant runs when
    named (``algorithm=ppo_ptx``)."""
    base = _extends(option)
    return base[1] if base and base[0] == "option" else None


def installed_modules() -> set[str]:
    """The modules the entry points of ``rlhf_bench.algorithms`` name."""
    return {ep.module for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def installed(spec: AlgorithmSpec, modules: set[str] | None = None) -> bool:
    """Whether an algorithm comes from an installed plugin: its class is defined in a module that an entry
    point names (``modules``: :func:`installed_modules`, read once by a caller that asks for many). One
    registered by a script or a test that merely imports the registry runs when named
    (``algorithm=<name>``) but joins no benchmark."""
    return spec.cls.__module__ in (installed_modules() if modules is None else modules)


def algorithm_options() -> dict[str, AlgorithmSpec]:
    """Every option of the ``algorithm`` config group, with the registered algorithm it configures: the
    YAML files under ``conf/algorithm/`` and the options that plugins without a YAML file registered."""
    from importlib.resources import files

    load_algorithms()
    names = {p.name[: -len(".yaml")] for p in files("rlhf_bench.conf").joinpath("algorithm").iterdir()}
    store = ConfigStore.instance()
    if "algorithm" in store.repo:  # a group only once a plugin without a YAML file has registered
        names |= {n[: -len(".yaml")] for n in store.list("algorithm")}
    out = {}
    for option in sorted(n for n in names if not n.startswith("_")):
        algorithm = option_algorithm(option) if _has_yaml_option(option) else option
        if algorithm in _REGISTRY:
            out[option] = _REGISTRY[algorithm]
    return out


#: What :func:`select_options` can select, each a test on an option's algorithm class.
SELECTIONS: dict[str, Callable[[type], bool]] = {
    "all": lambda cls: True,
    "trained": lambda cls: cls.data != "none",  # the algorithm trains the policy (not sft, best_of_n)
}


def select_options(selection: str = "all") -> list[str]:
    """The options a benchmark sweeps, tunes or studies: every option of the ``algorithm`` group except
    the variants (:func:`option_parent`), whose algorithm is :func:`installed` and passes ``selection``
    (a key of :data:`SELECTIONS`). In the order a sweep should run them: what needs no training first (the
    beta-independent baselines, run once per world before any other job could need them), then the online
    algorithms, those with a value model first (the longest runs), then the offline ones; by name within."""
    if selection not in SELECTIONS:
        raise KeyError(f"unknown algorithm selection '{selection}'; known: {', '.join(SELECTIONS)}")
    rank = {"none": 0, "online": 1, "offline": 2}
    modules = installed_modules()
    chosen = [
        (option, spec.cls)
        for option, spec in algorithm_options().items()
        if option_parent(option) is None and installed(spec, modules) and SELECTIONS[selection](spec.cls)
    ]
    chosen.sort(key=lambda oc: (rank.get(oc[1].data, 1), not oc[1].uses_value_model, oc[0]))
    return [option for option, _ in chosen]


def family(option: str) -> list[str]:
    """``option`` and every variant that extends it, directly or through another variant (``dpo``: ``dpo``,
    ``dpo_cdpo``, ``dpo_hinge``, ``dpo_robust``): the options a study of one algorithm's variants runs."""
    options = algorithm_options()
    if option not in options:
        raise KeyError(f"unknown algorithm option '{option}'; known: {', '.join(sorted(options))}")

    def root(o: str | None) -> str | None:
        while o is not None and o != option:
            o = option_parent(o)
        return o

    return [option, *sorted(o for o in options if o != option and root(option_parent(o)) == option)]


def algorithms_resolver(selection: str = "all", option: str | None = None) -> str:
    """The ``${algorithms:}`` resolver of the benchmark sweeps (``hydra.sweeper.params.algorithm``):
    :func:`select_options`, comma-joined; ``${algorithms:trained}`` selects the algorithms that train, and
    ``${algorithms:family,dpo}`` an option with its variants (:func:`family`)."""
    if selection == "family":
        if not option:
            raise KeyError("${algorithms:family,<option>} names the option whose family to sweep")
        return ",".join(family(option))
    return ",".join(select_options(selection or "all"))


def convergence_variants() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The configurations the registered algorithms declare for the convergence study besides their
    defaults (``Algorithm.convergence_variants``): name -> (option, overrides)."""
    load_algorithms()
    out = {}
    modules = installed_modules()
    for spec in (s for s in _REGISTRY.values() if installed(s, modules)):
        for variant, overrides in getattr(spec.cls, "convergence_variants", {}).items():
            out[variant] = (spec.name, tuple(overrides))
    return dict(sorted(out.items()))


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
