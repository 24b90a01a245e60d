"""Precision, compilation and model-state tests of the sharpness-aware step.

Covers: BatchNorm moving statistics (updated once per step, from the pass at
`w`, also with micro-batches), mixed precision (`mixed_float16` with its
loss-scale optimizer, `mixed_bfloat16`), XLA compilation, numerical stability
with huge logits, and dropout RNG state.

Every expected number comes from an independent float64 NumPy reference
written here (forward pass, hand-derived back-propagation of the cross-entropy
and of the lower bound `Q`, batch statistics as Keras' BatchNormalization
computes them), never from the package's own maths.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk
from bisam_keras.losses import lower_bounds

GAMMA = math.log(math.e - 1.0)
DEFAULT_MU = {"neglog": 1.5, "tanh": 10.0}


# --------------------------------------------------------------------------- #
# Independent float64 NumPy reference of one SAM / BiSAM step on a 2-layer MLP
#   z = x W1 + b1, h = tanh(z), f = h W2 + b2, loss = mean_i CE(f_i, y_i)
# --------------------------------------------------------------------------- #


def np_logsumexp(a):
    m = np.max(a, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=-1, keepdims=True)))[:, 0]


def np_softmax(a):
    a = a - np.max(a, axis=-1, keepdims=True)
    e = np.exp(a)
    return e / np.sum(e, axis=-1, keepdims=True)


def np_sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def np_forward(p, x):
    h = np.tanh(x @ p[0] + p[1])
    return h, h @ p[2] + p[3]


def np_backprop(p, x, h, dlogits):
    """Gradients of sum(dlogits * f) w.r.t. [W1, b1, W2, b2]."""
    d_w2 = h.T @ dlogits
    d_b2 = dlogits.sum(0)
    dz = (dlogits @ p[2].T) * (1.0 - h**2)
    return [x.T @ dz, dz.sum(0), d_w2, d_b2]


def np_ce(f, y):
    return float(np.mean(np_logsumexp(f) - f[np.arange(len(y)), y]))


def np_ce_grad_logits(f, y):
    onehot = np.eye(f.shape[1])[y]
    return (np_softmax(f) - onehot) / f.shape[0]


def np_q_grad_logits(f, y, bound, mu=None, alpha=0.1):
    """d(mean_i Q_i)/d f, derived by hand from Q_i = (LSE(mu phi(F_i)) - log K)/mu."""
    mu = DEFAULT_MU[bound] if mu is None else mu
    b = f.shape[0]
    margins = f - f[np.arange(b), y][:, None]
    if bound == "neglog":
        phi = 1.0 - np.logaddexp(0.0, GAMMA - margins)
        dphi = np_sigmoid(GAMMA - margins)
    else:
        phi = np.tanh(alpha * margins)
        dphi = alpha * (1.0 - phi**2)
    d_margins = np_softmax(mu * phi) * dphi  # dQ_i / dF_ij
    grad = d_margins.copy()
    grad[np.arange(b), y] -= d_margins.sum(1)  # dF_ij/df_iy = -1
    return grad / b


def np_step(p, x, y, rho, lr, kind="bisam", bound="neglog"):
    """One SAM/BiSAM step with plain SGD; returns (new params, loss at w, loss at w+e)."""
    p = [np.asarray(v, np.float64) for v in p]
    x = np.asarray(x, np.float64)
    h, f = np_forward(p, x)
    if kind == "sam":
        d_asc = np_ce_grad_logits(f, y)
    else:
        d_asc = np_q_grad_logits(f, y, bound)
    g = np_backprop(p, x, h, d_asc)
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in g))
    e = [rho * v / norm if norm > 0 else 0.0 * v for v in g]
    pe = [a + b for a, b in zip(p, e)]
    he, fe = np_forward(pe, x)
    gd = np_backprop(pe, x, he, np_ce_grad_logits(fe, y))
    new = [a - lr * b for a, b in zip(p, gd)]
    return new, np_ce(f, y), np_ce(fe, y)


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #

D, H, K, B = 5, 6, 4, 8


@pytest.fixture
def policy():
    """Sets a global dtype policy for one test and always restores float32."""

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    try:
        yield set_policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def make_data(seed=0, b=B, d=D, k=K, x_scale=1.0):
    rng = np.random.default_rng(seed)
    x = (x_scale * rng.normal(size=(b, d))).astype(np.float32)
    y = rng.integers(0, k, size=(b,)).astype(np.int32)
    return x, y


def make_params(seed=1, w2_scale=1.0):
    rng = np.random.default_rng(seed)
    return [
        (0.5 * rng.normal(size=(D, H))).astype(np.float32),
        (0.1 * rng.normal(size=(H,))).astype(np.float32),
        (w2_scale * 0.5 * rng.normal(size=(H, K))).astype(np.float32),
        (0.1 * rng.normal(size=(K,))).astype(np.float32),
    ]


def mlp(params, final_dtype=None, dropout=None):
    inputs = keras.Input((D,))
    hidden = keras.layers.Dense(H, activation="tanh")(inputs)
    if dropout is not None:
        hidden = keras.layers.Dropout(dropout)(hidden)
    outputs = keras.layers.Dense(K, dtype=final_dtype)(hidden)
    inner = keras.Model(inputs, outputs)
    inner.set_weights(params)
    return inner


def compile_sa(inner, optimizer, jit_compile=False):
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def prebuild_loss_scale(model):
    """Builds the loss-scale optimizer before the first step.

    So that a test can read (or set) `dynamic_scale` before training; the
    step itself builds it otherwise (see
    `test_mixed_float16_first_step_without_prebuilt_optimizer`).
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def weights_of(model):
    return [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]


def assert_step_close(got, before, expected, rtol, atol_frac=None):
    """Compares updates `got - before` with `expected - before`, variable by variable.

    Tolerances used with it, from `tolerances` (one step of a D-H-K = 5-6-4 MLP, batch 8):
    - float32 (rtol 1e-4, atol_frac 1e-5): each gradient entry sums B = 8 per-example terms
      of dot products of length <= H + 1 = 7, through exp/log/tanh (and the ascent step,
      whose perturbation moves the descent gradient by no more than its own error): relative
      to the summed magnitudes <= 2 (gamma(8) + 2 gamma(7) + 3 U_FUNC) ~ 6e-6. Entries whose
      terms cancel get atol_frac * max|update| (sum of |terms| <= ~B max|g|, < 1e-5 of it);
      the stored weights add u |w| <= 1e-7, below both.
    - float16 / mixed (rtol = atol_frac = 2e-2, 3e-2 for bfloat16): the same with u = 2^-11
      (2^-8): gamma_16(8) + 2 gamma_16(7) ~ 1.1e-2 (bfloat16: the loss-scaled float32
      gradient of bfloat16 activations, one bfloat16 rounding per layer, ~3 * 2^-8 = 1.2e-2).
    """
    for index, (g, b0, e) in enumerate(zip(got, before, expected)):
        g_delta = np.asarray(g, np.float64) - np.asarray(b0, np.float64)
        e_delta = np.asarray(e, np.float64) - np.asarray(b0, np.float64)
        atol = 0.0 if atol_frac is None else atol_frac * np.max(np.abs(e_delta))
        np.testing.assert_allclose(
            g_delta, e_delta, rtol=rtol, atol=atol, err_msg=f"variable {index}"
        )


def bn_model(seed=3, units=H):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((D,))
    z = keras.layers.Dense(units, name="dense_in")(inputs)
    z = keras.layers.BatchNormalization(momentum=0.9, name="bn")(z)
    outputs = keras.layers.Dense(K, name="dense_out")(z)
    inner = keras.Model(inputs, outputs)
    dense_in = inner.get_layer("dense_in")
    dense_in.kernel.assign(rng.normal(size=(D, units)).astype(np.float32))
    dense_in.bias.assign(rng.normal(size=(units,)).astype(np.float32))
    bn = inner.get_layer("bn")
    bn.gamma.assign((1.0 + 0.1 * rng.normal(size=(units,))).astype(np.float32))
    bn.beta.assign((0.1 * rng.normal(size=(units,))).astype(np.float32))
    # Non-default moving statistics, so that "old" matters in the update.
    bn.moving_mean.assign(rng.normal(size=(units,)).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=(units,)).astype(np.float32))
    dense_out = inner.get_layer("dense_out")
    dense_out.kernel.assign((0.5 * rng.normal(size=(units, K))).astype(np.float32))
    dense_out.bias.assign((0.1 * rng.normal(size=(K,))).astype(np.float32))
    return inner


def np_bn_expected(inner, x, momentum=0.9, chunk=None):
    """Expected moving statistics after one step, from the pass at the original w.

    Tolerance (rtol 1e-5, atol 1e-6 where used): z = x W + b is a dot product of length
    D + 1 = 6, the batch mean and two-pass variance sums of <= 8 terms, so the statistic is
    off by <= (gamma(8) + gamma(6)) ~ 8e-7 of mean|z| (2 mean z^2 for the variance, 4 gamma);
    0.1 of that enters the moving value, which is ~0.9 of the old one, |old| >= 0.5 for the
    variance and ~1 for the mean: < 1e-6 absolute; the rtol covers |moving| up to ~5.

    Keras' BatchNormalization (non-renorm, unmasked) does
    `moving = moving * momentum + stat * (1 - momentum)` with `stat` from
    `tf.nn.moments` over the batch axis: the mean and the *biased* variance.
    With micro-batches the expected value is the mean over chunks of the
    per-chunk updated statistics.
    """
    dense_in = inner.get_layer("dense_in")
    bn = inner.get_layer("bn")
    w = np.asarray(dense_in.kernel.numpy(), np.float64)
    b = np.asarray(dense_in.bias.numpy(), np.float64)
    old_mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    old_var = np.asarray(bn.moving_variance.numpy(), np.float64)
    z = np.asarray(x, np.float64) @ w + b
    chunks = [z] if chunk is None else np.split(z, z.shape[0] // chunk)
    means = [momentum * old_mean + (1 - momentum) * c.mean(0) for c in chunks]
    variances = [momentum * old_var + (1 - momentum) * c.var(0, ddof=0) for c in chunks]
    return np.mean(means, 0), np.mean(variances, 0)


# --------------------------------------------------------------------------- #
# 0. The NumPy reference itself reproduces the float32 package step (sanity).
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind,bound", [("sam", None), ("bisam", "neglog"), ("bisam", "tanh")])
def test_float32_step_matches_numpy_reference(kind, bound):
    params = make_params()
    x, y = make_data()
    rho, lr = 0.3, 0.5
    if kind == "sam":
        opt = bk.SAM(keras.optimizers.SGD(lr), rho=rho)
    else:
        opt = bk.BiSAM(keras.optimizers.SGD(lr), rho=rho, lower_bound=bound)
    model = compile_sa(mlp(params), opt)
    logs = model.train_on_batch(x, y, return_dict=True)
    expected, loss, perturbed = np_step(params, x, y, rho, lr, kind, bound or "neglog")
    assert_step_close(weights_of(model), params, expected, rtol=1e-4, atol_frac=1e-5)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(logs["perturbed_loss"], perturbed, rtol=1e-5)
    assert abs(perturbed - loss) > 1e-3  # rho is large enough to be visible


# --------------------------------------------------------------------------- #
# 1-2. BatchNorm moving statistics: one update per step, from the pass at w.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["sam", "bisam"])
@pytest.mark.parametrize("micro", [None, 4, 2])
def test_batchnorm_moving_stats_updated_once_from_pass_at_w(kind, micro):
    inner = bn_model()
    x, y = make_data(seed=5, b=B)
    x = x + 0.7  # non-zero batch means
    expected_mean, expected_var = np_bn_expected(inner, x, chunk=micro)
    cls = bk.SAM if kind == "sam" else bk.BiSAM
    # A large rho and learning rate: statistics from w+e or from the updated
    # weights would differ visibly from those at w.
    model = compile_sa(inner, cls(keras.optimizers.SGD(0.5), rho=0.5, micro_batch_size=micro))
    before_kernel = inner.get_layer("dense_in").kernel.numpy().copy()
    model.train_on_batch(x, y)
    bn = inner.get_layer("bn")
    assert not np.allclose(inner.get_layer("dense_in").kernel.numpy(), before_kernel, atol=1e-3)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected_var, rtol=1e-5, atol=1e-6)

    # The second step starts from the updated weights: exactly one more update.
    expected_mean, expected_var = np_bn_expected(inner, x, chunk=micro)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected_var, rtol=1e-5, atol=1e-6)


def test_batchnorm_stats_match_plain_sgd_step():
    x, y = make_data(seed=6)
    x = 2.0 * x - 0.5
    plain = bn_model(seed=7)
    inner = bn_model(seed=7)
    expected_mean, expected_var = np_bn_expected(inner, x)

    plain.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    plain.train_on_batch(x, y)
    model = compile_sa(inner, bk.BiSAM(keras.optimizers.SGD(0.5), rho=1.0))
    model.train_on_batch(x, y)

    for name in ("moving_mean", "moving_variance"):
        ours = getattr(inner.get_layer("bn"), name).numpy()
        theirs = getattr(plain.get_layer("bn"), name).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(inner.get_layer("bn").moving_mean.numpy(), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(
        inner.get_layer("bn").moving_variance.numpy(), expected_var, rtol=1e-5
    )
    # The trainable weights did move differently (the perturbed pass happened).
    assert not np.allclose(
        inner.get_layer("dense_out").kernel.numpy(),
        plain.get_layer("dense_out").kernel.numpy(),
        atol=1e-4,
    )


# --------------------------------------------------------------------------- #
# 3. mixed_float16 with the loss-scale optimizer.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("api", ["fit", "train_on_batch"])
def test_mixed_float16_first_step_without_prebuilt_optimizer(policy, api):
    params = make_params()
    x, y = make_data()
    policy("mixed_float16")
    model = compile_sa(
        mlp(params, final_dtype="float32"), bk.BiSAM(keras.optimizers.SGD(0.5), rho=0.3)
    )
    assert not model.optimizer.built
    if api == "fit":
        model.fit(x, y, batch_size=B, epochs=1, verbose=0, shuffle=False)
    else:
        model.train_on_batch(x, y)
    expected, _, _ = np_step(params, x, y, 0.3, 0.5)
    assert_step_close(weights_of(model), params, expected, rtol=2e-2, atol_frac=2e-2)
    np.testing.assert_allclose(float(model.optimizer.dynamic_scale.numpy()), 2.0**15)


@pytest.mark.parametrize("bound", ["neglog", "tanh"])
def test_mixed_float16_step_matches_float32_reference(policy, bound):
    params = make_params()
    x, y = make_data()
    rho, lr = 0.3, 0.5
    policy("mixed_float16")
    bisam = bk.BiSAM(keras.optimizers.SGD(lr), rho=rho, lower_bound=bound)
    model = compile_sa(mlp(params, final_dtype="float32"), bisam)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.optimizer.inner_optimizer is bisam
    prebuild_loss_scale(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    for v in model.trainable_variables:
        assert v.dtype == "float32"
    assert model.inner_model.layers[1].compute_dtype == "float16"

    expected, loss, perturbed = np_step(params, x, y, rho, lr, "bisam", bound)
    assert_step_close(weights_of(model), params, expected, rtol=2e-2, atol_frac=2e-2)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-2)
    # The loss at w+e, ||e|| = rho: right only if the ascent gradient's
    # scale was undone before normalising (and its direction kept).
    np.testing.assert_allclose(logs["perturbed_loss"], perturbed, rtol=1e-2)
    assert abs(perturbed - loss) > 0.02


def test_mixed_float16_matches_float32_policy_step(policy):
    params = make_params(seed=11)
    x, y = make_data(seed=12)

    def run(name):
        policy(name)
        model = compile_sa(
            mlp(params, final_dtype="float32"), bk.BiSAM(keras.optimizers.SGD(0.5), rho=0.3)
        )
        if name == "mixed_float16":
            prebuild_loss_scale(model)
        model.train_on_batch(x, y)
        return weights_of(model)

    w32 = run("float32")
    w16 = run("mixed_float16")
    expected, _, _ = np_step(params, x, y, 0.3, 0.5)
    assert_step_close(w32, params, expected, rtol=1e-4, atol_frac=1e-5)
    assert_step_close(w16, params, w32, rtol=2e-2, atol_frac=2e-2)


def test_mixed_float16_overflowing_scale_skips_step_and_halves_scale(policy):
    params = make_params()
    x, y = make_data()
    policy("mixed_float16")
    model = compile_sa(
        mlp(params, final_dtype="float32"), bk.BiSAM(keras.optimizers.SGD(0.5), rho=0.3)
    )
    prebuild_loss_scale(model)
    model.train_on_batch(x, y)  # a normal step
    before = weights_of(model)
    assert all(np.all(np.isfinite(w)) for w in before)
    # float16 overflows above 65504: scaled gradients become inf.
    model.optimizer.dynamic_scale.assign(1e38)
    model.train_on_batch(x, y)
    after = weights_of(model)
    for b0, a in zip(before, after):
        np.testing.assert_array_equal(a, b0)
    np.testing.assert_allclose(float(model.optimizer.dynamic_scale.numpy()), 5e37, rtol=1e-6)


def test_mixed_float16_nonfinite_ascent_gradient_only_skips_step(policy):
    """The ascent gradient is NaN while the descent gradient is finite."""
    params = make_params()
    x, y = make_data()

    def nan_gradient_objective(y_true, y_pred):
        # Value 0, gradient 0.5 / sqrt(0) * 0 = NaN.
        y_pred = tf.cast(y_pred, tf.float32)
        return tf.reduce_sum(tf.sqrt(tf.zeros_like(y_pred) * y_pred))

    policy("mixed_float16")
    model = compile_sa(
        mlp(params, final_dtype="float32"),
        bk.BiSAM(keras.optimizers.SGD(0.5), rho=0.3, lower_bound=nan_gradient_objective),
    )
    prebuild_loss_scale(model)
    scale = float(model.optimizer.dynamic_scale.numpy())
    logs = model.train_on_batch(x, y, return_dict=True)
    for b0, a in zip(params, weights_of(model)):
        np.testing.assert_array_equal(a, np.asarray(b0, np.float64))
    np.testing.assert_allclose(float(model.optimizer.dynamic_scale.numpy()), scale / 2, rtol=1e-7)
    # The forward pass itself was fine.
    _, f = np_forward([np.asarray(v, np.float64) for v in params], np.asarray(x, np.float64))
    np.testing.assert_allclose(logs["loss"], np_ce(f, y), rtol=1e-2)


def test_mixed_float16_huge_input_skips_step_and_halves_scale(policy):
    params = make_params()
    x, y = make_data()
    x_bad = x.copy()
    x_bad[0] = 1e30  # inf once cast to float16
    policy("mixed_float16")
    model = compile_sa(
        mlp(params, final_dtype="float32"), bk.BiSAM(keras.optimizers.SGD(0.5), rho=0.3)
    )
    prebuild_loss_scale(model)
    model.train_on_batch(x, y)
    before = weights_of(model)
    scale = float(model.optimizer.dynamic_scale.numpy())
    model.train_on_batch(x_bad, y)
    for b0, a in zip(before, weights_of(model)):
        np.testing.assert_array_equal(a, b0)
    np.testing.assert_allclose(float(model.optimizer.dynamic_scale.numpy()), scale / 2, rtol=1e-7)
    # And training resumes normally on good data, with the halved scale.
    model.train_on_batch(x, y)
    expected, _, _ = np_step(before, x, y, 0.3, 0.5)
    assert_step_close(weights_of(model), before, expected, rtol=2e-2, atol_frac=2e-2)


# --------------------------------------------------------------------------- #
# 4. mixed_bfloat16
# --------------------------------------------------------------------------- #


def test_mixed_bfloat16_fit_and_step(policy):
    params = make_params(seed=21)
    x, y = make_data(seed=22)
    rho, lr = 0.3, 0.5
    policy("mixed_bfloat16")
    model = compile_sa(
        mlp(params, final_dtype="float32"), bk.BiSAM(keras.optimizers.SGD(lr), rho=rho)
    )
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.inner_model.layers[1].compute_dtype == "bfloat16"
    logs = model.train_on_batch(x, y, return_dict=True)
    for v in model.trainable_variables:
        assert v.dtype == "float32"
    expected, loss, perturbed = np_step(params, x, y, rho, lr)
    assert_step_close(weights_of(model), params, expected, rtol=3e-2, atol_frac=3e-2)
    np.testing.assert_allclose(logs["loss"], loss, rtol=3e-2)
    np.testing.assert_allclose(logs["perturbed_loss"], perturbed, rtol=3e-2)

    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False)
    for name in ("loss", "perturbed_loss"):
        assert np.all(np.isfinite(history.history[name])), name
    for v in model.trainable_variables:
        assert v.dtype == "float32"
        assert np.all(np.isfinite(v.numpy()))


# --------------------------------------------------------------------------- #
# 5. XLA
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind,bound", [("sam", None), ("bisam", "neglog"), ("bisam", "tanh")])
def test_xla_step_matches_eager_graph_and_reference(kind, bound):
    params = make_params(seed=31)
    x, y = make_data(seed=32)
    rho, lr = 0.3, 0.5

    def run(jit):
        if kind == "sam":
            opt = bk.SAM(keras.optimizers.SGD(lr), rho=rho)
        else:
            opt = bk.BiSAM(keras.optimizers.SGD(lr), rho=rho, lower_bound=bound)
        model = compile_sa(mlp(params), opt, jit_compile=jit)
        logs = model.train_on_batch(x, y, return_dict=True)
        return weights_of(model), logs

    w_jit, logs_jit = run(True)
    w_ref, logs_ref = run(False)
    for a, b in zip(w_jit, w_ref):
        # Two float32 orders (`assert_step_close`): 2 * 6e-6 of the update's summed terms
        # (lr * max|g| ~ 0.5), below atol 1e-6 + rtol 1e-5 of the weights (|w| ~ 0.5).
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs_jit["perturbed_loss"], logs_ref["perturbed_loss"], rtol=1e-5)
    expected, _, perturbed = np_step(params, x, y, rho, lr, kind, bound or "neglog")
    assert_step_close(w_jit, params, expected, rtol=1e-4, atol_frac=1e-5)
    np.testing.assert_allclose(logs_jit["perturbed_loss"], perturbed, rtol=1e-5)


def test_xla_batchnorm_micro_batch_step_matches_non_jit():
    x, y = make_data(seed=33)
    x = x + 0.3

    def run(jit):
        inner = bn_model(seed=34)
        expected = np_bn_expected(inner, x, chunk=4)
        model = compile_sa(
            inner,
            bk.BiSAM(keras.optimizers.SGD(0.5), rho=0.3, micro_batch_size=4),
            jit_compile=jit,
        )
        model.train_on_batch(x, y)
        bn = inner.get_layer("bn")
        np.testing.assert_allclose(bn.moving_mean.numpy(), expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.moving_variance.numpy(), expected[1], rtol=1e-5, atol=1e-6)
        return [v.numpy() for v in inner.weights]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lower_bound_function_is_xla_compiled():
    fn = lower_bounds._lower_bound_xla
    assert isinstance(fn, tf.types.experimental.PolymorphicFunction)
    concrete = fn.get_concrete_function(
        tf.TensorSpec([None, 3], tf.float32),
        tf.TensorSpec([None], tf.int32),
        tf.constant(1.5),
        tf.constant(0.1),
        "neglog",
        True,
        3,
    )
    assert concrete.function_def.attr["_XlaMustCompile"].b is True
    # And it computes Q_i: compare with the hand formula.
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], np.float32)
    labels = np.array([0, 2], np.int32)
    got = fn(
        tf.constant(logits),
        tf.constant(labels),
        tf.constant(1.5),
        tf.constant(0.1),
        "neglog",
        True,
        3,  # the half-integer kernel for mu = 3 / 2
    ).numpy()
    margins = logits.astype(np.float64) - logits[np.arange(2), labels][:, None]
    phi = 1.0 - np.logaddexp(0.0, GAMMA - margins)
    np.testing.assert_allclose(got, (np_logsumexp(1.5 * phi) - np.log(3)) / 1.5, rtol=1e-6)


# --------------------------------------------------------------------------- #
# 6. Numerical stability with huge logits.
# --------------------------------------------------------------------------- #


def huge_logit_problem(near_tie):
    """Logits of magnitude ~1e4 (last layer scaled by 1e4).

    With `near_tie`, example 0 is classified correctly with a margin of only
    0.5 over its runner-up, so the ascent gradient is well conditioned (not
    an underflow) while every other margin is in the hundreds or thousands.
    """
    params = make_params(seed=41)
    params[2] = params[2] * np.float32(1e4)
    params[3] = params[3] * np.float32(1e4)
    x, y = make_data(seed=42)
    p64 = [np.asarray(v, np.float64) for v in params]
    _, f = np_forward(p64, np.asarray(x, np.float64))
    if near_tie:
        order = np.argsort(f[0])
        y[0] = order[-1]
        params[3][order[-2]] += np.float32(f[0, order[-1]] - f[0, order[-2]] - 0.5)
        p64 = [np.asarray(v, np.float64) for v in params]
        _, f = np_forward(p64, np.asarray(x, np.float64))
        margins = f - f[np.arange(len(y)), y][:, None]
        assert abs(np.sort(margins[0])[-2] + 0.5) < 1e-2
        assert np.min(np.abs(margins[1:][margins[1:] != 0])) > 20.0
    assert np.max(np.abs(f)) > 5e3
    return params, x, y, f


def ulp_of(values):
    return np.spacing(np.abs(np.asarray(values, np.float32))).astype(np.float64)


@pytest.mark.parametrize("bound", ["neglog", "tanh"])
@pytest.mark.parametrize("jit", [False, True])
def test_huge_saturated_logits_give_finite_step(bound, jit):
    """All margins in the hundreds: the ascent gradient (nearly) underflows.

    Whether it is exactly 0 (then e = 0) or tiny (then ||e|| = rho in an
    ill-conditioned direction) depends on rounding, so only properties that
    hold either way are checked: finite weights and logs, the loss at w, and
    the bound on the last layer's update.
    """
    params, x, y, f = huge_logit_problem(near_tie=False)
    lr = 0.1
    model = compile_sa(
        mlp(params),
        bk.BiSAM(keras.optimizers.SGD(lr), rho=0.05, lower_bound=bound),
        jit_compile=jit,
    )
    logs = model.train_on_batch(x, y, return_dict=True)
    after = weights_of(model)
    for w in after:
        assert np.all(np.isfinite(w))
    assert np.isfinite(logs["perturbed_loss"])
    np.testing.assert_allclose(logs["loss"], np_ce(f, y), rtol=1e-5)
    # |d CE / d f_ik| <= 1/b and |h| <= 1, so every entry of the W2 and b2
    # gradients is at most 1 in magnitude: their updates are at most lr
    # (plus the float32 rounding of weights of magnitude ~1e4).
    assert np.all(np.abs(after[2] - params[2]) <= lr + 2 * ulp_of(params[2]))
    assert np.all(np.abs(after[3] - params[3]) <= lr + 2 * ulp_of(params[3]))
    assert np.max(np.abs(after[2] - params[2])) > 0.1 * lr  # it did train
    # Another step from there stays finite too.
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and np.isfinite(logs["perturbed_loss"])
    for w in weights_of(model):
        assert np.all(np.isfinite(w))


@pytest.mark.parametrize("bound", ["neglog", "tanh"])
def test_huge_logits_with_one_near_tie_match_reference(bound):
    params, x, y, f = huge_logit_problem(near_tie=True)
    lr = 0.1
    model = compile_sa(mlp(params), bk.BiSAM(keras.optimizers.SGD(lr), rho=0.05, lower_bound=bound))
    logs = model.train_on_batch(x, y, return_dict=True)
    after = weights_of(model)
    for w in after:
        assert np.all(np.isfinite(w))
    expected, loss, perturbed = np_step(params, x, y, 0.05, lr, "bisam", bound)
    np.testing.assert_allclose(logs["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(logs["perturbed_loss"], perturbed, rtol=1e-3)
    for index, (got, before, want) in enumerate(zip(after, params, expected)):
        delta = np.asarray(want, np.float64) - np.asarray(before, np.float64)
        # Weights of magnitude ~1e4 store their update only to within an ulp.
        atol = np.maximum(1e-2 * np.max(np.abs(delta)), 2 * ulp_of(before))
        error = np.abs(got - np.asarray(before, np.float64) - delta)
        assert np.all(error <= atol + 1e-2 * np.abs(delta)), (index, np.max(error / atol))


# --------------------------------------------------------------------------- #
# 7. Dropout: the RNG state advances once per step, training works with jit.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("jit", [False, True])
def test_dropout_rng_state_advances(jit):
    keras.utils.set_random_seed(1234)
    params = make_params(seed=51)
    x, y = make_data(seed=52, b=16)
    x = np.tile(x[:1], (16, 1))  # identical rows: only dropout makes them differ
    y = np.full((16,), y[0], np.int32)
    # lr = 0: the weights never change, so the loss only changes through the masks.
    model = compile_sa(
        mlp(params, dropout=0.5),
        bk.BiSAM(keras.optimizers.SGD(0.0), rho=0.05),
        jit_compile=jit,
    )
    model.train_on_batch(x, y)  # builds everything
    seed_vars = [v for v in model.non_trainable_variables if "seed_generator" in v.path]
    assert seed_vars, [v.path for v in model.non_trainable_variables]
    states, losses = [], []
    for _ in range(3):
        states.append([np.array(v.numpy()) for v in seed_vars])
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(logs["loss"])
        assert np.isfinite(logs["loss"]) and np.isfinite(logs["perturbed_loss"])
    states.append([np.array(v.numpy()) for v in seed_vars])
    for a, b in zip(states[:-1], states[1:]):
        assert any(not np.array_equal(u, v) for u, v in zip(a, b))
    assert len({round(float(v), 6) for v in losses}) == 3, losses
    for w, p in zip(weights_of(model), params):
        np.testing.assert_array_equal(w, np.asarray(p, np.float64))

    # Without dropout the loss of this batch is the NumPy value; with it the
    # losses differ from it (masks are applied) but stay finite.
    _, f = np_forward([np.asarray(v, np.float64) for v in params], np.asarray(x, np.float64))
    clean = np_ce(f, y)
    assert all(abs(v - clean) > 1e-4 for v in losses)
    # Inference (no dropout) gives exactly the NumPy logits.
    np.testing.assert_allclose(model.predict(x, verbose=0), f, rtol=1e-5, atol=1e-6)
