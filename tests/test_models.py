"""Tests for `bisam_keras.models`: the zoo's names, architectures and errors.

Trainable-parameter counts are checked against a hand count of each
architecture written here (and against the published approximations within
3%), never against the code under test.
"""

import os
import socket
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from bisam_keras import models
from bisam_keras.experiments import runner

# Every model function of `keras.applications` in Keras 3.15, written out by hand.
KERAS_APPLICATIONS = [
    "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge",
    "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
    "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
    "EfficientNetV2L", "EfficientNetV2M", "EfficientNetV2S",
    "InceptionResNetV2", "InceptionV3",
    "MobileNet", "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small",
    "NASNetLarge", "NASNetMobile",
    "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50", "ResNet50V2",
    "VGG16", "VGG19", "Xception",
]  # fmt: skip
CIFAR_MODELS = [
    "densenet121", "resnet110", "resnet20", "resnet32", "resnet44", "resnet56",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "wrn16_8", "wrn28_10", "wrn28_2",
]  # fmt: skip
HEAVY = {"densenet121", "resnet110", "vgg16_bn", "vgg19_bn", "wrn16_8", "wrn28_10"}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def network_available(host="storage.googleapis.com"):
    try:
        socket.create_connection((host, 443), timeout=2).close()
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- #
# Hand counts of trainable parameters (BatchNorm: gamma and beta).
# --------------------------------------------------------------------------- #


def conv(c_in, c_out, k=3, bias=False):
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c):
    return 2 * c


def dense(c_in, k):
    return c_in * k + k


def hand_resnet(n, k):
    total, c_in = conv(3, 16) + bn(16), 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += conv(c_in, c) + bn(c) + conv(c, c) + bn(c)
            if c_in != c:
                total += conv(c_in, c, 1) + bn(c)
            c_in = c
    return total + dense(64, k)


def hand_wrn(depth, widen, k):
    total, c_in = conv(3, 16), 16
    for c in (16 * widen, 32 * widen, 64 * widen):
        for _ in range((depth - 4) // 6):
            total += bn(c_in) + conv(c_in, c) + bn(c) + conv(c, c)
            if c_in != c:
                total += conv(c_in, c, 1)
            c_in = c
    return total + bn(c_in) + dense(c_in, k)


def hand_vgg(cfg, k):
    total, c_in = 0, 3
    for c in cfg:
        if c != "M":
            total += conv(c_in, c, bias=True) + bn(c)
            c_in = c
    return total + dense(c_in, k)


def hand_densenet(blocks, growth, k):
    c = 2 * growth
    total = conv(3, c)
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += bn(c) + conv(c, 4 * growth, 1) + bn(4 * growth) + conv(4 * growth, growth)
            c += growth
        if i < len(blocks) - 1:
            total += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return total + bn(c) + dense(c, k)


VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512] * 4 + ["M"] + [512] * 4,
}
# name: (hand count at k classes, published approximation at 10 classes)
EXPECTED = {
    "resnet20": (lambda k: hand_resnet(3, k), 0.27e6),
    "resnet32": (lambda k: hand_resnet(5, k), 0.46e6),
    "resnet44": (lambda k: hand_resnet(7, k), 0.66e6),
    "resnet56": (lambda k: hand_resnet(9, k), 0.86e6),
    "resnet110": (lambda k: hand_resnet(18, k), 1.7e6),
    "wrn16_8": (lambda k: hand_wrn(16, 8, k), 11.0e6),
    "wrn28_2": (lambda k: hand_wrn(28, 2, k), 1.47e6),
    "wrn28_10": (lambda k: hand_wrn(28, 10, k), 36.5e6),
    "vgg11_bn": (lambda k: hand_vgg(VGG_CFG[11], k), 9.23e6),
    "vgg13_bn": (lambda k: hand_vgg(VGG_CFG[13], k), 9.42e6),
    "vgg16_bn": (lambda k: hand_vgg(VGG_CFG[16], k), 14.73e6),
    "vgg19_bn": (lambda k: hand_vgg(VGG_CFG[19], k), 20.04e6),
    "densenet121": (lambda k: hand_densenet((6, 12, 24, 16), 32, k), 6.96e6),
}


def vit_b16_count(k, patch=16, hidden=768, layers=12, mlp=3072, image=224):
    tokens = (image // patch) ** 2 + 1
    embedding = conv(3, hidden, patch, bias=True) + hidden + tokens * hidden
    layer = bn(hidden) + 4 * dense(hidden, hidden) + bn(hidden)
    layer += dense(hidden, mlp) + dense(mlp, hidden)
    return embedding + layers * layer + bn(hidden) + dense(hidden, k)


def heavy(name):
    return pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name


# --------------------------------------------------------------------------- #
# Names.
# --------------------------------------------------------------------------- #


def test_names_are_sorted_and_cover_the_zoo():
    names = models.names()
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert set(CIFAR_MODELS) <= set(names)
    assert "vit_b16" in names
    assert set(KERAS_APPLICATIONS) <= set(names)


def test_names_cover_every_keras_application():
    public = {
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    }
    assert set(KERAS_APPLICATIONS) <= public
    assert public <= set(models.names())
    assert models.application_names() == sorted(public)


# --------------------------------------------------------------------------- #
# The paper's CIFAR models.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", [heavy(n) for n in CIFAR_MODELS])
def test_cifar_parameter_counts(name):
    hand_count, published = EXPECTED[name]
    model = models.build(name, 10)
    count = trainable_count(model)
    assert count == hand_count(10)
    assert abs(count - published) <= 0.03 * published  # papers round counts ("0.27M")
    assert model.output.shape == (None, 10)
    assert model.layers[-1].name == "logits"
    assert isinstance(model.layers[-1], keras.layers.Dense)
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"


@pytest.mark.parametrize("name, num_classes", [("resnet20", 100), ("wrn28_2", 7), ("vgg11_bn", 2)])
def test_cifar_head_follows_num_classes(name, num_classes):
    model = models.build(name, num_classes)
    assert trainable_count(model) == EXPECTED[name][0](num_classes)


@pytest.mark.parametrize(
    "name, input_shape",
    [("resnet20", (32, 32, 3)), ("wrn28_2", (32, 32, 3)), ("vgg11_bn", (32, 32, 3)),
     ("resnet20", (28, 28, 1)), pytest.param("densenet121", (32, 32, 3), marks=pytest.mark.slow)],
)  # fmt: skip
def test_logits_on_zeros(name, input_shape):
    model = models.build(name, 10, input_shape=input_shape)
    logits = model(np.zeros((2, *input_shape), "float32"), training=False)
    assert logits.shape == (2, 10)
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))


def test_logits_stay_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = models.build("resnet20", 10)
        logits = model(np.zeros((2, 32, 32, 3), "float32"))
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.layers[1].compute_dtype == "float16"
    assert logits.dtype == "float32"


def test_wide_resnet_dropout():
    plain = models.build("wrn28_2", 10)
    dropped = models.build("wrn28_2", 10, dropout=0.3)
    layers = [layer for layer in dropped.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(layers) == 12
    assert all(layer.rate == 0.3 for layer in layers)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in plain.layers)
    assert trainable_count(dropped) == trainable_count(plain)


def test_weight_decay_regularizes_every_convolution():
    model = models.build("resnet20", 10, weight_decay=5e-4)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(model.losses) == len(convs) == 21


@pytest.mark.parametrize("name", ["resnet20", "wrn28_2", "vgg11_bn", heavy("densenet121")])
def test_sync_batchnorm(name):
    for sync in (False, True):
        model = models.build(name, 10, sync_batchnorm=sync)
        norms = [
            layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert norms and all(layer.get_config()["synchronized"] is sync for layer in norms)


@pytest.mark.slow
def test_sync_batchnorm_runs_under_mirrored_strategy():
    # The session's one MirroredStrategy over the two logical CPUs (a second
    # strategy over the same devices can mix up collective operations).
    strategy = runner.make_strategy("mirrored")
    with strategy.scope():
        model = models.build("resnet20", 10, sync_batchnorm=True)
    images = tf.random.stateless_normal((4, 32, 32, 3), seed=(1, 2))
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(images).batch(4)
    )
    logits = strategy.run(lambda x: model(x, training=True), args=(next(iter(dataset)),))
    logits = tf.concat(strategy.experimental_local_results(logits), axis=0)
    assert logits.shape == (4, 10)


def test_save_and_load_round_trip(tmp_path):
    model = models.build("resnet20", 10)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    # Equal weights (saved bit for bit) and the same kernels on the same batch, in one
    # process: the same float32 operations in the same order, so equal outputs; the default
    # rtol 1e-7 (< 2 u) allows only a last-bit difference.
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


# --------------------------------------------------------------------------- #
# keras.applications.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "name",
    ["MobileNetV3Small", "MobileNetV2", "EfficientNetB0", "ResNet50",
     pytest.param("EfficientNetV2B0", marks=pytest.mark.slow),
     pytest.param("NASNetMobile", marks=pytest.mark.slow)],
)  # fmt: skip
def test_applications_build_with_a_logits_head(name):
    model = models.build(name, 10)
    base = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    assert model.output.shape == (None, 10)
    assert model.layers[-1].name == "logits"
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    assert trainable_count(model) == trainable_count(base) + dense(base.output.shape[-1], 10)


def test_application_logits_on_zeros():
    model = models.build("MobileNetV3Small", 5)
    logits = model(np.zeros((2, 32, 32, 3), "float32"), training=False)
    assert logits.shape == (2, 5)
    assert logits.dtype == "float32"


@pytest.mark.parametrize("name, minimum", [("InceptionV3", 75), ("Xception", 71)])
def test_application_too_small_input_names_the_minimum(name, minimum):
    with pytest.raises(ValueError, match=rf"input_shape.*{minimum}x{minimum}.*resize_to"):
        models.build(name, 10, input_shape=(32, 32, 3))


@pytest.mark.slow
def test_application_resize_to_upsamples_inside_the_model():
    model = models.build("InceptionV3", 10, input_shape=(32, 32, 3), resize_to=75)
    resize = model.get_layer("resize")
    assert isinstance(resize, keras.layers.Resizing)
    assert resize.output.shape == (None, 75, 75, 3)
    assert model.input.shape == (None, 32, 32, 3)


def test_application_weights_path_loads_the_file(tmp_path):
    base = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = str(tmp_path / "base.weights.h5")
    base.save_weights(path)
    model = models.build("MobileNetV3Small", 10, weights_path=path)
    loaded = model.layers[1]
    for expected, actual in zip(base.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(actual), expected.numpy())


def test_application_pretrained_offline_raises_a_clear_error():
    if network_available():
        pytest.skip("the ImageNet weights can be downloaded here")
    cache = os.path.join(os.path.expanduser("~"), ".keras", "models")
    if os.path.isdir(cache) and any("mobilenet_v3_small" in f.lower() for f in os.listdir(cache)):
        pytest.skip("the ImageNet weights are cached here")
    with pytest.raises(RuntimeError, match=r"Could not fetch.*weights_path="):
        models.build("MobileNetV3Small", 10, input_shape=(224, 224, 3), pretrained=True)


# --------------------------------------------------------------------------- #
# ViT-B/16 (keras-hub, optional).
# --------------------------------------------------------------------------- #


def test_vit_without_keras_hub_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    with pytest.raises(ImportError, match=r"bisam-keras\[hub\]"):
        models.build("vit_b16", 10)


@pytest.mark.slow
def test_vit_b16_architecture():
    pytest.importorskip("keras_hub")
    model = models.build("vit_b16", 10)
    assert trainable_count(model) == vit_b16_count(10)
    assert abs(trainable_count(model) - 86e6) <= 0.03 * 86e6
    assert model.get_layer("resize").output.shape == (None, 224, 224, 3)
    logits = model(np.zeros((1, 32, 32, 3), "float32"))
    assert logits.shape == (1, 10)
    assert logits.dtype == "float32"


def test_vit_pretrained_offline_raises_a_clear_error():
    pytest.importorskip("keras_hub")
    if network_available("www.kaggle.com"):
        pytest.skip("the preset can be downloaded here")
    with pytest.raises(RuntimeError, match=r"Could not fetch.*preset"):
        models.build("vit_b16", 10, pretrained=True)


# --------------------------------------------------------------------------- #
# Bad input.
# --------------------------------------------------------------------------- #


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"Did you mean \['ResNet50'.*name='resnet50'"):
        models.build("resnet50", 10)
    with pytest.raises(ValueError, match=r"Known names: \[.*'wrn28_2'.*name='nope'"):
        models.build("nope", 10)


@pytest.mark.parametrize(
    "name, num_classes, kwargs, match",
    [
        ("resnet20", 1, {}, r"`num_classes` must be an int >= 2. Received: num_classes=1"),
        ("wrn28_2", 2.5, {}, r"num_classes=2.5"),
        ("vgg11_bn", True, {}, r"num_classes=True"),
        ("ResNet50", 0, {}, r"num_classes=0"),
        ("resnet20", 10, {"input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
        ("densenet121", 10, {"input_shape": (0, 32, 3)}, r"input_shape=\(0, 32, 3\)"),
        ("vgg11_bn", 10, {"input_shape": (16, 16, 3)}, r"at least 32x32.*input_shape"),
        ("resnet20", 10, {"dropout": 0.1}, r"options \['sync_batchnorm', 'weight_decay'\]"),
        ("ResNet50", 10, {"sync_batchnorm": True}, r"Received unknown: \['sync_batchnorm'\]"),
        ("wrn28_2", 10, {"dropout": 1.0}, r"`dropout` must be .*dropout=1.0"),
        ("resnet20", 10, {"weight_decay": -1}, r"weight_decay=-1"),
        ("InceptionV3", 10, {"resize_to": 32}, r"`resize_to` .*>= 75.*resize_to=32"),
        ("ResNet50", 10, {"weights_path": "/nonexistent.h5"}, r"weights_path='/nonexistent.h5'"),
    ],
)
def test_bad_arguments_raise_value_error(name, num_classes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build(name, num_classes, **kwargs)
