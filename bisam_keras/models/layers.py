"""Helpers shared by the model builders: argument checks and layer factories."""

import keras

from bisam_keras.models.fused_batch_norm import FusedBatchNormalization


def check_num_classes(num_classes):
    """Raises `ValueError` unless `num_classes` is an int >= 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}"
        )


def check_input_shape(input_shape):
    """Returns `input_shape` as a tuple `(height, width, channels)` of positive ints."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (
        shape is None
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ValueError(
            "`input_shape` must be a tuple `(height, width, channels)` of positive ints. "
            f"Received: input_shape={input_shape!r}"
        )
    return shape


def check_rate(value, name):
    """Raises `ValueError` unless `value` is a number in `[0, 1)`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")


def conv_kwargs(weight_decay, use_bias=False):
    """Keyword arguments for the zoo's convolutions: He init, optional L2 on the kernel."""
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or (weight_decay < 0)
    ):
        raise ValueError(
            f"`weight_decay` must be a number >= 0. Received: weight_decay={weight_decay!r}"
        )
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    return dict(use_bias=use_bias, kernel_initializer="he_normal", kernel_regularizer=regularizer)


def batch_norm(sync_batchnorm, name):
    """A BatchNorm layer: fused (per-replica statistics), or synchronized across replicas.

    `momentum=0.9` and `epsilon=1e-5` are PyTorch's defaults (its momentum 0.1
    weighs the new batch), which the paper's CIFAR models were trained with.
    Per-replica layers run TensorFlow's fused kernel (`FusedBatchNormalization`);
    `sync_batchnorm` layers are Keras' `BatchNormalization(synchronized=True)`.
    """
    if sync_batchnorm:
        return keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, synchronized=True, name=name
        )
    return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def logits(x, num_classes):
    """The float32 dense classifier every zoo model ends with (no softmax)."""
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
