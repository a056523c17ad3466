"""Algorithm plugins, and the socket they plug into.

A plugin imports everything it needs from here::

    from rlhf_bench.algorithms import Algorithm, AlgorithmConfig, register_algorithm

See :mod:`rlhf_bench.algorithms.registry` for how built-in and third-party plugins are found.
"""

from rlhf_bench.benchmarks.config import AlgorithmConfig

from .base import Algorithm
from .registry import available_algorithms, get_algorithm, load_algorithms, register_algorithm

__all__ = [
    "Algorithm",
    "AlgorithmConfig",
    "available_algorithms",
    "get_algorithm",
    "load_algorithms",
    "register_algorithm",
]
