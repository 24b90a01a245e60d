"""`FusedBatchNormalization` equals Keras' BatchNormalization and a NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import U16, U32, U_FUNC, UBF16, assert_within, gamma

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


def np_grad(x, training):
    """The gradient of `np_objective`, by hand in float64 (checked against `np_numeric_grad`).

    With x_hat = (x - mean) / s, s = sqrt(var + eps), y = gamma x_hat + beta and
    g = gamma (sin y + y cos y) = gamma d(y sin y)/dy: in training
    dx = (g - mean(g) - x_hat mean(g x_hat)) / s; in inference dx = g / s.
    """
    x = x.astype(np.float64)
    mean, var = (x.mean((0, 1, 2)), x.var((0, 1, 2))) if training else (MOVING_MEAN, MOVING_VAR)
    s = np.sqrt(var + EPS)
    x_hat = (x - mean) / s
    y = GAMMA * x_hat + BETA
    g = GAMMA * (np.sin(y) + y * np.cos(y))
    if not training:
        return g / s
    return (g - g.mean((0, 1, 2)) - x_hat * (g * x_hat).mean((0, 1, 2))) / s


def batch_statistics_bounds(x, axes=(0, 1, 2), keepdims=False):
    """(mean, var, e_mean, e_var) per channel: float64 values and float32 error bounds.

    Mean: a sum of n terms, e_mean <= gamma_n mean|x|. Variance, two-pass
    mean((x - mean)^2) as TF's fused kernels and `tf.nn.moments` (Keras) compute it:
    each x - mean is off by e_mean + u |x - mean|, its square by twice that relative,
    then a sum of n terms, so e_var <= gamma_(n+3) var + 2 e_mean mean|x - mean|.
    """
    x = x.astype(np.float64)
    n = np.prod([x.shape[a] for a in axes])
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    e_mean = gamma(n) * np.abs(x).mean(axes, keepdims=True)
    e_var = gamma(n + 3) * var + 2 * e_mean * np.abs(x - mean).mean(axes, keepdims=True)
    if not keepdims:
        mean, var, e_mean, e_var = (np.squeeze(a, axes) for a in (mean, var, e_mean, e_var))
    return mean, var, e_mean, e_var


def float32_bounds(x, training, axes=(0, 1, 2), scale=GAMMA, offset=BETA, eps=EPS, gradient=True):
    """First-order bounds on the float32 error of the layer's output and input gradient.

    Returns (bound on y, bound on dx or None if not `gradient`), entrywise, valid
    for any order of the reductions over the n = N*H*W values of a channel (oneDNN, Eigen, XLA).
    Each step's rounding error, from the rules in `tolerances`:
    - batch mean and variance: `batch_statistics_bounds`;
    - s = sqrt(var + eps): relative e_var / (2 (var + eps)) + U_FUNC (rsqrt);
    - y = gamma x_hat + beta, as (x - mean) / s or folded as x a + (beta - mean a) with
      a = gamma / s (the inference kernels, Keras): 3 roundings of |x a| + |mean a| + |beta|,
      which cancel where x ~ mean, plus the errors above;
    - g = gamma (sin y + y cos y): |dg/dy| <= |gamma| (2 + |y|), sin and cos within U_FUNC;
    - mean(g), mean(g x_hat): reductions of n terms;
    - dx = (g - mean g - x_hat mean(g x_hat)) / s: 3 roundings of the terms, then s.
    The last step cancels (dx is a small difference of large terms), so the bound scales
    with |g| + mean|g| + |x_hat mean(g x_hat)|, not with |dx|.
    """
    x = x.astype(np.float64)
    if training:
        mean, var, e_mean, e_var = batch_statistics_bounds(x, axes, keepdims=True)
    else:
        mean, var, e_mean, e_var = MOVING_MEAN, MOVING_VAR, 0.0, 0.0
    s = np.sqrt(var + eps)
    rel_s = e_var / (2 * (var + eps)) + U_FUNC
    x_hat = (x - mean) / s
    e_x_hat = (e_mean + 3 * U32 * (np.abs(x) + np.abs(mean))) / s + np.abs(x_hat) * rel_s
    y = scale * x_hat + offset
    e_y = np.abs(scale) * e_x_hat + 3 * U32 * np.abs(offset)
    terms = np.abs(np.sin(y)) + np.abs(y * np.cos(y))
    g = scale * (np.sin(y) + y * np.cos(y))
    e_g = np.abs(scale) * ((2 + np.abs(y)) * e_y + (U_FUNC + 3 * U32) * terms) + U32 * np.abs(g)
    if not gradient:
        return e_y, None
    if not training:
        return e_y, (e_g + U32 * np.abs(g)) / s + np.abs(g / s) * (rel_s + U32)
    n = np.prod([x.shape[a] for a in axes])
    m2 = (g * x_hat).mean(axes, keepdims=True)
    e_m1 = e_g.mean(axes, keepdims=True) + gamma(n) * np.abs(g).mean(axes, keepdims=True)
    e_m2 = (np.abs(x_hat) * e_g + np.abs(g) * e_x_hat).mean(axes, keepdims=True)
    e_m2 = e_m2 + gamma(n + 1) * np.abs(g * x_hat).mean(axes, keepdims=True)
    rounding = 3 * U32 * (np.abs(g) + np.abs(g).mean(axes, keepdims=True) + np.abs(x_hat * m2))
    e_dx = (e_g + e_m1 + np.abs(x_hat) * e_m2 + np.abs(m2) * e_x_hat + rounding) / s
    return e_y, e_dx + np.abs(np_grad(x, training)) * (rel_s + U32)


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
    bound_y, bound_dx = float32_bounds(x, training)
    assert_within(y.numpy(), np_batch_norm(x64, mean, var), bound_y, "output")
    # The hand-derived gradient against central differences, both float64, h = 1e-6:
    # truncation h^2 |f'''| / 6 < 1e-9 and roundoff ~ 2^-53 * sum|y sin y| (~300) / h
    # ~ 3e-8, so atol 1e-7: a check of the reference, below the float32 bound used next.
    np.testing.assert_allclose(np_grad(x, training), np_numeric_grad(x, training), atol=1e-7)
    assert_within(grad.numpy(), np_grad(x, training), bound_dx, "input gradient")
    # Moving statistics m' = 0.9 m + 0.1 v: 0.1 times the error of the batch statistic, plus
    # 3 roundings of the terms (and the constant 0.9, 0.1 roundings).
    _, _, e_mean, e_var = batch_statistics_bounds(x) if training else (0, 0, 0.0, 0.0)
    bound_mm = 0.1 * e_mean + 4 * U32 * (np.abs(0.9 * MOVING_MEAN) + np.abs(0.1 * mean))
    bound_mv = 0.1 * e_var + 4 * U32 * (np.abs(0.9 * MOVING_VAR) + np.abs(0.1 * var))
    assert_within(layer.moving_mean.numpy(), expected_mm, bound_mm, "moving mean")
    assert_within(layer.moving_variance.numpy(), expected_mv, bound_mv, "moving variance")


@pytest.mark.parametrize("training", [True, False])
def test_same_as_keras_batch_normalization(training):
    x = _inputs(seed=1)
    ours, theirs = _layer(FusedBatchNormalization), _layer(keras.layers.BatchNormalization)
    y_ours, g_ours = _run(ours, x, training)
    y_theirs, g_theirs = _run(theirs, x, training)
    # Two float32 computations of the same values in different orders: each is within
    # `float32_bounds` of the exact value, so they differ by at most twice it.
    bound_y, bound_dx = float32_bounds(x, training)
    assert_within(y_ours.numpy(), y_theirs.numpy(), 2 * bound_y, "output")
    assert_within(g_ours.numpy(), g_theirs.numpy(), 2 * bound_dx, "input gradient")
    # Moving statistics: twice the bound of the other test (0.1 e_stat + 4 roundings).
    mean, var, e_mean, e_var = batch_statistics_bounds(x)
    if not training:
        mean, var, e_mean, e_var = MOVING_MEAN, MOVING_VAR, 0.0, 0.0
    bound_mm = 0.1 * e_mean + 4 * U32 * (np.abs(0.9 * MOVING_MEAN) + np.abs(0.1 * mean))
    bound_mv = 0.1 * e_var + 4 * U32 * (np.abs(0.9 * MOVING_VAR) + np.abs(0.1 * var))
    for a, b, bound in zip(
        ours.non_trainable_variables, theirs.non_trainable_variables, [bound_mm, bound_mv]
    ):
        assert_within(a.numpy(), b.numpy(), 2 * bound, a.path)


def test_batch_of_one_pixel_has_zero_variance():
    # n = 1: the kernel's Bessel correction is undefined; the biased variance is 0.
    layer = _layer(FusedBatchNormalization)
    layer(tf.constant(_inputs((1, 1, 1, 3))), training=True)
    # 0.9 v + 0.1 * 0: two roundings (and 0.9's own), 3 u < 2e-7 relative.
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 * MOVING_VAR, rtol=3 * U32)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    x = _inputs()
    layer = _layer(FusedBatchNormalization, dtype=keras.DTypePolicy(f"mixed_{dtype}"))
    x_low = tf.constant(x, dtype)
    y = layer(x_low, training=True)
    assert y.dtype == dtype
    x64 = tf.cast(x_low, tf.float64).numpy()  # the inputs as the layer received them
    reference = np_batch_norm(x64, x64.mean((0, 1, 2)), x64.var((0, 1, 2)))
    # Statistics in float32 (within `float32_bounds`); only the output is rounded, once, to
    # the low precision: relative u = 2^-11 (float16) or 2^-8 (bfloat16) of |y|.
    u_low = {"float16": U16, "bfloat16": UBF16}[dtype]
    bound = float32_bounds(x64, training=True)[0] * (1 + u_low) + u_low * np.abs(reference)
    assert_within(np.asarray(y, np.float32), reference, bound, dtype)


def test_falls_back_to_keras_where_the_kernel_does_not_apply():
    rank2 = _inputs()[:, 0, 0, :]
    layer = FusedBatchNormalization(epsilon=EPS)
    y = layer(tf.constant(rank2), training=True)
    x64 = rank2.astype(np.float64)
    expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + EPS)
    bound = float32_bounds(x64, True, axes=(0,), scale=1.0, offset=0.0, gradient=False)[0]
    assert_within(y.numpy(), expected, bound, "rank 2")
    channels_first = FusedBatchNormalization(axis=1, epsilon=EPS)
    x = _inputs()
    y = channels_first(tf.constant(x), training=True)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean((0, 2, 3), keepdims=True)) / np.sqrt(
        x64.var((0, 2, 3), keepdims=True) + EPS
    )
    bound = float32_bounds(x64, True, axes=(0, 2, 3), scale=1.0, offset=0.0, gradient=False)[0]
    assert_within(y.numpy(), expected, bound, "channels first")


def test_small_epsilon_is_raised_to_the_cudnn_minimum():
    x = _inputs()
    layer = FusedBatchNormalization(epsilon=1e-8, center=False, scale=False)
    y = layer(tf.constant(x), training=True)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + CUDNN_MIN_EPSILON)
    bound = float32_bounds(x64, True, scale=1.0, offset=0.0, eps=CUDNN_MIN_EPSILON, gradient=False)[
        0
    ]
    assert_within(y.numpy(), expected, bound, "epsilon 1e-5")


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
    # The same kernels on the same weights and inputs in one process: the outputs are equal
    # up to the order of the reductions at most. A ResNet-20's softmax outputs lie in [0, 1],
    # so 1e-5 is far above such reordering (a few ulps of 1 per layer, 2e-6 over 20 layers
    # with gains of O(1)) and far below any wrongly restored weight (O(1) changes).
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_zoo_uses_keras_layer_for_synchronized_batch_norm():
    model = bk.models.build("resnet20", 10, sync_batchnorm=True)
    bns = [lay for lay in model.layers if isinstance(lay, keras.layers.BatchNormalization)]
    assert bns and all(lay.synchronized for lay in bns)
    assert not any(isinstance(lay, FusedBatchNormalization) for lay in bns)
