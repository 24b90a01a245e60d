"""Faults during a run that end it in one line and leave its last commit intact.

- **A file cannot be written** (a full disk, `ulimit -f`): `RunWriteError`
  names the file. Every write of a run goes to a new file that replaces the
  old one only once complete (`runner.RunState`), so the epochs committed
  before are intact and `--resume` continues from them once there is space.
  HDF5 needs care: it keeps a file whose write failed open, and flushes it
  again when the last reference to it goes, at the latest while the process
  exits, where a failing flush crashes it (exit 139); `save_weights` empties
  such a file first, so that the flush finds space and succeeds.
- **The training loss becomes non-finite** (NaN or infinite, a learning rate
  far too large): `StopOnNonFiniteLoss` stops at that step with
  `TrainingDiverged`. The epoch is not committed and the run writes no
  result; its earlier epochs stay committed, but resuming them with the same
  settings would diverge again.

(A file-size limit raises `SIGXFSZ`, which would kill the process; Python
ignores that signal from start-up, so the write fails with `EFBIG` instead.)
"""

import contextlib
import math
import os

import keras


class RunWriteError(RuntimeError):
    """A file of a run could not be written; the message names it and says to
    rerun with `--resume` once there is space."""

    def __init__(self, path, error):
        reason = os.strerror(error.errno) if error.errno else " ".join(str(error).split())
        super().__init__(
            f"cannot write {path}: {reason}. Nothing committed is lost: make space (or "
            "raise the file-size limit), then rerun this command with --resume"
        )
        self.path = path


@contextlib.contextmanager
def writing(path):
    """Raises `RunWriteError` naming `path` for an `OSError` in the block."""
    try:
        yield
    except OSError as error:
        raise RunWriteError(path, error) from None


def save_weights(model, path):
    """`model.save_weights(path)`, a failed write raising `RunWriteError` (see above)."""
    with writing(path):
        try:
            model.save_weights(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
            raise


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; `epoch` (1-based) did not finish."""

    def __init__(self, name, value, epoch, step, run_dir):
        committed = {1: "no epoch had finished", 2: f"epoch 1 stays committed in {run_dir}"}.get(
            epoch, f"epochs 1-{epoch - 1} stay committed in {run_dir}"
        )
        super().__init__(
            f"the training {name} became {value} in epoch {epoch} (step {step}), so the run "
            f"stopped without a result; {committed}. With the same settings it would diverge "
            "again: start a new run (another --output) with a smaller --lr"
        )
        self.epoch = epoch


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `TrainingDiverged` after the first step whose logged loss is not finite.

    Every log whose name ends in `loss` (`loss`, `perturbed_loss`) is checked;
    they are the epoch's running means, so one non-finite step makes them
    non-finite for the rest of the epoch.

    Args:
        run_dir: the run's folder, for the message.
    """

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir
        self.epoch = 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if name.endswith("loss") and not math.isfinite(float(value)):
                raise TrainingDiverged(name, float(value), self.epoch, batch + 1, self.run_dir)
