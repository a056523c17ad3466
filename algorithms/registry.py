"""The algorithm registry, where plugins have always imported it from: the very module
:mod:`rlhf_bench.benchmarks.plugins` (a leaf of the harness, so that its configuration can look
algorithms up without importing them), under this name too."""

import sys

from rlhf_bench.benchmarks import plugins

sys.modules[__name__] = plugins
