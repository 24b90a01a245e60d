"""`FusedBatchNormalization` equals Keras' BatchNormalization and a NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk
from bisam_keras.models.fused_batch_norm import CUDNN_MIN_EPSILON, FusedBatchNormalization

EPS = 1e-3
GAMMA = np.array([1.5, 0.5, 2.0])
BETA = np.array([0.1, -0.2, 0.3])
MOVING_MEAN = np.array([0.5, 1.0, -1.0])
MOVING_VAR = np.array([2.0, 3.0, 0.5])


def _inputs(shape=(6, 5, 4, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * [1.0, 3.0, 0.2] + [0.0, 2.0, -1.0]).astype("float32")


def _layer(cls, **kwargs):
    layer = cls(momentum=0.9, epsilon=EPS, **kwargs)
    layer.build((None, 5, 4, 3))
    layer.gamma.assign(GAMMA)
    layer.beta.assign(BETA)
    layer.moving_mean.assign(MOVING_MEAN)
    layer.moving_variance.assign(MOVING_VAR)
    return layer


def np_batch_norm(x, mean, var):
    return (x - mean) / np.sqrt(var + EPS) * GAMMA + BETA


def np_objective(x, training):
    """sum(y * sin(y)) of the layer output, in float64."""
    x = x.astype(np.float64)
    if training:
        y = np_batch_norm(x, x.mean((0, 1, 2)), x.var((0, 1, 2)))
    else:
        y = np_batch_norm(x, MOVING_MEAN, MOVING_VAR)
    return np.sum(y * np.sin(y))


def np_numeric_grad(x, training, h=1e-6):
    x = x.astype(np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (np_objective(up, training) - np_objective(down, training)) / (2 * h)
    return grad


def _run(layer, x, training):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        objective = tf.reduce_sum(y * tf.sin(y))
    return y, tape.gradient(objective, x)


@pytest.mark.parametrize("training", [True, False])
def test_outputs_gradients_and_moving_statistics_match_numpy(training):
    x = _inputs()
    layer = _layer(FusedBatchNormalization)
    y, grad = _run(layer, x, training)
    x64 = x.astype(np.float64)
    if training:
        mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))  # biased, as Keras
        expected_mm, expected_mv = 0.9 * MOVING_MEAN + 0.1 * mean, 0.9 * MOVING_VAR + 0.1 * var
    else:
        mean, var = MOVING_MEAN, MOVING_VAR
        expected_mm, expected_mv = MOVING_MEAN, MOVING_VAR
    np.testing.assert_allclose(y.numpy(), np_batch_norm(x64, mean, var), rtol=1e-5, atol=1e-5)
    scale = np.abs(np_numeric_grad(x, training)).max()
    np.testing.assert_allclose(grad.numpy(), np_numeric_grad(x, training), atol=2e-6 * scale)
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected_mm, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected_mv, rtol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_same_as_keras_batch_normalization(training):
    x = _inputs(seed=1)
    ours, theirs = _layer(FusedBatchNormalization), _layer(keras.layers.BatchNormalization)
    y_ours, g_ours = _run(ours, x, training)
    y_theirs, g_theirs = _run(theirs, x, training)
    np.testing.assert_allclose(y_ours.numpy(), y_theirs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_ours.numpy(), g_theirs.numpy(), atol=1e-5 * np.abs(g_theirs).max())
    for a, b in zip(ours.non_trainable_variables, theirs.non_trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_batch_of_one_pixel_has_zero_variance():
    # n = 1: the kernel's Bessel correction is undefined; the biased variance is 0.
    layer = _layer(FusedBatchNormalization)
    layer(tf.constant(_inputs((1, 1, 1, 3))), training=True)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 * MOVING_VAR, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    x = _inputs()
    layer = _layer(FusedBatchNormalization, dtype=keras.DTypePolicy(f"mixed_{dtype}"))
    x_low = tf.constant(x, dtype)
    y = layer(x_low, training=True)
    assert y.dtype == dtype
    x64 = tf.cast(x_low, tf.float64).numpy()  # the inputs as the layer received them
    reference = np_batch_norm(x64, x64.mean((0, 1, 2)), x64.var((0, 1, 2)))
    # Statistics in float32; only the output is rounded (8 bits of mantissa for bfloat16).
    tol = {"float16": 4e-3, "bfloat16": 3e-2}[dtype]
    np.testing.assert_allclose(np.asarray(y, np.float32), reference, rtol=tol, atol=tol)


def test_falls_back_to_keras_where_the_kernel_does_not_apply():
    rank2 = _inputs()[:, 0, 0, :]
    layer = FusedBatchNormalization(epsilon=EPS)
    y = layer(tf.constant(rank2), training=True)
    x64 = rank2.astype(np.float64)
    expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + EPS)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    channels_first = FusedBatchNormalization(axis=1, epsilon=EPS)
    x = _inputs()
    y = channels_first(tf.constant(x), training=True)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean((0, 2, 3), keepdims=True)) / np.sqrt(
        x64.var((0, 2, 3), keepdims=True) + EPS
    )
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_small_epsilon_is_raised_to_the_cudnn_minimum():
    x = _inputs()
    layer = FusedBatchNormalization(epsilon=1e-8, center=False, scale=False)
    y = layer(tf.constant(x), training=True)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + CUDNN_MIN_EPSILON)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_saving(tmp_path):
    layer = FusedBatchNormalization(momentum=0.8, epsilon=2e-5, center=False, name="bn")
    clone = FusedBatchNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model = bk.models.build("resnet20", 10)
    assert any(isinstance(lay, FusedBatchNormalization) for lay in model.layers)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_zoo_uses_keras_layer_for_synchronized_batch_norm():
    model = bk.models.build("resnet20", 10, sync_batchnorm=True)
    bns = [lay for lay in model.layers if isinstance(lay, keras.layers.BatchNormalization)]
    assert bns and all(lay.synchronized for lay in bns)
    assert not any(isinstance(lay, FusedBatchNormalization) for lay in bns)
