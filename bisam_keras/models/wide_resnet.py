"""Wide ResNets (Zagoruyko & Komodakis, 2016): WRN-16-8, WRN-28-2, WRN-28-10.

WRN-`d`-`k` has three stages of `n = (d - 4) / 6` pre-activation basic blocks
with `16k`, `32k` and `64k` filters after a 3x3 stem with 16 filters:

```
block(x) = conv3x3(dropout(relu(bn(conv3x3(relu(bn(x))))))) + shortcut
shortcut = x                      if the shape is kept
         = conv1x1(relu(bn(x)))   otherwise (strided)
```

then BN-ReLU, global average pooling and a dense classifier.

Reference: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016,
https://arxiv.org/abs/1605.07146
"""

import keras

from bisam_keras.models.layers import (
    batch_norm,
    check_input_shape,
    check_num_classes,
    check_rate,
    conv_kwargs,
    logits,
)

# name: (depth, widen factor)
CONFIGS = {"wrn16_8": (16, 8), "wrn28_2": (28, 2), "wrn28_10": (28, 10)}


def apply_wide_block(x, filters, stride, dropout, weight_decay, sync_batchnorm, name):
    """A pre-activation basic block with optional dropout between the convolutions."""
    kwargs = conv_kwargs(weight_decay)
    activated = batch_norm(sync_batchnorm, f"{name}_bn1")(x)
    activated = keras.layers.ReLU(name=f"{name}_relu1")(activated)
    y = keras.layers.Conv2D(filters, 3, stride, padding="same", name=f"{name}_conv1", **kwargs)(
        activated
    )
    y = batch_norm(sync_batchnorm, f"{name}_bn2")(y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = keras.layers.Conv2D(filters, 3, 1, padding="same", name=f"{name}_conv2", **kwargs)(y)
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, stride, name=f"{name}_proj", **kwargs)(activated)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def wide_resnet(
    name="wrn28_10",
    num_classes=10,
    input_shape=(32, 32, 3),
    dropout=0.0,
    weight_decay=0.0,
    sync_batchnorm=False,
):
    """Builds a CIFAR Wide ResNet that outputs logits.

    Args:
        name: one of `"wrn16_8"`, `"wrn28_2"`, `"wrn28_10"`. Defaults to `"wrn28_10"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape. Defaults to `(32, 32, 3)`.
        dropout: dropout rate between the two convolutions of each block
            (the paper's WRN uses `0.3` on some runs). Defaults to `0.0`.
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
    blocks = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem_conv", **conv_kwargs(weight_decay))(
        inputs
    )
    for stage, filters in enumerate((16 * widen, 32 * widen, 64 * widen)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            block_name = f"stage{stage + 1}_block{block + 1}"
            x = apply_wide_block(
                x, filters, stride, dropout, weight_decay, sync_batchnorm, block_name
            )
    x = batch_norm(sync_batchnorm, "final_bn")(x)
    x = keras.layers.ReLU(name="final_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, logits(x, num_classes), name=name)
