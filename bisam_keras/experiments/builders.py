"""What a run trains with, built from its `RunConfig`: the distribution
strategy, the loss, the model options, the learning-rate schedule and the
optimizer, and the model that `fit` trains."""

import functools
import inspect
import math

import keras
import tensorflow as tf

from bisam_keras.experiments import methods as methods_lib
from bisam_keras.experiments.config import TRAINING_OPTIONS
from bisam_keras.optimizers import SAM, EpochCosineDecay, SharpnessAwareOptimizer, TorchSGD
from bisam_keras.optimizers.schedules import LinearWarmupDecay
from bisam_keras.training import SharpnessAwareModel


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


def _one_hot(splits):
    k = splits.num_classes

    def encode(x, y):
        return x, tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), k)

    return (
        splits.train.map(encode, num_parallel_calls=tf.data.AUTOTUNE),
        splits.validation.map(encode, num_parallel_calls=tf.data.AUTOTUNE),
        splits.test.map(encode, num_parallel_calls=tf.data.AUTOTUNE),
    )


def load_kwargs(config, train=False):
    """`bisam_keras.data.load` arguments of a `RunConfig`.

    Every `load` parameter that `RunConfig` has a field of the same name for
    is passed on. With `train=True`, the run's own training pipeline: `load`'s
    augmentation, the run's Cutout, and whole batches for mSAM
    (`drop_remainder`). Otherwise augmentation and Cutout are off, for
    measuring a run's data as it is (the study, the sharpness command).
    """
    from bisam_keras import data as data_lib

    params = inspect.signature(data_lib.load).parameters
    kwargs = {
        name: getattr(config, name)
        for name in params
        if name not in ("name", "augment", "cutout", "drop_remainder") and hasattr(config, name)
    }
    if train:
        # mSAM needs every training batch to be whole: drop each epoch's remainder.
        kwargs.update(cutout=config.cutout, drop_remainder=config.micro_batch_size is not None)
    else:
        kwargs.update(augment=False, cutout=False)
    return kwargs
