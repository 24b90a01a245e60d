"""CIFAR ResNets (He et al., 2016, Section 4.2): ResNet-20/32/44/56/110.

Three stages of `n` basic blocks with 16, 32 and 64 filters, a 3x3 stem, global
average pooling and a dense classifier: `6n + 2` layers. Shortcuts that change
shape use a strided 1x1 convolution with BatchNorm (option B).

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385
"""

import keras

from bisam_keras.models.layers import (
    batch_norm,
    check_input_shape,
    check_num_classes,
    conv_kwargs,
    logits,
)

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def apply_basic_block(x, filters, stride, weight_decay, name, sync_batchnorm=False):
    """Two 3x3 conv-BN layers with an identity (or projected) shortcut."""
    kwargs = conv_kwargs(weight_decay)
    shortcut = x
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", name=f"{name}_conv1", **kwargs)(x)
    y = batch_norm(sync_batchnorm, f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, 1, padding="same", name=f"{name}_conv2", **kwargs)(y)
    y = batch_norm(sync_batchnorm, f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, stride, name=f"{name}_proj", **kwargs)(x)
        shortcut = batch_norm(sync_batchnorm, f"{name}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(
    name="resnet20",
    num_classes=10,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds a CIFAR ResNet that outputs logits.

    Args:
        name: one of `"resnet20"`, `"resnet32"`, `"resnet44"`, `"resnet56"`,
            `"resnet110"`. Defaults to `"resnet20"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape. Defaults to `(32, 32, 3)`.
        weight_decay: L2 factor on the convolution kernels (`0` for none,
            when the optimizer's `weight_decay` is used instead). Defaults to `0.0`.
        sync_batchnorm: whether BatchNorm statistics are synchronized across
            the replicas of a `tf.distribute` strategy. Defaults to `False`.

    Returns:
        A Functional `keras.Model`.
    """
    if name not in DEPTHS:
        raise ValueError(f"`name` must be one of {sorted(DEPTHS)}. Received: name={name!r}")
    check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    blocks = DEPTHS[name]
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem_conv", **conv_kwargs(weight_decay))(
        inputs
    )
    x = batch_norm(sync_batchnorm, "stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            block_name = f"stage{stage + 1}_block{block + 1}"
            x = apply_basic_block(x, filters, stride, weight_decay, block_name, sync_batchnorm)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, logits(x, num_classes), name=name)
