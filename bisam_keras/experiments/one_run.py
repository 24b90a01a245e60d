"""One run of the paper's protocol: data, model, method, training, results.

A run lives in `<output>/<dataset>/<model>/<method>/seed<seed>/`:

- `config.json`: the run's configuration; the settings its method does not
  use are recorded as `null`;
- `history.csv`: per-epoch training, validation and test metrics, epochs
  numbered from 1, `tensorboard/`: TensorBoard logs;
- `best.keras`: the model of the epoch that `result.json` reports (the best
  validation accuracy so far while the run trains);
- `backup/`: the state that `--resume` continues from, removed when the run
  finishes;
- `result.json`: the protocol's result, the test metrics of the epoch with the
  best validation accuracy;
- `.lock`: while a process runs the run, the lock it holds (`lock.hold`), so
  that no second process trains the same run.

Each epoch ends with one commit (`RunState`): the best model if it improved,
`history.csv`, the weights and optimizer state, then `backup/state.json`,
each written to a new file that replaces the old one at once. A run killed at
any moment therefore resumes from its last committed epoch, with
`history.csv` and `best.keras` cut back to that epoch. A write that fails (a
full disk) or a training loss that becomes non-finite ends the run the same
way (`faults`), and what the folder holds is checked before it is used
(`run_files`): committed work is never trained over.
"""

import json
import math
import os
import time

import keras

from bisam_keras import data as data_lib
from bisam_keras import models as models_lib
from bisam_keras.experiments import faults, folders, lock, protocol, run_files
from bisam_keras.experiments.builders import (
    _one_hot,
    add_coupled_weight_decay,
    build_loss,
    build_optimizer,
    load_kwargs,
    make_strategy,
    model_build_options,
    training_model,
    uses_coupled_l2,
)
from bisam_keras.experiments.checkpoint import (
    RunInterrupted,
    RunState,
    _remove,
    _write_atomically,
    install_best,
)
from bisam_keras.experiments.config import check_resumable, recorded_config
from bisam_keras.experiments.results import history_rows, read_history
from bisam_keras.experiments.run_files import read_state


class StepLimit(keras.callbacks.Callback):
    """Stops `fit` once `steps` optimizer steps are done, counted from epoch 0.

    The step count is Keras' epoch index times `steps_per_epoch` plus the
    batch index, so a run resumed by `BackupAndRestore` (which restores the
    epoch index) stops at the same step as an uninterrupted one. `fit` still
    ends the cut-short epoch with its validation and callbacks.
    """

    def __init__(self, steps, steps_per_epoch):
        super().__init__()
        self.steps = int(steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch * self.steps_per_epoch + batch + 1 >= self.steps:
            self.model.stop_training = True


class TestEvaluation(keras.callbacks.Callback):
    """Adds `test_*` metrics to each epoch's logs (the paper's protocol)."""

    def __init__(self, test_data):
        super().__init__()
        self.test_data = test_data

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        results = self.model.evaluate(self.test_data, verbose=0, return_dict=True)
        for name, value in results.items():
            logs[f"test_{name}"] = float(value)


def run(config, resume=False, callbacks=()):
    """Trains one configuration and returns its protocol result.

    Args:
        config: a `RunConfig`.
        resume: continue an interrupted run from its last finished epoch (and
            return the saved result of a finished one). The settings must be
            those of its `config.json` but for `RESUMABLE_CHANGES`, else a
            `ValueError` lists the differences. Without `resume`, an existing
            run folder is an error. Defaults to `False`.
        callbacks: extra Keras callbacks for `fit`; they see each epoch after
            it is committed.

    Returns:
        The result dict also written to `result.json`.

    Raises:
        RunInterrupted: on `KeyboardInterrupt` (Ctrl-C) during training; the
            run resumes from its last finished epoch.
        lock.RunLockedError: another process is running this run (it holds
            the run folder's lock, `<run>/.lock`); nothing was changed.
        run_files.RunFileError: the run folder holds committed work that this
            call would train over (no `config.json`; or, resumed, neither
            `result.json` nor a backup), or a file of it is damaged.
        BackupError: the backup to resume from cannot be read.
        faults.RunWriteError: a file of the run could not be written (a full
            disk); its committed epochs are intact.
        faults.TrainingDiverged: the training loss became NaN or infinite;
            the epoch was not committed and no result was written.
    """
    config.validate()
    folders.check_output(config.output)
    with lock.hold(config.run_dir()):
        return _run_locked(config, resume, callbacks)


def _resume_point(config, resume):
    """`(result, state, rows)` of the run folder: the saved result of a
    finished run, else the committed state (`None` if none) and its
    `history.csv` rows to continue from."""
    run_dir = config.run_dir()
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        run_files.check_no_work(run_dir)
        return None, None, []
    if not resume:
        raise ValueError(
            f"`output` already holds this run ({run_dir}); pass --resume to continue "
            "it or choose another --output."
        )
    check_resumable(config)
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path):
        return run_files.read_result(result_path, run_files.PRINTED), None, []
    state = read_state(run_dir)
    done = state["epoch"] if state else 0
    rows = history_rows(os.path.join(run_dir, "history.csv"))
    if not state:
        run_files.check_nothing_finished(run_dir, len(rows))
        print("resuming at epoch 1: no epoch of this run had finished", flush=True)
        return None, None, []
    rows = [r for r in rows if r["epoch"] <= done]
    install_best(run_dir, state)
    weights = os.path.join(run_dir, "backup", state["weights"])
    print(f"resuming at epoch {done + 1}, from {weights}", flush=True)
    return None, state, rows


def _check_splits(config, splits):
    """Raises `ValueError` if the protocol would fail after training: it selects
    the epoch by validation accuracy and reports test accuracy."""
    if splits.num_validation == 0:
        raise ValueError(
            f"`validation_fraction`={config.validation_fraction} of {splits.num_train} "
            "training examples holds out no validation example, and the run selects its "
            f"epoch by validation accuracy. Received: subset={config.subset}"
        )
    if splits.num_test == 0:
        raise ValueError(
            f"the test split of {config.dataset!r} is empty (a `subset` below 5 keeps "
            f"none of it), and the run reports test accuracy. Received: subset={config.subset}"
        )


def _run_locked(config, resume, callbacks):
    run_dir = config.run_dir()
    config_path = os.path.join(run_dir, "config.json")
    result_path = os.path.join(run_dir, "result.json")
    history_path = os.path.join(run_dir, "history.csv")
    result, state, rows = _resume_point(config, resume)
    if result is not None:
        print(f"this run had already finished; its saved result ({result_path}):", flush=True)
        return result

    keras.utils.set_random_seed(config.seed)
    load_options = load_kwargs(config, train=True)
    drop_remainder = load_options["drop_remainder"]
    splits = data_lib.load(config.dataset, **load_options)
    _check_splits(config, splits)
    train, validation, test = _one_hot(splits)
    if drop_remainder:
        steps_per_epoch = splits.num_train // config.batch_size
    else:
        steps_per_epoch = math.ceil(splits.num_train / config.batch_size)
    if config.steps is None:
        epochs, total_steps = config.epochs, config.epochs * steps_per_epoch
    else:
        epochs, total_steps = math.ceil(config.steps / steps_per_epoch), config.steps
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    if config.micro_batch_size is not None and (
        config.batch_size % replicas or (config.batch_size // replicas) % config.micro_batch_size
    ):
        raise ValueError(
            f"`micro_batch_size` must divide the per-replica batch (`batch_size` / "
            f"{replicas} replicas). Received: micro_batch_size={config.micro_batch_size}, "
            f"batch_size={config.batch_size}"
        )
    with strategy.scope():
        build_options = model_build_options(config)
        inner = models_lib.build(
            config.model, splits.num_classes, input_shape=splits.input_shape, **build_options
        )
        if uses_coupled_l2(config):
            add_coupled_weight_decay(inner, config.weight_decay)
        wrapped_sgd = run_files.wraps_the_model(run_dir, state)
        optimizer = build_optimizer(config, total_steps, steps_per_epoch, wrapped_sgd)
        model = training_model(inner, optimizer)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if splits.num_classes > 5:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
        model.compile(
            optimizer=optimizer,
            loss=build_loss(config, splits.num_classes),
            metrics=metrics,
            jit_compile=config.jit_compile,
        )
    # config.json is written once the data and the model are there: a run that
    # cannot start (no data, no weights) leaves nothing to --resume (and the run
    # folder that the lock created, still empty, goes again).
    if not os.path.exists(config_path):
        _write_atomically(config_path, json.dumps(recorded_config(config), indent=2))
    run_state = RunState(run_dir, state, rows)
    fit_callbacks = [
        splits.epoch_callback(),
        faults.StopOnNonFiniteLoss(run_dir),
        TestEvaluation(test),
        run_state,
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard")),
        *callbacks,
    ]
    if config.steps is not None:
        fit_callbacks.insert(0, StepLimit(config.steps, steps_per_epoch))
    start = time.perf_counter()
    try:
        model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            initial_epoch=state["epoch"] if state else 0,
            callbacks=fit_callbacks,
            shuffle=False,  # the pipeline shuffles, by (seed, epoch)
            verbose=min(config.verbose, 2),
        )
    except KeyboardInterrupt:
        raise RunInterrupted(run_state.epoch, run_dir) from None
    seconds = time.perf_counter() - start
    history = read_history(history_path)
    result = {
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "seed": config.seed,
        **protocol.selected_metrics(history),
        "epochs_run": len(history.get("val_accuracy", [])),
        "steps": total_steps,
        "train_seconds_last_session": seconds,
        "num_train": splits.num_train,
        "num_validation": splits.num_validation,
        "num_test": splits.num_test,
        "noisy_label_fraction": splits.noisy_label_fraction,
    }
    _write_atomically(os.path.join(run_dir, "history.json"), json.dumps(history, indent=2))
    _write_atomically(result_path, json.dumps(result, indent=2))
    _remove(os.path.join(run_dir, "backup"))
    return result
