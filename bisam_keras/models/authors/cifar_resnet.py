"""The authors' CIFAR ResNets (`model/resnet.py` of LIONS-EPFL/BiSAM).

Y. Idelbayev's implementation of He et al. (2016), which the authors trained:

- option-A shortcuts where the shape changes (subsample by 2, zero-pad the
  channels; no parameters), where the zoo uses 1x1-conv + BatchNorm;
- symmetric padding of the stride-2 convolutions (PyTorch's `padding=1`);
- every convolution and the classifier's weights `kaiming_normal_` (untruncated
  `N(0, 2 / fan_in)`), the classifier's bias PyTorch's default
  `U(-1/sqrt(64), 1/sqrt(64))`; BatchNorm with PyTorch's defaults.

Trainable parameters at 10 classes: ResNet-20 269,722; ResNet-32 464,154;
ResNet-44 658,586; ResNet-56 853,018; ResNet-110 1,727,962. Layer names are
the PyTorch module paths with `.` replaced by `_` (`layer2_0_conv1`), except
the classifier, `logits` (theirs: `linear`).
"""

import keras

from bisam_keras.models.authors.layers import (
    OptionAShortcut,
    batch_norm,
    conv,
    dense,
    kaiming_normal,
    torch_default_bias,
)
from bisam_keras.models.cifar_resnet import DEPTHS
from bisam_keras.models.layers import check_input_shape, check_num_classes


def apply_basic_block(x, planes, stride, weight_decay, sync_batchnorm, name):
    """Their `BasicBlock(in_planes, planes, stride, option="A")`."""
    y = conv(x, planes, 3, stride, f"{name}_conv1", weight_decay, kaiming_normal)
    y = batch_norm(sync_batchnorm, f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = conv(y, planes, 3, 1, f"{name}_conv2", weight_decay, kaiming_normal)
    y = batch_norm(sync_batchnorm, f"{name}_bn2")(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != planes:
        shortcut = OptionAShortcut(planes // 4, name=f"{name}_shortcut")(x)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu2")(y)


def authors_cifar_resnet(
    name="resnet56",
    num_classes=10,
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds the authors' CIFAR ResNet (option-A shortcuts) that outputs logits.

    Args:
        name: one of `"resnet20"`, `"resnet32"`, `"resnet44"`, `"resnet56"`,
            `"resnet110"`. Defaults to `"resnet56"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape. Defaults to `(32, 32, 3)`.
        weight_decay: L2 factor on the convolution kernels. Defaults to `0.0`.
        sync_batchnorm: whether BatchNorm statistics are synchronized across
            the replicas of a `tf.distribute` strategy. Defaults to `False`.

    Returns:
        A Functional `keras.Model`.
    """
    if name not in DEPTHS:
        raise ValueError(f"`name` must be one of {sorted(DEPTHS)}. Received: name={name!r}")
    check_num_classes(num_classes)
    input_shape = check_input_shape(input_shape)
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 16, 3, 1, "conv1", weight_decay, kaiming_normal)
    x = batch_norm(sync_batchnorm, "bn1")(x)
    x = keras.layers.ReLU(name="relu")(x)
    for stage, planes in enumerate((16, 32, 64), start=1):
        for block in range(DEPTHS[name]):
            stride = 2 if stage > 1 and block == 0 else 1
            x = apply_basic_block(
                x, planes, stride, weight_decay, sync_batchnorm, f"layer{stage}_{block}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = dense(
        x, num_classes, "logits", kaiming_normal(), torch_default_bias(64), dtype="float32"
    )
    return keras.Model(inputs, outputs, name=name)
