"""The authors' Wide ResNets (`model/wide_res_net.py` of LIONS-EPFL/BiSAM).

The WideResNet of davda54/sam, which the authors trained. Each of its three
stages is a `DownsampleUnit` followed by `(depth - 4) // 6` `BasicUnit`s, i.e.
one pre-activation block more per stage than Zagoruyko and Komodakis' WRN
(and the zoo's): their "WRN-28-10" has 5 blocks per stage, 34 convolutional
layers and 46,160,474 parameters at 10 classes (the zoo's 36,479,194).

```
DownsampleUnit(x): a = relu(bn(x)); conv3x3(dropout(relu(bn(conv3x3_s(a))))) + conv1x1_s(a)
BasicUnit(x):      x + conv3x3(dropout(relu(bn(conv3x3(relu(bn(x)))))))
```

The stem is a 3x3 convolution without BatchNorm, the head BN-ReLU, 8x8
average pooling (global on 32x32 images) and a dense classifier. Convolutions
start from `kaiming_normal_(mode="fan_in", nonlinearity="relu")` (untruncated
`N(0, 2 / fan_in)`), the classifier from zero weights and bias. The 1x1
shortcut convolution is there in every stage's first unit, whatever the
shapes. Layer names are the PyTorch module paths with `.` replaced by `_`
(`f_2_block_block_0_downsample`), except the classifier, `logits`.

Trainable parameters at 10 classes: WRN-16-8 17,158,106; WRN-28-2 1,855,578;
WRN-28-10 46,160,474.
"""

import keras

from bisam_keras.models.authors.layers import batch_norm, conv, dense, kaiming_normal
from bisam_keras.models.layers import check_input_shape, check_num_classes, check_rate
from bisam_keras.models.wide_resnet import CONFIGS


def apply_downsample_unit(x, filters, stride, dropout, weight_decay, sync_batchnorm, name):
    """Their `DownsampleUnit(in_channels, filters, stride, dropout)`."""
    a = batch_norm(sync_batchnorm, f"{name}_norm_act_0_normalization")(x)
    a = keras.layers.ReLU(name=f"{name}_norm_act_1_activation")(a)
    y = conv(a, filters, 3, stride, f"{name}_block_0_convolution", weight_decay, kaiming_normal)
    y = batch_norm(sync_batchnorm, f"{name}_block_1_normalization")(y)
    y = keras.layers.ReLU(name=f"{name}_block_2_activation")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_block_3_dropout")(y)
    y = conv(y, filters, 3, 1, f"{name}_block_4_convolution", weight_decay, kaiming_normal)
    shortcut = conv(a, filters, 1, stride, f"{name}_downsample", weight_decay, kaiming_normal)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def apply_basic_unit(x, dropout, weight_decay, sync_batchnorm, name):
    """Their `BasicUnit(channels, dropout)`."""
    filters = x.shape[-1]
    y = batch_norm(sync_batchnorm, f"{name}_block_0_normalization")(x)
    y = keras.layers.ReLU(name=f"{name}_block_1_activation")(y)
    y = conv(y, filters, 3, 1, f"{name}_block_2_convolution", weight_decay, kaiming_normal)
    y = batch_norm(sync_batchnorm, f"{name}_block_3_normalization")(y)
    y = keras.layers.ReLU(name=f"{name}_block_4_activation")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_block_5_dropout")(y)
    y = conv(y, filters, 3, 1, f"{name}_block_6_convolution", weight_decay, kaiming_normal)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def authors_wide_resnet(
    name="wrn28_10",
    num_classes=10,
    input_shape=(32, 32, 3),
    dropout=0.0,
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds the authors' Wide ResNet that outputs logits.

    Args:
        name: one of `"wrn16_8"`, `"wrn28_2"`, `"wrn28_10"`. Defaults to `"wrn28_10"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape. Defaults to `(32, 32, 3)`.
        dropout: dropout rate between the two convolutions of each unit
            (their `--dropout`, 0 by default). Defaults to `0.0`.
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
    depth, widen = CONFIGS[name]
    units = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 16, 3, 1, "f_0_convolution", weight_decay, kaiming_normal)
    for stage, filters in enumerate((16 * widen, 32 * widen, 64 * widen), start=1):
        prefix = f"f_{stage}_block_block"
        stride = 1 if stage == 1 else 2
        x = apply_downsample_unit(
            x, filters, stride, dropout, weight_decay, sync_batchnorm, f"{prefix}_0"
        )
        for unit in range(1, units + 1):
            x = apply_basic_unit(x, dropout, weight_decay, sync_batchnorm, f"{prefix}_{unit}")
    x = batch_norm(sync_batchnorm, "f_4_normalization")(x)
    x = keras.layers.ReLU(name="f_5_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name="f_6_pooling")(x)
    outputs = dense(x, num_classes, "logits", "zeros", "zeros", dtype="float32")
    return keras.Model(inputs, outputs, name=name)
