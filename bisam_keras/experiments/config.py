"""A run's configuration: `RunConfig`, its checks, and what `--resume` compares.

`config.json` records every field of `RunConfig`, `None` for the settings the
run does not use (`recorded_config`); `--resume` refuses a configuration that
differs from it in anything but `RESUMABLE_CHANGES` (`check_resumable`).
"""

import dataclasses
import functools
import json
import math
import numbers
import os

from bisam_keras.experiments import method_names as methods_lib
from bisam_keras.experiments import run_files


def setting(default, *, flag=False, preset=False, resumable=False):
    """A `RunConfig` field: its default and where else it appears.

    Args:
        default: the field's default value.
        flag: `make_configs` (`bisam-keras train` / `compare`) takes its value
            from the parsed flag of the same name (`--batch-size` for
            `batch_size`) when one is given. Defaults to `False`.
        preset: a preset of `presets.PRESETS` may set it (the key of the same
            name). Defaults to `False`.
        resumable: `--resume` may change it (`RESUMABLE_CHANGES`). Defaults to `False`.
    """
    metadata = {"flag": flag, "preset": preset, "resumable": resumable}
    return dataclasses.field(default=default, metadata=metadata)


def settings(kind, config_class=None):
    """The names of `config_class`'s fields (`RunConfig`'s by default) declared
    with `kind` (`"flag"`, `"preset"` or `"resumable"`) in `setting`."""
    fields = dataclasses.fields(config_class or RunConfig)
    return tuple(f.name for f in fields if f.metadata.get(kind))


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

    dataset: str = setting("digits", flag=True, preset=True)
    model: str = setting("resnet20", flag=True)
    method: str = setting("bisam-neglog", flag=True)
    seed: int = setting(0)
    epochs: int = setting(10, flag=True)
    steps: int | None = setting(None, flag=True)
    pretrained: bool = setting(False, flag=True, preset=True)
    batch_size: int = setting(128, flag=True, preset=True)
    lr: float = setting(0.1, flag=True, preset=True)
    momentum: float = setting(0.9, flag=True, preset=True)
    weight_decay: float = setting(5e-4, flag=True, preset=True)
    optimizer: str = setting("sgd", preset=True)
    schedule: str = setting("cosine", flag=True, preset=True)
    warmup_steps: int = setting(0, preset=True)
    global_clipnorm: float | None = setting(None, preset=True)
    label_smoothing: float = setting(0.1, flag=True, preset=True)
    label_noise: float = setting(0.0, flag=True)
    rho: float = setting(0.05, flag=True)
    mu: float | None = setting(None, flag=True)
    alpha: float = setting(0.1, flag=True, preset=True)
    eta: float = setting(0.0, flag=True)
    swp_probability: float = setting(0.5, preset=True)
    sds_fraction: float = setting(0.5, preset=True)
    micro_batch_size: int | None = setting(None, flag=True, preset=True)
    validation_fraction: float = setting(0.1, flag=True)
    subset: int | None = setting(None, flag=True)
    data_dir: str | None = setting(None, flag=True, resumable=True)
    tfds_dir: str | None = setting(None, flag=True, resumable=True)
    output: str = setting("runs", resumable=True)
    jit_compile: bool = setting(False, resumable=True)
    strategy: str = setting("auto")
    sync_perturbation: bool = setting(False)
    verbose: int = setting(2, resumable=True)
    label_smoothing_convention: str = setting("keras", flag=True, preset=True)
    weight_decay_mode: str = setting("l2", flag=True, preset=True)
    momentum_convention: str = setting("keras", flag=True, preset=True)
    cutout: bool = setting(False, flag=True, preset=True)
    validation_split: str = setting("seeded", flag=True, preset=True)
    stats_from: str = setting("train", flag=True, preset=True)
    model_variant: str = setting("keras", flag=True, preset=True)
    verify: str | None = setting("records", flag=True, resumable=True)

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
        from bisam_keras import models as models_lib  # TensorFlow, once a run is built

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
    from bisam_keras.data import verify as verify_lib  # TensorFlow, once a run is built

    verify_lib.check_level(config.verify)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


RESUMABLE_CHANGES = settings("resumable")
"""The settings that only say how or where a run is carried out: `--resume`
may change them (the run's numbers do not depend on them beyond float rounding)."""


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
    defaults = dataclasses.asdict(type(config)())
    resumable = settings("resumable", type(config))
    saved = {**defaults, **{k: v for k, v in saved.items() if k in defaults}}
    for name in unused_settings(saved):
        saved[name] = None
    new = recorded_config(config)
    return [
        (name, saved[name], new[name])
        for name in defaults
        if name not in resumable and not _same(saved[name], new[name])
    ]


def _same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


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
