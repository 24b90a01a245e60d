"""CIFAR VGG with BatchNorm (Simonyan & Zisserman, 2015): VGG-11/13/16/19-BN.

Stacks of 3x3 conv-BN-ReLU layers separated by 2x2 max-pools (`"M"`), in the
configurations of the widely used pytorch-cifar code; on 32x32 images the last
pool leaves a 1x1x512 map, which a single dense layer classifies (VGG-19-BN:
20.04M parameters at 10 classes).

Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015, https://arxiv.org/abs/1409.1556
"""

import keras

from bisam_keras.models.layers import (
    batch_norm,
    check_input_shape,
    check_num_classes,
    conv_kwargs,
    logits,
)

CONFIGS = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13_bn": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
    + [512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg(
    name="vgg16_bn",
    num_classes=10,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds a CIFAR VGG-BN that outputs logits.

    Args:
        name: one of `"vgg11_bn"`, `"vgg13_bn"`, `"vgg16_bn"`, `"vgg19_bn"`.
            Defaults to `"vgg16_bn"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape; larger images are globally averaged
            after the last pool. Defaults to `(32, 32, 3)`.
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
    if min(input_shape[:2]) < 32:
        raise ValueError(
            f"`input_shape` must be at least 32x32 for {name} (five 2x2 max-pools). "
            f"Received: input_shape={input_shape}"
        )
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    conv, pool = 0, 0
    for item in CONFIGS[name]:
        if item == "M":
            pool += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool}")(x)
            continue
        conv += 1
        x = keras.layers.Conv2D(
            item, 3, padding="same", name=f"conv{conv}", **conv_kwargs(weight_decay, use_bias=True)
        )(x)
        x = batch_norm(sync_batchnorm, f"bn{conv}")(x)
        x = keras.layers.ReLU(name=f"relu{conv}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="flatten")(x)
    return keras.Model(inputs, logits(x, num_classes), name=name)
