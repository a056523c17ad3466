"""Algorithm plugins, and the socket they plug into.

A plugin imports everything it needs from here::

    from rlhf_bench.algorithms import Algorithm, AlgorithmConfig, register_algorithm

and, as it needs them: the one-line config checks (``check``, ``one_of``, ``positive``, ``non_negative``,
``in_unit_interval``, ``ConfigError``), what it declares it converges to (``Objective``, ``PI_STAR``), the
batch it is handed (``SequenceBatch``), the harness's ``masked_mean``, and the evaluation policies
(``EvalPolicy``, ``LMPolicy``) for an algorithm whose evaluated policy is not the trained model.

See :mod:`rlhf_bench.algorithms.registry` for how built-in and third-party plugins are found.
"""

from rlhf_bench.benchmarks.config import (
    AlgorithmConfig,
    ConfigError,
    check,
    in_unit_interval,
    non_negative,
    one_of,
    positive,
)
from rlhf_bench.benchmarks.evaluation import EvalPolicy, LMPolicy
from rlhf_bench.benchmarks.evaluation.targets import PI_STAR, Objective
from rlhf_bench.benchmarks.models import SequenceBatch, masked_mean

from .base import Algorithm
from .registry import available_algorithms, get_algorithm, load_algorithms, register_algorithm

__all__ = [
    "PI_STAR",
    "Algorithm",
    "AlgorithmConfig",
    "ConfigError",
    "EvalPolicy",
    "LMPolicy",
    "Objective",
    "SequenceBatch",
    "available_algorithms",
    "check",
    "get_algorithm",
    "in_unit_interval",
    "load_algorithms",
    "masked_mean",
    "non_negative",
    "one_of",
    "positive",
    "register_algorithm",
]
