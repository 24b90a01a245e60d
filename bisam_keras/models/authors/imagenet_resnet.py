"""The authors' ImageNet ResNets (`model/resnet_imagenet.py` of LIONS-EPFL/BiSAM).

Bottleneck ResNets that differ from `keras.applications.ResNet50` (and from
torchvision's): a 3x3 stride-2 stem convolution (not 7x7) with BatchNorm,
ReLU and a 3x3 stride-2 max-pool (padding 1); the stride of a downsampling
bottleneck on its 3x3 convolution (ResNet "v1.5"; Keras puts it on the first
1x1); no convolution biases; 1x1-conv + BatchNorm shortcuts where the shape
changes; 7x7 average pooling (global on 224x224 images) and a dense
classifier. Nothing re-initializes their layers, so every convolution and the
classifier keep PyTorch's default `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`
weights and the classifier's bias the same uniform.

Trainable parameters at 1000 classes: ResNet-50 25,549,352; ResNet-101
44,541,480; ResNet-152 60,185,128. Layer names are the PyTorch module paths
with `.` replaced by `_` (`layer3_0_shortcut_0`), except the classifier,
`logits` (theirs: `classifier`).
"""

import keras

from bisam_keras.models.authors.layers import (
    batch_norm,
    conv,
    dense,
    torch_default_bias,
    torch_default_kernel,
)
from bisam_keras.models.layers import check_input_shape, check_num_classes

# name: bottleneck blocks per stage
CONFIGS = {"ResNet50": (3, 4, 6, 3), "ResNet101": (3, 4, 23, 3), "ResNet152": (3, 8, 36, 3)}
EXPANSION = 4


def apply_bottleneck(x, planes, stride, weight_decay, sync_batchnorm, name):
    """Their `Bottleneck(in_planes, planes, stride)`."""
    init = torch_default_kernel
    y = conv(x, planes, 1, 1, f"{name}_conv1", weight_decay, init)
    y = batch_norm(sync_batchnorm, f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = conv(y, planes, 3, stride, f"{name}_conv2", weight_decay, init)
    y = batch_norm(sync_batchnorm, f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    y = conv(y, EXPANSION * planes, 1, 1, f"{name}_conv3", weight_decay, init)
    y = batch_norm(sync_batchnorm, f"{name}_bn3")(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != EXPANSION * planes:
        shortcut = conv(x, EXPANSION * planes, 1, stride, f"{name}_shortcut_0", weight_decay, init)
        shortcut = batch_norm(sync_batchnorm, f"{name}_shortcut_1")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu3")(y)


def authors_imagenet_resnet(
    name="ResNet50",
    num_classes=1000,
    input_shape=(224, 224, 3),
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds the authors' ImageNet ResNet that outputs logits.

    Args:
        name: one of `"ResNet50"`, `"ResNet101"`, `"ResNet152"`. Defaults to `"ResNet50"`.
        num_classes: the number of classes, `>= 2`. Defaults to `1000`.
        input_shape: the image shape, at least 32x32 (five stride-2 steps).
            Defaults to `(224, 224, 3)`.
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
            f"`input_shape` must be at least 32x32 for {name} (five stride-2 steps). "
            f"Received: input_shape={input_shape}"
        )
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 64, 3, 2, "conv1", weight_decay, torch_default_kernel)
    x = batch_norm(sync_batchnorm, "bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    # max_pool2d(3, 2, padding=1) pads with -inf; after the ReLU every window
    # holds a value >= 0, so zero padding gives the same maxima.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool")(x)
    for stage, blocks in enumerate(CONFIGS[name], start=1):
        planes = 64 * 2 ** (stage - 1)
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = apply_bottleneck(
                x, planes, stride, weight_decay, sync_batchnorm, f"layer{stage}_{block}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
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
