"""Algorithm plugins. See :mod:`algorithms.registry` for how to add one."""

from .base import Algorithm
from .registry import available_algorithms, get_algorithm, load_algorithms, register_algorithm

__all__ = ["Algorithm", "available_algorithms", "get_algorithm", "load_algorithms", "register_algorithm"]
