"""The paper's experiment protocol: methods, presets, runs and reports."""

from bisam_keras.experiments.methods import METHODS, make_optimizer
from bisam_keras.experiments.presets import PRESETS
from bisam_keras.experiments.protocol import aggregate, best_epoch, markdown_table
from bisam_keras.experiments.runner import LinearWarmupDecay, RunConfig, load_results, run

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
]
