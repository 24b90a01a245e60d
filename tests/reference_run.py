"""One real run that the tests of resume and faults copy, trained once per process.

Digits with `--subset 300` (270 train / 30 validation, 60 test images),
ResNet-20, plain SGD in batches of 64, 2 epochs: `finished` is the run folder
as the run leaves it, `after_epoch_1` a copy of it taken right after epoch 1's
commit (what a run killed during epoch 2 leaves). `ARGV` is the same run for
`cli.main`, without `--output`.
"""

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile
from pathlib import Path

import keras

from bisam_keras.experiments import RunConfig, runner

FIELDS = dict(
    dataset="digits", subset=300, batch_size=64, model="resnet20", method="sgd", epochs=2, verbose=0
)
ARGV = ["train", "--subset", "300", "--batch-size", "64", "--method", "sgd", "--epochs", "2",
        "--verbose", "0"]  # fmt: skip
RUN = Path("digits", "resnet20", "sgd", "seed0")  # the run folder below --output


@dataclasses.dataclass(frozen=True)
class Reference:
    finished: Path  # the run folder of the finished run
    after_epoch_1: Path  # a copy of it after epoch 1's commit


class _Snapshot(keras.callbacks.Callback):
    """Copies the run folder after epoch 1's commit (callbacks see committed epochs)."""

    def __init__(self, run_dir, to):
        super().__init__()
        self.run_dir, self.to = run_dir, to

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            _copy_tree(self.run_dir, self.to)


@functools.cache
def reference():
    root = Path(tempfile.mkdtemp(prefix="bisam-keras-reference-"))
    atexit.register(shutil.rmtree, root, True)
    config = RunConfig(output=str(root / "finished"), **FIELDS)
    runner.run(config, callbacks=[_Snapshot(config.run_dir(), root / "after-epoch-1" / RUN)])
    return Reference(Path(config.run_dir()), root / "after-epoch-1" / RUN)


def _copy_tree(source, target):
    """`shutil.copytree` but for the lock, hard links (`best.keras` and the
    backup's best model) staying hard links."""
    copied = {}

    def copy(path, destination):
        key = (os.stat(path).st_dev, os.stat(path).st_ino)
        if key in copied:
            os.link(copied[key], destination)
        else:
            copied[key] = shutil.copy2(path, destination)

    shutil.copytree(source, target, copy_function=copy, ignore=shutil.ignore_patterns(".lock"))


def copy_run(run_dir, output):
    """Copies the run folder `run_dir` to its place below `output`; returns the copy's path."""
    target = Path(output) / RUN
    _copy_tree(run_dir, target)
    return target


def files(run_dir):
    """`{path below run_dir: bytes}` of every file of a run folder."""
    return {
        os.path.relpath(os.path.join(root, name), run_dir): Path(root, name).read_bytes()
        for root, _, names in os.walk(run_dir)
        for name in names
    }


def config(output, **fields):
    """The reference run's `RunConfig` with its folder below `output`."""
    return RunConfig(output=str(output), **{**FIELDS, **fields})
