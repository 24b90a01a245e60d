"""The authors' VGG-BN (`model/vgg.py` of LIONS-EPFL/BiSAM).

The torchvision-derived CIFAR VGG the authors trained: 3x3 conv (with bias)
-BN-ReLU stacks and 2x2 max-pools as in the zoo, but a three-layer classifier
`Dropout(0.5) -> Linear(512, 512) -> ReLU -> Dropout(0.5) -> Linear(512, 512)
-> ReLU -> Linear(512, num_classes)` where the zoo has one dense layer.
Convolution weights start from an untruncated `N(0, 2 / fan_out)`
(`n = k * k * out_channels` in their code), their biases at zero; the linear
layers keep PyTorch's default, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for
weights and biases. The flattened 1x1x512 map (32x32 to 63x63 images, the
sizes their `Linear(512, ...)` accepts) is the global average here.

Trainable parameters at 10 classes: VGG-19-BN 20,565,834 (the zoo's
20,040,522). Layer names are the PyTorch module paths with `.` replaced by
`_` (`features_0`, `classifier_1`), except the classifier, `logits`
(theirs: `classifier.6`).
"""

import keras

from bisam_keras.models.authors.layers import (
    batch_norm,
    conv,
    dense,
    kaiming_normal,
    torch_default_bias,
    torch_default_kernel,
)
from bisam_keras.models.layers import check_input_shape, check_num_classes, check_rate
from bisam_keras.models.vgg import CONFIGS


def _fan_out_normal():
    return kaiming_normal("fan_out")


def authors_vgg(
    name="vgg19_bn",
    num_classes=10,
    input_shape=(32, 32, 3),
    dropout=0.5,
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds the authors' VGG-BN that outputs logits.

    Args:
        name: one of `"vgg11_bn"`, `"vgg13_bn"`, `"vgg16_bn"`, `"vgg19_bn"`.
            Defaults to `"vgg19_bn"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape, at least 32x32. Defaults to `(32, 32, 3)`.
        dropout: the rate of the classifier's two dropout layers (their
            `nn.Dropout()`, 0.5). Defaults to `0.5`.
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
    check_rate(dropout, "dropout")
    if min(input_shape[:2]) < 32:
        raise ValueError(
            f"`input_shape` must be at least 32x32 for {name} (five 2x2 max-pools). "
            f"Received: input_shape={input_shape}"
        )
    inputs = keras.Input(input_shape, name="image")
    x, index = inputs, 0
    for item in CONFIGS[name]:
        if item == "M":
            x = keras.layers.MaxPooling2D(2, name=f"features_{index}")(x)
            index += 1
            continue
        x = conv(x, item, 3, 1, f"features_{index}", weight_decay, _fan_out_normal, use_bias=True)
        x = batch_norm(sync_batchnorm, f"features_{index + 1}")(x)
        x = keras.layers.ReLU(name=f"features_{index + 2}")(x)
        index += 3
    x = keras.layers.GlobalAveragePooling2D(name="flatten")(x)
    for layer in (0, 3):
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"classifier_{layer}")(x)
        x = dense(
            x, 512, f"classifier_{layer + 1}", torch_default_kernel(), torch_default_bias(512)
        )
        x = keras.layers.ReLU(name=f"classifier_{layer + 2}")(x)
    outputs = dense(
        x, num_classes, "logits", torch_default_kernel(), torch_default_bias(512), dtype="float32"
    )
    return keras.Model(inputs, outputs, name=name)
