"""The paper's experiment protocol: methods, presets, runs and reports.

The names are loaded on first use (PEP 562): `bisam_keras.experiments.presets`
can be read without importing TensorFlow.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the API docs
    from bisam_keras.experiments import study
    from bisam_keras.experiments.config import RunConfig
    from bisam_keras.experiments.methods import METHODS, make_optimizer
    from bisam_keras.experiments.one_run import run
    from bisam_keras.experiments.presets import PRESETS
    from bisam_keras.experiments.protocol import aggregate, best_epoch, markdown_table
    from bisam_keras.experiments.run_files import load_results
    from bisam_keras.optimizers.schedules import LinearWarmupDecay

__all__ = [
    "LinearWarmupDecay",
    "METHODS",
    "PRESETS",
    "RunConfig",
    "aggregate",
    "best_epoch",
    "load_results",
    "make_optimizer",
    "markdown_table",
    "run",
    "study",
]

_LAZY = {
    "METHODS": "methods",
    "make_optimizer": "methods",
    "PRESETS": "presets",
    "aggregate": "protocol",
    "best_epoch": "protocol",
    "markdown_table": "protocol",
    "LinearWarmupDecay": "runner",
    "RunConfig": "config",
    "load_results": "run_files",
    "run": "one_run",
    "study": None,  # a submodule: the label-noise study (grid, statistics, report)
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'bisam_keras.experiments' has no attribute {name!r}")
    if _LAZY[name] is None:
        value = importlib.import_module(f"bisam_keras.experiments.{name}")
    else:
        value = getattr(importlib.import_module(f"bisam_keras.experiments.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
