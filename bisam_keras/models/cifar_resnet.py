"""CIFAR ResNets (He et al., 2016, Section 4.2): ResNet-20/32/44/56/110.

Three stages of `n` basic blocks with 16, 32 and 64 filters, a 3x3 stem, global
average pooling and a dense classifier: `6n + 2` layers. Shortcuts that change
shape use a strided 1x1 convolution with BatchNorm (option B).
"""

import keras

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def apply_basic_block(x, filters, stride, weight_decay, name):
    """Two 3x3 conv-BN layers with an identity (or projected) shortcut."""
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    conv_kwargs = dict(
        use_bias=False, kernel_initializer="he_normal", kernel_regularizer=regularizer
    )
    shortcut = x
    y = keras.layers.Conv2D(
        filters, 3, stride, padding="same", name=f"{name}_conv1", **conv_kwargs
    )(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, 1, padding="same", name=f"{name}_conv2", **conv_kwargs)(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, stride, name=f"{name}_proj", **conv_kwargs)(x)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(name="resnet20", num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0):
    """Builds a CIFAR ResNet that outputs logits.

    Args:
        name: one of `"resnet20"`, `"resnet32"`, `"resnet44"`, `"resnet56"`,
            `"resnet110"`. Defaults to `"resnet20"`.
        num_classes: the number of classes, `>= 2`. Defaults to `10`.
        input_shape: the image shape. Defaults to `(32, 32, 3)`.
        weight_decay: L2 factor on the convolution kernels (`0` for none,
            when the optimizer's `weight_decay` is used instead). Defaults to `0.0`.

    Returns:
        A Functional `keras.Model`.
    """
    if name not in DEPTHS:
        raise ValueError(f"`name` must be one of {sorted(DEPTHS)}. Received: name={name!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"`num_classes` must be an int >= 2. Received: num_classes={num_classes!r}"
        )
    blocks = DEPTHS[name]
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(
        16, 3, padding="same", use_bias=False, kernel_initializer="he_normal", name="stem_conv"
    )(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = apply_basic_block(
                x, filters, stride, weight_decay, f"stage{stage + 1}_block{block + 1}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
