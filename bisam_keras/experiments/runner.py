"""One run of the paper's protocol, by concern (this module re-exports them).

- `config`: `RunConfig`, its checks, and what `--resume` compares;
- `builders`: the strategy, loss, schedule, optimizer and trained model;
- `checkpoint`: each epoch's atomic commit (`RunState`), Ctrl-C and SIGTERM;
- `results`: `history.csv`;
- `one_run`: `run`, which trains one configuration and writes its result.

A run's folder is described in `bisam_keras.experiments.one_run`.
"""

from bisam_keras import data as data_lib
from bisam_keras import models as models_lib
from bisam_keras.experiments import faults, folders, lock, protocol, run_files
from bisam_keras.experiments import methods as methods_lib
from bisam_keras.experiments.builders import (
    _one_hot,
    add_coupled_weight_decay,
    build_loss,
    build_optimizer,
    keras_label_smoothing,
    learning_rate_schedule,
    make_strategy,
    model_build_options,
    training_model,
    uses_coupled_l2,
)
from bisam_keras.experiments.checkpoint import RunInterrupted, RunState, install_best
from bisam_keras.experiments.config import (
    FLOAT_SETTINGS,
    OPTIONAL_SETTINGS,
    RESUMABLE_CHANGES,
    SCHEDULES,
    STRATEGIES,
    TRAINING_OPTIONS,
    RunConfig,
    check_resumable,
    check_training_options,
    config_differences,
    recorded_config,
    unused_settings,
)
from bisam_keras.experiments.one_run import StepLimit, TestEvaluation, run
from bisam_keras.experiments.results import history_rows, history_text, read_history
from bisam_keras.experiments.run_files import BackupError, load_histories, load_results
from bisam_keras.optimizers.schedules import LinearWarmupDecay

__all__ = [
    "FLOAT_SETTINGS",
    "OPTIONAL_SETTINGS",
    "RESUMABLE_CHANGES",
    "SCHEDULES",
    "STRATEGIES",
    "TRAINING_OPTIONS",
    "BackupError",
    "LinearWarmupDecay",
    "RunConfig",
    "RunInterrupted",
    "RunState",
    "StepLimit",
    "TestEvaluation",
    "_one_hot",
    "add_coupled_weight_decay",
    "build_loss",
    "build_optimizer",
    "check_resumable",
    "check_training_options",
    "config_differences",
    "data_lib",
    "faults",
    "folders",
    "history_rows",
    "history_text",
    "install_best",
    "keras_label_smoothing",
    "learning_rate_schedule",
    "load_histories",
    "load_results",
    "lock",
    "make_strategy",
    "methods_lib",
    "model_build_options",
    "models_lib",
    "protocol",
    "read_history",
    "recorded_config",
    "run",
    "run_files",
    "training_model",
    "unused_settings",
    "uses_coupled_l2",
]
