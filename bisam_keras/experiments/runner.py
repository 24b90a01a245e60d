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

import contextlib
import csv
import dataclasses
import functools
import json
import math
import numbers
import os
import shutil
import signal
import threading
import time

import keras
import tensorflow as tf

from bisam_keras import data as data_lib
from bisam_keras import models as models_lib
from bisam_keras.data import verify as verify_lib
from bisam_keras.experiments import faults, folders, lock, protocol, run_files
from bisam_keras.experiments import methods as methods_lib
from bisam_keras.experiments.run_files import BackupError, read_state
from bisam_keras.experiments.run_files import load_histories as load_histories
from bisam_keras.experiments.run_files import load_results as load_results
from bisam_keras.optimizers import SAM, EpochCosineDecay, SharpnessAwareOptimizer, TorchSGD
from bisam_keras.training import SharpnessAwareModel


@dataclasses.dataclass
class RunConfig:
    """Everything that defines one run; saved as `config.json` beside it.

    Every field but `optimizer`, `warmup_steps`, `global_clipnorm`,
    `swp_probability` and `sds_fraction` has a `bisam-keras train` flag of the
    same name (`--batch-size` for `batch_size`, `--pretrained` /
    `--no-pretrained` for `pretrained`, ...); the defaults below are those of
    the command line without a preset.

    Attributes:
        dataset: a name from `bisam_keras.data.names()`. Defaults to `"digits"`.
        model: a name from `bisam_keras.models.names()`. Defaults to `"resnet20"`.
        pretrained: start from the model's ImageNet weights
            (`bisam_keras.models.build(..., pretrained=True)`); only for the
            models that have them, the `keras.applications` names and
            `vit_b16`. Without network access and without cached weights the
            build fails with a `RuntimeError` that says what to do.
            Defaults to `False`.
        method: one of `METHODS`. Defaults to `"bisam-neglog"`.
        seed: seeds the data split, label noise, shuffling, augmentation,
            initialization and stochastic perturbation. Defaults to `0`.
        epochs: training epochs; ignored when `steps` is set. Defaults to `10`.
        steps: train exactly this many optimizer steps instead of `epochs`
            epochs, or `None`: the run takes `ceil(steps / steps_per_epoch)`
            epochs, the last one cut short, each ending with the validation
            and test evaluation; the learning-rate schedule spans `steps`.
            Defaults to `None`.
        batch_size: the global batch size. Defaults to `128`.
        lr: the (peak) learning rate. Defaults to `0.1`.
        momentum: SGD momentum. Defaults to `0.9`.
        weight_decay: coupled decay on every trainable variable for SGD
            (where: `weight_decay_mode`), the decoupled decay of AdamW.
            Defaults to `5e-4`.
        optimizer: `"sgd"` or `"adamw"`. Defaults to `"sgd"`.
        schedule: `"cosine"` (decay to 0 over the run, every step),
            `"cosine-epoch"` (`bisam_keras.optimizers.EpochCosineDecay`: decay
            to 0 over the run's epochs, constant within an epoch, PyTorch's
            `CosineAnnealingLR` in the paper's code), `"constant"` or
            `"linear-warmup"` (`LinearWarmupDecay`). Defaults to `"cosine"`.
        warmup_steps: warm-up steps of `"linear-warmup"`. Defaults to `0`.
        global_clipnorm: gradient clipping by global norm, or `None`.
            Defaults to `None`.
        label_smoothing: of the cross-entropy, in `[0, 1)`. Defaults to `0.1`.
        label_noise: fraction of training labels corrupted. Defaults to `0.0`.
        rho: the perturbation radius. Defaults to `0.05`.
        mu: the lower bound's temperature; `None` for the bound's default.
            Defaults to `None`.
        alpha: the tanh bound's slope. Defaults to `0.1`.
        eta: the adaptive methods' offset. Defaults to `0.0`.
        swp_probability: `beta` of the efficient methods. Defaults to `0.5`.
        sds_fraction: `gamma` of the efficient methods. Defaults to `0.5`.
        micro_batch_size: mSAM's micro-batch size, or `None`; it must divide
            the (per-replica) batch, and the training split then drops its
            last partial batch of each epoch (`drop_remainder=True`).
            Defaults to `None`.
        validation_fraction: held out for model selection, in `(0, 1)`.
            Defaults to `0.1`.
        subset: use only this many training examples, or `None`. Defaults to `None`.
        data_dir: an offline TFRecord folder, or `None` for tfds. Defaults to `None`.
        tfds_dir: the tensorflow-datasets data dir. Defaults to `None`.
        output: the folder of the runs. Defaults to `"runs"`.
        jit_compile: compile the train step with XLA. Defaults to `False`.
        strategy: `"auto"`, `"mirrored"`, `"multiworker"` or `"none"`.
            Defaults to `"auto"`.
        sync_perturbation: all-reduce the ascent gradient across replicas.
            Defaults to `False`.
        verbose: `fit`'s verbosity (`3` is `2` for `fit`; the command line
            then also shows TensorFlow's log lines). Defaults to `2`.
        label_smoothing_convention: `"keras"`: the targets are
            `y (1 - ls) + ls / K`; `"authors"`: the paper's code's
            `smooth_crossentropy`, true class `1 - ls` and every other class
            `ls / (K - 1)`, which is Keras' smoothing `ls K / (K - 1)`.
            Defaults to `"keras"`.
        weight_decay_mode: for SGD, `"l2"`: an L2 regularizer on every
            trainable variable (its gradient `weight_decay * (w + e)` is
            taken at the perturbed weights, and the logged loss includes it);
            `"at-w"`: the wrapper's coupled `weight_decay`, `weight_decay * w`
            added to the descent gradient (PyTorch's `SGD(weight_decay)` in the
            paper's code; for the `sgd` method `TorchSGD(coupled_weight_decay=...)`
            on a plain model, with Keras' momentum a `SAM` with `rho=0`).
            Defaults to `"l2"`.
        momentum_convention: `"keras"`: `keras.optimizers.SGD`; `"torch"`:
            `bisam_keras.optimizers.TorchSGD` (PyTorch's momentum; the two
            differ when the learning rate changes). Defaults to `"keras"`.
        cutout: the paper's code's Cutout on training images (see
            `bisam_keras.data.load`). Defaults to `False`.
        validation_split: `"seeded"` (by the run's seed) or `"authors"` (the
            paper's code's fixed split, the same for every seed). Defaults to
            `"seeded"`.
        stats_from: normalization statistics from the `"train"` part or from
            `"all"` the training set. Defaults to `"train"`.
        verify: how much of an offline TFRecord folder is checked before
            training (`bisam_keras.data.load`): `"records"` (checksums,
            features, labels, image signatures), `"full"` (also decodes every
            image) or `None`. It does not change the run's numbers.
            Defaults to `"records"`.
        model_variant: `"keras"` or `"authors"` (the paper's code's
            architecture and initialization; passed to
            `bisam_keras.models.build(..., variant=...)`). Defaults to `"keras"`.

    Every float field must be finite (`FLOAT_SETTINGS`); `validate` raises a
    `ValueError` naming the field otherwise.

    `config.json` records `None` for the settings the run does not use
    (`recorded_config`), and `--resume` compares the recorded settings.
    """

    dataset: str = "digits"
    model: str = "resnet20"
    method: str = "bisam-neglog"
    seed: int = 0
    epochs: int = 10
    steps: int | None = None
    pretrained: bool = False
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    warmup_steps: int = 0
    global_clipnorm: float | None = None
    label_smoothing: float = 0.1
    label_noise: float = 0.0
    rho: float = 0.05
    mu: float | None = None
    alpha: float = 0.1
    eta: float = 0.0
    swp_probability: float = 0.5
    sds_fraction: float = 0.5
    micro_batch_size: int | None = None
    validation_fraction: float = 0.1
    subset: int | None = None
    data_dir: str | None = None
    tfds_dir: str | None = None
    output: str = "runs"
    jit_compile: bool = False
    strategy: str = "auto"
    sync_perturbation: bool = False
    verbose: int = 2
    label_smoothing_convention: str = "keras"
    weight_decay_mode: str = "l2"
    momentum_convention: str = "keras"
    cutout: bool = False
    validation_split: str = "seeded"
    stats_from: str = "train"
    model_variant: str = "keras"
    verify: str | None = "records"

    def run_dir(self):
        return os.path.join(self.output, self.dataset, self.model, self.method, f"seed{self.seed}")

    def validate(self):
        methods_lib.check_method(self.method)
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
        for name in ("steps", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(
                    f"`{name}` must be None or an int >= 1. Received: {name}={value!r}"
                )
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                "`micro_batch_size` must divide `batch_size`. Received: "
                f"micro_batch_size={self.micro_batch_size}, batch_size={self.batch_size}"
            )
        if not isinstance(self.pretrained, bool):
            raise ValueError(
                f"`pretrained` must be a bool. Received: pretrained={self.pretrained!r}"
            )
        if self.pretrained and "pretrained" not in models_lib.options(self.model):
            raise ValueError(
                "`pretrained`=True needs a model with pretrained weights (a "
                f"keras.applications name or vit_b16), and {self.model!r} has none. "
                f"Received: model={self.model!r}, pretrained=True"
            )
        for name, minimum in FLOAT_SETTINGS.items():
            _check_real(name, getattr(self, name), minimum)
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                "`validation_fraction` must be in (0, 1): the run selects its epoch by "
                f"validation accuracy. Received: validation_fraction={self.validation_fraction!r}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). "
                f"Received: label_smoothing={self.label_smoothing}"
            )
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"`optimizer` must be 'sgd' or 'adamw'. Received: {self.optimizer!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {list(STRATEGIES)}. "
                f"Received: strategy={self.strategy!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {list(SCHEDULES)}. Received: schedule={self.schedule!r}"
            )
        check_training_options(self)
        return self


FLOAT_SETTINGS = {
    **dict.fromkeys(("lr", "momentum", "weight_decay", "rho", "eta", "global_clipnorm"), 0.0),
    **dict.fromkeys(("mu", "alpha", "label_smoothing", "label_noise", "validation_fraction")),
    **dict.fromkeys(("swp_probability", "sds_fraction")),
}
"""The float fields of `RunConfig` and their lower bound (`None`: none); each must be finite."""
OPTIONAL_SETTINGS = ("mu", "global_clipnorm")


def _check_real(name, value, minimum=None):
    """Raises `ValueError` naming `name` unless `value` is a finite number `>= minimum`."""
    if value is None and name in OPTIONAL_SETTINGS:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (minimum is not None and value < minimum):
        optional = "None or " if name in OPTIONAL_SETTINGS else ""
        bound = "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(
            f"`{name}` must be {optional}a finite number{bound}. Received: {name}={value!r}"
        )


STRATEGIES = ("auto", "mirrored", "multiworker", "none")
SCHEDULES = ("cosine", "cosine-epoch", "constant", "linear-warmup")
TRAINING_OPTIONS = {
    "label_smoothing_convention": ("keras", "authors"),
    "weight_decay_mode": ("l2", "at-w"),
    "momentum_convention": ("keras", "torch"),
    "validation_split": ("seeded", "authors"),
    "stats_from": ("train", "all"),
    "model_variant": ("keras", "authors"),
}
"""The choices of the `RunConfig` fields that pick Keras' or the paper's code's behaviour."""


def check_training_options(config):
    """Raises `ValueError` naming the first invalid field of `TRAINING_OPTIONS`, `cutout`
    or `verify`."""
    for name, choices in TRAINING_OPTIONS.items():
        value = getattr(config, name)
        if value not in choices:
            raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")
    if not isinstance(config.cutout, bool):
        raise ValueError(f"`cutout` must be a bool. Received: cutout={config.cutout!r}")
    verify_lib.check_level(config.verify)


def keras_label_smoothing(smoothing, num_classes, convention="keras"):
    """Keras' `label_smoothing` that gives the targets of `convention`.

    Keras' targets are `y (1 - ls) + ls / K`. The paper's code
    (`smooth_crossentropy(smoothing=s)`) gives the true class `1 - s` and each
    other class `s / (K - 1)`; these are Keras' targets for `ls = s K / (K - 1)`
    (true class `1 - ls + ls / K = 1 - s`, others `ls / K = s / (K - 1)`).

    Args:
        smoothing: the smoothing in `convention`'s terms, in `[0, 1)`.
        num_classes: `K`, an int `>= 2`.
        convention: `"keras"` or `"authors"`. Defaults to `"keras"`.

    Returns:
        A float for `keras.losses.CategoricalCrossentropy(label_smoothing=...)`.
    """
    if convention not in TRAINING_OPTIONS["label_smoothing_convention"]:
        raise ValueError(
            "`label_smoothing_convention` must be 'keras' or 'authors'. "
            f"Received: label_smoothing_convention={convention!r}"
        )
    if convention == "keras":
        return float(smoothing)
    return float(smoothing) * num_classes / (num_classes - 1)


def build_loss(config, num_classes):
    """The run's cross-entropy on one-hot labels, with `config`'s label smoothing."""
    return keras.losses.CategoricalCrossentropy(
        from_logits=True,
        label_smoothing=keras_label_smoothing(
            config.label_smoothing, num_classes, config.label_smoothing_convention
        ),
    )


def model_build_options(config):
    """The `bisam_keras.models.build` options of `config` (`pretrained`, `variant`).

    `variant` is passed only when it is not `"keras"` (the default of `build`).
    """
    options = {"pretrained": True} if config.pretrained else {}
    if config.model_variant != "keras":
        options["variant"] = config.model_variant
    return options


def uses_coupled_l2(config):
    """Whether the run puts its weight decay into the loss as an L2 regularizer."""
    return config.optimizer == "sgd" and config.weight_decay_mode == "l2"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# Settings that only say how or where a run is carried out: `--resume` may
# change them (the run's numbers do not depend on them beyond float rounding).
RESUMABLE_CHANGES = ("verbose", "output", "data_dir", "tfds_dir", "jit_compile", "verify")


def unused_settings(config):
    """The names of the fields that `config`'s method, optimizer and schedule ignore."""
    method = config["method"] if isinstance(config, dict) else config.method
    get = config.get if isinstance(config, dict) else functools.partial(getattr, config)
    unused = []
    bound = methods_lib.lower_bound_of(method)
    if method == "sgd":
        unused += ["rho", "sync_perturbation"]
    if bound is None:
        unused.append("mu")
    if bound != "tanh":
        unused.append("alpha")
    if not methods_lib.is_adaptive(method):
        unused.append("eta")
    if not methods_lib.is_efficient(method):
        unused += ["swp_probability", "sds_fraction"]
    if get("optimizer") == "adamw":
        unused += ["momentum", "momentum_convention", "weight_decay_mode"]
    if not get("label_smoothing"):
        unused.append("label_smoothing_convention")
    if get("schedule") != "linear-warmup":
        unused.append("warmup_steps")
    return unused


def recorded_config(config):
    """`config` as `config.json` records it: `None` for the settings it does not use."""
    values = dataclasses.asdict(config)
    for name in unused_settings(config):
        values[name] = None
    return values


def config_differences(saved, config):
    """`[(name, saved value, new value)]` for the settings of `config` that
    differ from a saved `config.json`, but for `RESUMABLE_CHANGES`.

    A field missing from `saved` (a run saved before the field existed) counts
    as its default.
    """
    defaults = dataclasses.asdict(RunConfig())
    saved = {**defaults, **{k: v for k, v in saved.items() if k in defaults}}
    for name in unused_settings(saved):
        saved[name] = None
    new = recorded_config(config)
    return [
        (name, saved[name], new[name])
        for name in defaults
        if name not in RESUMABLE_CHANGES and not _same(saved[name], new[name])
    ]


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def make_strategy(name):
    """The `tf.distribute` strategy for `--strategy`.

    `auto` is `MirroredStrategy` over all visible GPUs when there are several,
    else the default strategy; `mirrored` uses all local GPUs (or the CPU);
    `multiworker` reads the cluster from `TF_CONFIG`. One instance of each
    per process: separate strategies over the same devices can mix up their
    collective operations.
    """
    if name == "mirrored" or (name == "auto" and len(tf.config.list_physical_devices("GPU")) > 1):
        return _shared_strategy("mirrored")
    if name == "multiworker":
        return _shared_strategy("multiworker")
    return tf.distribute.get_strategy()


@functools.cache
def _shared_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


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


def history_text(rows):
    """`history.csv` (LF line endings) from `[{epoch: 1-based, metric: value}]`."""
    fields = ["epoch"]
    for row in rows:
        fields += [name for name in row if name not in fields]
    lines = [",".join(fields)]
    for row in rows:
        lines.append(",".join(_csv_value(row.get(name, "")) for name in fields))
    return "\n".join(lines) + "\n"


def _csv_value(value):
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


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


def training_model(inner, optimizer):
    """The model that `fit` trains: `inner` wrapped in `SharpnessAwareModel`
    whenever `optimizer` is a sharpness-aware wrapper, else `inner` itself (the
    `sgd` method, with PyTorch's momentum and decay in `TorchSGD`). A wrapper
    needs the sharpness-aware step."""
    if isinstance(optimizer, SharpnessAwareOptimizer):
        return SharpnessAwareModel(inner)
    return inner


def add_coupled_weight_decay(model, weight_decay):
    """L2 with gradient `weight_decay * w` on every trainable variable.

    This is PyTorch's `SGD(weight_decay=...)`, which the paper used: the decay
    goes through momentum, unlike Keras' decoupled `weight_decay`.
    """
    if weight_decay > 0:
        regularizer = keras.regularizers.L2(weight_decay / 2.0)
        for variable in model.trainable_variables:
            variable.regularizer = regularizer


def learning_rate_schedule(config, total_steps, steps_per_epoch=None):
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=total_steps)
    if config.schedule == "cosine-epoch":
        # PyTorch's CosineAnnealingLR(T_max=epochs), stepped once per epoch.
        steps_per_epoch = steps_per_epoch or total_steps
        epochs = math.ceil(total_steps / steps_per_epoch)
        return EpochCosineDecay(config.lr, epochs, steps_per_epoch)
    return LinearWarmupDecay(config.lr, min(config.warmup_steps, total_steps), total_steps)


@keras.saving.register_keras_serializable(package="bisam_keras")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then linear decay to 0."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        up = self.peak * step / warmup
        down = self.peak * tf.maximum(0.0, 1.0 - (step - self.warmup_steps) / decay)
        return tf.where(step < self.warmup_steps, up, down)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def build_optimizer(config, total_steps, steps_per_epoch=None, wrapped_sgd=False):
    """The run's optimizer (`methods.make_optimizer` around the inner SGD or AdamW).

    `wrapped_sgd=True` resumes an `sgd` run with coupled decay that an earlier
    version saved as a `SharpnessAwareModel` with `SAM(rho=0)`
    (`run_files.wraps_the_model`): it gets that wrapper again, so its saved
    weights and optimizer state load.
    """
    lr = learning_rate_schedule(config, total_steps, steps_per_epoch)
    if config.optimizer == "sgd":
        sgd = TorchSGD if config.momentum_convention == "torch" else keras.optimizers.SGD
        inner = sgd(lr, momentum=config.momentum, global_clipnorm=config.global_clipnorm)
    else:
        inner = keras.optimizers.AdamW(
            lr, weight_decay=config.weight_decay, global_clipnorm=config.global_clipnorm
        )
    coupled = config.weight_decay if config.weight_decay_mode == "at-w" else 0.0
    if wrapped_sgd and config.method == "sgd" and coupled:
        return SAM(inner, rho=0.0, weight_decay=coupled, seed=config.seed)
    return methods_lib.make_optimizer(
        config.method,
        inner,
        rho=config.rho,
        mu=config.mu if methods_lib.lower_bound_of(config.method) else None,
        alpha=config.alpha,
        eta=config.eta,
        swp_probability=config.swp_probability,
        sds_fraction=config.sds_fraction,
        micro_batch_size=config.micro_batch_size,
        sync_perturbation=config.sync_perturbation,
        seed=config.seed,
        weight_decay=coupled,
    )


def read_history(path):
    """Per-epoch metrics from `history.csv`, the last row of each epoch winning."""
    history = {}
    for row in history_rows(path):
        for name, value in row.items():
            if name != "epoch":
                history.setdefault(name, []).append(value)
    return history


def history_rows(path):
    """The rows of `history.csv` as `[{epoch, metric: float}]`, one per epoch
    (the last row of each epoch wins), epochs numbered from 1; a missing file
    has no rows."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(row["epoch"])
            except (TypeError, ValueError):
                continue
            rows[epoch] = {
                "epoch": epoch,
                **{
                    name: float(value) if value not in ("", None) else math.nan
                    for name, value in row.items()
                    if name not in ("epoch", None)
                },
            }
    return [rows[epoch] for epoch in sorted(rows)]


def _one_hot(splits):
    k = splits.num_classes

    def encode(x, y):
        return x, tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), k)

    return (
        splits.train.map(encode, num_parallel_calls=tf.data.AUTOTUNE),
        splits.validation.map(encode, num_parallel_calls=tf.data.AUTOTUNE),
        splits.test.map(encode, num_parallel_calls=tf.data.AUTOTUNE),
    )


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
    # mSAM needs every training batch to be whole: drop each epoch's remainder.
    drop_remainder = config.micro_batch_size is not None
    splits = data_lib.load(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
        label_noise=config.label_noise,
        subset=config.subset,
        tfds_dir=config.tfds_dir,
        drop_remainder=drop_remainder,
        cutout=config.cutout,
        validation_split=config.validation_split,
        stats_from=config.stats_from,
        verify=config.verify,
    )
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


def check_resumable(config):
    """Raises `ValueError` listing each setting of `config` that differs from
    its run's `config.json` (`config_differences`), in one line, and
    `run_files.RunFileError` if `config.json` cannot be read."""
    run_dir = config.run_dir()
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or "method" not in saved:
            raise ValueError("not a run configuration")
    except (OSError, ValueError) as error:
        raise run_files.RunFileError(
            f"cannot --resume the run in {run_dir}: its config.json cannot be read "
            f"({' '.join(str(error).split())}). Choose another --output for a new run."
        ) from None
    differences = config_differences(saved, config)
    if not differences:
        return
    listed = ", ".join(f"`{name}` {old!r} -> {new!r}" for name, old, new in differences)
    finished = os.path.exists(os.path.join(run_dir, "result.json"))
    what = "finished" if finished else "interrupted"
    raise ValueError(
        f"--resume would change the settings of the {what} run in {run_dir} (saved -> new): "
        f"{listed}. Resume it with its own settings, or choose another --output (or seed) "
        "for a new run."
    )
