"""CIFAR DenseNet-121 (Huang et al., 2017) with bottlenecks and compression (DenseNet-BC).

Growth rate `k = 32`, dense blocks of 6, 12, 24 and 16 layers, each layer

```
layer(x) = concat([x, conv3x3_k(relu(bn(conv1x1_4k(relu(bn(x))))))])
```

and transitions `avgpool2x2(conv1x1(relu(bn(x))))` that halve the channels
(compression 0.5). The stem is a single 3x3 convolution with `2k` filters and
no pooling, as in the pytorch-cifar code; then BN-ReLU, global average pooling
and a dense classifier (6.96M parameters at 10 classes).

Reference: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely
Connected Convolutional Networks", CVPR 2017, https://arxiv.org/abs/1608.06993
"""

import keras

from bisam_keras.models.layers import (
    batch_norm,
    check_input_shape,
    check_num_classes,
    conv_kwargs,
    logits,
)

# name: (layers per dense block, growth rate)
CONFIGS = {"densenet121": ((6, 12, 24, 16), 32)}
COMPRESSION = 0.5


def apply_dense_layer(x, growth, weight_decay, sync_batchnorm, name):
    """A bottleneck layer whose `growth` new channels are concatenated to `x`."""
    kwargs = conv_kwargs(weight_decay)
    y = batch_norm(sync_batchnorm, f"{name}_bn1")(x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(4 * growth, 1, name=f"{name}_conv1", **kwargs)(y)
    y = batch_norm(sync_batchnorm, f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = keras.layers.Conv2D(growth, 3, padding="same", name=f"{name}_conv2", **kwargs)(y)
    return keras.layers.Concatenate(name=f"{name}_concat")([y, x])


def apply_transition(x, weight_decay, sync_batchnorm, name):
    """BN-ReLU, a 1x1 convolution to half the channels, 2x2 average pooling."""
    filters = int(x.shape[-1] * COMPRESSION)
    x = batch_norm(sync_batchnorm, f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    x = keras.layers.Conv2D(filters, 1, name=f"{name}_conv", **conv_kwargs(weight_decay))(x)
    return keras.layers.AveragePooling2D(2, name=f"{name}_pool")(x)


def densenet(
    name="densenet121",
    num_classes=10,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds a CIFAR DenseNet that outputs logits.

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
    x = keras.layers.Conv2D(
        2 * growth, 3, padding="same", name="stem_conv", **conv_kwargs(weight_decay)
    )(inputs)
    for block, size in enumerate(block_sizes, start=1):
        for layer in range(1, size + 1):
            x = apply_dense_layer(
                x, growth, weight_decay, sync_batchnorm, f"block{block}_layer{layer}"
            )
        if block < len(block_sizes):
            x = apply_transition(x, weight_decay, sync_batchnorm, f"transition{block}")
    x = batch_norm(sync_batchnorm, "final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, logits(x, num_classes), name=name)
