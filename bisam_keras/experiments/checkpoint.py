"""Crash-safe checkpointing: each epoch of a run ends with one atomic commit
(`RunState`), and Ctrl-C waits for it (`RunInterrupted` names the epoch).

The best model if it improved, `history.csv`, the weights and optimizer state,
then `backup/state.json`: each is written to a new file that replaces the old
one at once, so a run killed at any moment resumes from its last commit.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import threading

import keras

from bisam_keras.experiments import faults, run_files
from bisam_keras.experiments.results import history_text
from bisam_keras.experiments.run_files import BackupError


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or `KeyboardInterrupt`) during a run; `epoch` is the 1-based
    epoch it stopped (the first one `--resume` redoes)."""

    def __init__(self, epoch, run_dir):
        super().__init__(f"interrupted in epoch {epoch}")
        self.epoch = epoch
        self.run_dir = run_dir


@contextlib.contextmanager
def _sigint_deferred():
    """Holds back Ctrl-C until the block is done, then raises `KeyboardInterrupt`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _fsync(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _write_atomically(path, text):
    """Writes `text` to `path` through a new file that replaces it at once
    (`faults.RunWriteError` if it cannot be written)."""
    partial = path + ".partial"
    with faults.writing(path):
        with open(partial, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)


class RunState(keras.callbacks.Callback):
    """History, best model and backup of a run, committed at each epoch end.

    At the end of epoch `e` (1-based): the model is saved to
    `backup/best-<e>.keras` if `monitor` improved (strictly: the first best
    epoch wins, as in `protocol.best_epoch`), `history.csv` is rewritten with
    row `e`, the weights and optimizer state go to
    `backup/epoch-<e>.weights.h5`, and `backup/state.json` then names them: the
    commit. Only after it `best.keras` is replaced (a hard link to the backup's
    best model) and the files no longer named are removed. Every file is
    written under a new name first, so a kill at any moment leaves the last
    commit intact. Ctrl-C during a commit is held back until it is done.

    Args:
        run_dir: the run's folder.
        state: the committed state to resume from (`read_state`), or `None`.
        history: the committed rows of `history.csv`.
        monitor: the model-selection metric. Defaults to `"val_accuracy"`.
    """

    def __init__(self, run_dir, state=None, history=(), monitor="val_accuracy"):
        super().__init__()
        self.run_dir = run_dir
        self.backup = os.path.join(run_dir, "backup")
        self.state = dict(state) if state else None
        self.rows = list(history)
        self.monitor = monitor
        self.epoch = (state or {}).get("epoch", 0) + 1  # the 1-based epoch in progress

    def on_train_begin(self, logs=None):
        if not self.state:
            return
        path = os.path.join(self.backup, self.state["weights"])
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(path)
        except Exception as error:  # h5py and Keras raise several types for one bad file
            raise BackupError(run_files.unreadable(path, error, self.backup)) from None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        logs = dict(logs or {})
        with _sigint_deferred():
            self._commit(done, logs)

    def _commit(self, done, logs):
        with faults.writing(self.backup):
            os.makedirs(self.backup, exist_ok=True)
        previous = self.state or {}
        value = logs.get(self.monitor)
        value = -math.inf if value is None or math.isnan(value) else float(value)
        state = {
            "epoch": done,
            "weights": f"epoch-{done}.weights.h5",
            "best_epoch": previous.get("best_epoch"),
            "best_value": previous.get("best_value"),
            "best_model": previous.get("best_model"),
        }
        if state["best_epoch"] is None or value > state["best_value"]:
            state.update(best_epoch=done, best_value=value, best_model=f"best-{done}.keras")
            path = os.path.join(self.backup, state["best_model"])
            with faults.writing(path):
                self.model.save(path)
                _fsync(path)
        self.rows = [r for r in self.rows if r["epoch"] < done]
        self.rows.append({"epoch": done, **logs})
        _write_atomically(os.path.join(self.run_dir, "history.csv"), history_text(self.rows))
        path = os.path.join(self.backup, state["weights"])
        faults.save_weights(self.model, path)
        with faults.writing(path):
            _fsync(path)
        _write_atomically(os.path.join(self.backup, "state.json"), json.dumps(state, indent=2))
        self.state = state
        self.epoch = done + 1
        install_best(self.run_dir, state)
        keep = {"state.json", state["weights"], state["best_model"]}
        for name in os.listdir(self.backup):
            if name not in keep:
                _remove(os.path.join(self.backup, name))


def install_best(run_dir, state):
    """Makes `best.keras` the best model that `state` names (a hard link, else a copy)."""
    if not state or not state.get("best_model"):
        return
    source = os.path.join(run_dir, "backup", state["best_model"])
    target = os.path.join(run_dir, "best.keras")
    if not os.path.exists(source):
        return
    if os.path.exists(target) and os.path.samefile(source, target):
        return
    partial = target + ".partial"
    with faults.writing(target):
        _remove(partial)
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
            _fsync(partial)
        os.replace(partial, target)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
