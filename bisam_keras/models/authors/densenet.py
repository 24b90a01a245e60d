"""The authors' DenseNet-121 (`model/densenet.py` of LIONS-EPFL/BiSAM).

The kuangliu/pytorch-cifar DenseNet the authors trained has the zoo's
structure (3x3 stem with `2k` filters and no pooling, bottleneck layers
`concat([conv3x3(relu(bn(conv1x1(relu(bn(x)))))), x])`, transitions to
`floor(c / 2)` channels, BN-ReLU and 4x4 average pooling, global on 32x32
images) and parameter count, 6,956,298 at 10 classes. It differs in the
initialization: nothing re-initializes their layers, so every convolution
and the classifier keep PyTorch's default `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`
weights (the zoo: truncated He normal, Glorot), and the classifier's bias the
same uniform (the zoo: zero). Layer names are the PyTorch module paths with
`.` replaced by `_` (`dense2_3_conv1`, `trans1_bn`), except the classifier,
`logits` (theirs: `linear`).
"""

import keras

from bisam_keras.models.authors.layers import (
    batch_norm,
    conv,
    dense,
    torch_default_bias,
    torch_default_kernel,
)
from bisam_keras.models.densenet import CONFIGS
from bisam_keras.models.layers import check_input_shape, check_num_classes


def apply_bottleneck(x, growth, weight_decay, sync_batchnorm, name):
    """Their `Bottleneck(in_planes, growth)`: `growth` channels concatenated before `x`."""
    y = batch_norm(sync_batchnorm, f"{name}_bn1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = conv(y, 4 * growth, 1, 1, f"{name}_conv1", weight_decay, torch_default_kernel)
    y = batch_norm(sync_batchnorm, f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = conv(y, growth, 3, 1, f"{name}_conv2", weight_decay, torch_default_kernel)
    return keras.layers.Concatenate(name=f"{name}_cat")([y, x])


def apply_transition(x, weight_decay, sync_batchnorm, name):
    """Their `Transition(in_planes, floor(in_planes / 2))`."""
    y = batch_norm(sync_batchnorm, f"{name}_bn")(x)
    y = keras.layers.ReLU(name=f"{name}_relu")(y)
    y = conv(y, x.shape[-1] // 2, 1, 1, f"{name}_conv", weight_decay, torch_default_kernel)
    return keras.layers.AveragePooling2D(2, name=f"{name}_pool")(y)


def authors_densenet(
    name="densenet121",
    num_classes=10,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds the authors' DenseNet that outputs logits.

    Args:
        name: `"densenet121"`. Defaults to `"densenet121"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape, at least 8x8 (three 2x2 poolings).
            Defaults to `(32, 32, 3)`.
        weight_decay: L2 factor on the convolution kernels. Defaults to `0.0`.
        sync_batchnorm: whether BatchNorm statistics are synchronized across
            the replicas of a `tf.distribute` strategy. Defaults to `False`.

    Returns:
        A Functional `keras.Model`.
    """
    if name not in CONFIGS:
        raise ValueError(f"`name` must be one of {sorted(CONFIGS)}. Received: name={name!r}")
    check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    if min(input_shape[:2]) < 8:
        raise ValueError(
            f"`input_shape` must be at least 8x8 for {name} (three 2x2 poolings). "
            f"Received: input_shape={input_shape}"
        )
    block_sizes, growth = CONFIGS[name]
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 2 * growth, 3, 1, "conv1", weight_decay, torch_default_kernel)
    for block, size in enumerate(block_sizes, start=1):
        for layer in range(size):
            x = apply_bottleneck(x, growth, weight_decay, sync_batchnorm, f"dense{block}_{layer}")
        if block < len(block_sizes):
            x = apply_transition(x, weight_decay, sync_batchnorm, f"trans{block}")
    x = batch_norm(sync_batchnorm, "bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    channels = x.shape[-1]
    outputs = dense(
        x,
        num_classes,
        "logits",
        torch_default_kernel(),
        torch_default_bias(channels),
        dtype="float32",
    )
    return keras.Model(inputs, outputs, name=name)
