"""Sharpness-aware training together with the rest of Keras.

Checks that `bk.SharpnessAwareModel` / `bk.SharpnessAwareMixin` with `bk.SAM`
and `bk.BiSAM` work with Keras' compile options (XLA, eager,
`steps_per_execution`), `fit` features (`class_weight`), the inner
optimizer's own features (gradient accumulation, learning-rate schedules,
weight decay), callbacks (EarlyStopping, ModelCheckpoint, BackupAndRestore),
saving and `get_config`/`from_config`, the logs, and input validation.

Every test compares numbers with an independent expectation: either the same
training done another way (another compile mode, an uninterrupted run, the
equivalent `sample_weight`, ...) or a float64 NumPy reference of the step
written in this file (softmax regression ``logits = x W + b`` with a
hand-derived gradient of the cross-entropy and of the lower bound ``Q``).
Tests that compare two Keras runs also check that the runs moved the weights
measurably, so that "nothing happened" cannot pass.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tolerances import U32, U_FUNC, gamma, momentum_accumulation

import bisam_keras as bk

D, H, K = 4, 5, 3  # input dim, hidden units, classes
GAMMA = math.log(math.e - 1.0)
DEFAULT_MU = {"neglog": 1.5, "tanh": 10.0}


# Logged losses (rel 1e-5 where compared with NumPy or between two runs): a mean of <= 24
# per-example values (CE >= 0, so the sum's error is relative: gamma(24)), each through dot
# products of length <= H + 1 and log-softmax: gamma(24) + 2 gamma(H + 1) + 3 U_FUNC = 3.5e-6
# relative per run, twice that between two runs, on weights within `run_atol` (< 1e-5 at
# |dL/dw| < 1). Metrics that are counts (accuracy) are exact: pytest.approx's rel 1e-6.
LOSS_RTOL = 1e-5


def run_atol(x, steps, lr=0.1, momentum=0.0, orders=1):
    """Float32 bound on the weights after `steps` SGD steps of these models.

    Against the float64 reference (orders=1), or between two float32 runs that may sum in
    different orders (orders=2: XLA, graph, eager, steps_per_execution, restored runs).
    Models: softmax regression or the D-H-K MLP, batches <= 16. Per step, a gradient entry
    sum_b x_bi d_bj / b has terms |x_bi d_bj| <= max|x| * 2: |d| <= 1 for the softmax's
    p - onehot and the bounds' dQ/dF, and the MLP's backpropagation through tanh and
    |W2| (rows sum < 2). Its relative error (`tolerances`): the batch sum gamma(16), the
    logits' dot products gamma(H + 1) per layer (two), exp/log/tanh/softmax 3 U_FUNC. The
    ascent step's perturbation, made from such a gradient, moves the descent gradient by
    no more again (factor 2). SGD with momentum adds the steps up (`momentum_accumulation`)
    times lr; a factor 2 covers the curvature feedback over these few steps. Each update
    also rounds the weights (|w| < 2): 2 u per step.
    """
    per_step = 2 * (2 * np.abs(x).max()) * (gamma(16) + 2 * gamma(H + 1) + 3 * U_FUNC)
    trajectory = 2 * lr * momentum_accumulation(steps, momentum) * per_step
    return orders * (trajectory + steps * 4 * U32)


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    yield


# --------------------------------------------------------------------------- #
# Data, models and optimizers.
# --------------------------------------------------------------------------- #


def make_data(n=24, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(n, D).astype(np.float32)
    y = rs.randint(0, K, size=n).astype(np.int32)
    return x, y


def linear_params(seed=1, scale=0.5):
    rs = np.random.RandomState(seed)
    return [
        (scale * rs.randn(D, K)).astype(np.float32),
        (0.1 * rs.randn(K)).astype(np.float32),
    ]


def mlp_params(seed=2):
    rs = np.random.RandomState(seed)
    return [
        (0.6 * rs.randn(D, H)).astype(np.float32),
        (0.1 * rs.randn(H)).astype(np.float32),
        (0.6 * rs.randn(H, K)).astype(np.float32),
        (0.1 * rs.randn(K)).astype(np.float32),
    ]


def linear_inner(params=None):
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K)])
    inner.set_weights(params if params is not None else linear_params())
    return inner


def mlp_inner(params=None):
    inner = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(H, activation="tanh"), keras.layers.Dense(K)]
    )
    inner.set_weights(params if params is not None else mlp_params())
    return inner


def ce_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_opt(kind, inner=None, rho=0.3, **kwargs):
    inner = inner if inner is not None else keras.optimizers.SGD(0.1)
    if kind == "sam":
        return bk.SAM(inner, rho=rho, **kwargs)
    return bk.BiSAM(inner, rho=rho, lower_bound=kind, **kwargs)


def sa_model(inner, opt, metrics=("accuracy",), **compile_kwargs):
    model = bk.SharpnessAwareModel(inner)
    model.compile(optimizer=opt, loss=ce_loss(), metrics=list(metrics), **compile_kwargs)
    return model


def weights(model):
    return [np.array(w) for w in model.get_weights()]


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
        for u, v in zip(a, b)
    )


def assert_same(got, expected, atol, what=""):
    assert len(got) == len(expected), what
    diff = max_diff(got, expected)
    assert diff <= atol, f"{what}: max |diff| = {diff:.3e} > {atol:.1e}"


def assert_moved(after, before, at_least=1e-3, what=""):
    diff = max_diff(after, before)
    assert diff > at_least, f"{what}: weights barely moved (max |diff| = {diff:.3e})"


KINDS = pytest.mark.parametrize("kind", ["sam", "neglog", "tanh"])
SAM_AND_BISAM = pytest.mark.parametrize("kind", ["sam", "neglog"])


# --------------------------------------------------------------------------- #
# Float64 NumPy reference of one step on softmax regression.
# --------------------------------------------------------------------------- #


def np_softmax(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def np_logsumexp(a):
    m = a.max(-1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[:, 0]


def np_logits(params, x):
    return np.asarray(x, np.float64) @ params[0] + params[1]


def np_ce(f, y):
    """Per-example cross-entropy and its gradient w.r.t. the logits."""
    one_hot = np.eye(f.shape[1])[y]
    return np_logsumexp(f) - f[np.arange(len(y)), y], np_softmax(f) - one_hot


def np_q(f, y, kind, mu, alpha):
    """Per-example lower bound Q_i and its gradient w.r.t. the logits."""
    k = f.shape[1]
    margins = f - f[np.arange(len(y)), y][:, None]
    if kind == "neglog":
        phi = 1.0 - np.logaddexp(0.0, GAMMA - margins)
        dphi = 1.0 / (1.0 + np.exp(margins - GAMMA))  # sigmoid(gamma - x)
    else:
        phi = np.tanh(alpha * margins)
        dphi = alpha * (1.0 - phi**2)
    z = mu * phi
    q = (np_logsumexp(z) - math.log(k)) / mu
    c = np_softmax(z) * dphi  # dQ_i / dF_ij
    grad = c.copy()
    grad[np.arange(len(y)), y] -= c.sum(-1)  # F_ij = f_j - f_y
    return q, grad


def np_grads(x, dlogits):
    x = np.asarray(x, np.float64)
    return [x.T @ dlogits, dlogits.sum(0)]


def np_step(params, x, y, sw=None, kind="sam", rho=0.3, mu=None, alpha=0.1):
    """Descent gradient at w + e, loss at w, loss at w + e (float64)."""
    params = [np.asarray(p, np.float64) for p in params]
    b = len(y)
    s = np.ones(b) if sw is None else np.asarray(sw, np.float64)
    f = np_logits(params, x)
    ce, dce = np_ce(f, y)
    loss = float((s * ce).sum() / b)
    if rho == 0.0:
        return np_grads(x, s[:, None] * dce / b), loss, loss
    if kind == "sam":
        d_ascent = s[:, None] * dce / b
    else:
        mu = DEFAULT_MU[kind] if mu is None else mu
        _, dq = np_q(f, y, kind, mu, alpha)
        d_ascent = s[:, None] * dq / b
    g = np_grads(x, d_ascent)
    norm = math.sqrt(sum(float((t**2).sum()) for t in g))
    eps = [rho * t / norm for t in g]
    perturbed = [p + e for p, e in zip(params, eps)]
    fp = np_logits(perturbed, x)
    cep, dcep = np_ce(fp, y)
    return np_grads(x, s[:, None] * dcep / b), loss, float((s * cep).sum() / b)


def np_sgd_run(params, batches, kind, rho, lrs, momentum=0.0, weight_decay=0.0, **kw):
    """SGD (Keras' formulas) on the NumPy descent gradients; returns params."""
    p = [np.asarray(t, np.float64) for t in params]
    m = [np.zeros_like(t) for t in p]
    for lr, (x, y, sw) in zip(lrs, batches):
        g, _, _ = np_step(p, x, y, sw, kind=kind, rho=rho, **kw)
        p = [t - t * weight_decay * lr for t in p]
        m = [momentum * mi - lr * gi for mi, gi in zip(m, g)]
        p = [t + mi for t, mi in zip(p, m)]
    return p


def batches_of(x, y, size, sw=None):
    return [
        (x[i : i + size], y[i : i + size], None if sw is None else sw[i : i + size])
        for i in range(0, len(x), size)
    ]


def test_numpy_reference_gradients_match_finite_differences():
    """The hand-derived gradients of the reference (guards the reference itself)."""
    x, y = make_data(6, seed=11)
    f = np.random.RandomState(3).randn(6, K)
    sw = np.random.RandomState(4).uniform(0.5, 2.0, 6)
    h = 1e-6
    for kind in ("ce", "neglog", "tanh"):

        def total(logits, kind=kind):
            if kind == "ce":
                return float((sw * np_ce(logits, y)[0]).sum())
            return float((sw * np_q(logits, y, kind, DEFAULT_MU[kind], 0.3)[0]).sum())

        if kind == "ce":
            analytic = sw[:, None] * np_ce(f, y)[1]
        else:
            analytic = sw[:, None] * np_q(f, y, kind, DEFAULT_MU[kind], 0.3)[1]
        numeric = np.zeros_like(f)
        for idx in np.ndindex(*f.shape):
            fp, fm = f.copy(), f.copy()
            fp[idx] += h
            fm[idx] -= h
            numeric[idx] = (total(fp) - total(fm)) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=kind)
    # Q is a lower bound of the 0-1 loss, so it is <= 0 on correct rows.
    f = np.array([[3.0, -1.0, 0.0], [0.0, 2.0, 0.0]])
    q, _ = np_q(f, np.array([0, 1]), "neglog", 1.5, 0.1)
    assert np.all(q <= 0.0)


# --------------------------------------------------------------------------- #
# 1. jit_compile=True / False / run_eagerly=True.
# --------------------------------------------------------------------------- #

MODES = {
    "xla": dict(jit_compile=True),
    "graph": dict(jit_compile=False),
    "eager": dict(run_eagerly=True),
}


@KINDS
def test_compile_modes_match_numpy(kind):
    """3 fit steps in each mode equal the NumPy reference (and each other)."""
    x, y = make_data(24)
    params = linear_params()
    expected = np_sgd_run(params, batches_of(x, y, 8), kind, 0.3, [0.1] * 3)
    assert_moved(expected, params, what="reference")
    results = {}
    for mode, kwargs in MODES.items():
        model = sa_model(linear_inner(params), make_opt(kind), **kwargs)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results[mode] = weights(model)
        assert_same(results[mode], expected, run_atol(x, 3), f"{kind} {mode} vs numpy")
    assert_same(results["xla"], results["graph"], run_atol(x, 3, orders=2), "xla vs graph")
    assert_same(results["eager"], results["graph"], run_atol(x, 3, orders=2), "eager vs graph")


@pytest.mark.slow
@KINDS
def test_compile_modes_agree_on_mlp_with_momentum(kind):
    """A 2-layer MLP with SGD momentum, 6 steps: XLA, graph and eager agree."""
    x, y = make_data(24, seed=5)
    params = mlp_params()
    results = {}
    for mode, kwargs in MODES.items():
        opt = make_opt(kind, keras.optimizers.SGD(0.1, momentum=0.9), rho=0.2)
        model = sa_model(mlp_inner(params), opt, **kwargs)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results[mode] = weights(model)
    assert_moved(results["graph"], params, what="graph run")
    atol = run_atol(x, 6, momentum=0.9, orders=2)
    assert_same(results["xla"], results["graph"], atol, "xla vs graph")
    assert_same(results["eager"], results["graph"], atol, "eager vs graph")
    # The same run with plain SGD (rho=0) ends elsewhere: the modes agree on
    # the sharpness-aware result, not on something rho-independent.
    plain = sa_model(
        mlp_inner(params),
        make_opt(kind, keras.optimizers.SGD(0.1, momentum=0.9), rho=0.0),
        jit_compile=False,
    )
    plain.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert_moved(weights(plain), results["graph"], 1e-4, "rho=0 vs rho=0.2")


# --------------------------------------------------------------------------- #
# 2. steps_per_execution.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@SAM_AND_BISAM
def test_steps_per_execution(kind, jit):
    x, y = make_data(24)
    params = linear_params()
    expected = np_sgd_run(params, batches_of(x, y, 4), kind, 0.3, [0.1] * 6)
    results = {}
    for spe in (1, 3):
        model = sa_model(
            linear_inner(params), make_opt(kind), jit_compile=jit, steps_per_execution=spe
        )
        history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        results[spe] = (weights(model), history.history)
        assert int(model.optimizer.iterations.numpy()) == 6
    assert_moved(results[1][0], params)
    atol = run_atol(x, 6, orders=2)
    assert_same(results[3][0], results[1][0], atol, "steps_per_execution=3 vs 1")
    assert_same(results[1][0], expected, run_atol(x, 6), "steps_per_execution=1 vs numpy")
    for key in ("loss", "perturbed_loss", "accuracy"):
        np.testing.assert_allclose(results[3][1][key], results[1][1][key], rtol=1e-5, err_msg=key)


# --------------------------------------------------------------------------- #
# 3. class_weight.
# --------------------------------------------------------------------------- #


@KINDS
def test_class_weight_equals_sample_weight(kind):
    x, y = make_data(16, seed=7)
    params = linear_params()
    class_weight = {0: 0.25, 1: 3.0, 2: 1.5}
    sw = np.array([class_weight[int(c)] for c in y], np.float32)

    by_class = sa_model(linear_inner(params), make_opt(kind))
    h1 = by_class.fit(
        x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, class_weight=class_weight
    )
    by_sample = sa_model(linear_inner(params), make_opt(kind))
    h2 = by_sample.fit(x, y, sample_weight=sw, batch_size=8, epochs=1, shuffle=False, verbose=0)
    unweighted = sa_model(linear_inner(params), make_opt(kind))
    unweighted.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    expected = np_sgd_run(params, batches_of(x, y, 8, sw), kind, 0.3, [0.1, 0.1])
    atol = run_atol(x, 2, orders=2)
    assert_same(weights(by_class), weights(by_sample), atol, "class_weight vs sample_weight")
    assert_same(weights(by_sample), expected, run_atol(x, 2), "sample_weight vs numpy")
    assert_moved(weights(unweighted), weights(by_class), 1e-3, "weights must matter")
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(
        h1.history["perturbed_loss"], h2.history["perturbed_loss"], rtol=LOSS_RTOL
    )


# --------------------------------------------------------------------------- #
# 4. The inner optimizer's own features.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@SAM_AND_BISAM
def test_gradient_accumulation(kind, jit):
    """SGD(gradient_accumulation_steps=2): the weights move once every 2 steps,
    by -lr * (mean of the two sharpness-aware descent gradients at w0)."""
    x, y = make_data(16, seed=3)
    params = linear_params()
    lr = 0.5
    opt = make_opt(kind, keras.optimizers.SGD(lr, gradient_accumulation_steps=2))
    model = sa_model(linear_inner(params), opt, jit_compile=jit)
    (x1, y1, _), (x2, y2, _), (x3, y3, _), (x4, y4, _) = batches_of(x, y, 4)

    model.train_on_batch(x1, y1)
    after1 = weights(model)
    assert max_diff(after1, params) == 0.0, "weights changed after the first accumulated step"
    model.train_on_batch(x2, y2)
    after2 = weights(model)
    g1, _, _ = np_step(params, x1, y1, kind=kind)
    g2, _, _ = np_step(params, x2, y2, kind=kind)
    expected2 = [p - lr * (a + b) / 2 for p, a, b in zip(params, g1, g2)]
    assert_moved(after2, params)
    assert_same(after2, expected2, run_atol(x, 2), "after 2 accumulated steps")
    assert int(model.optimizer.iterations.numpy()) == 1  # Keras counts updates

    model.train_on_batch(x3, y3)
    assert max_diff(weights(model), after2) == 0.0, "weights changed on step 3"
    model.train_on_batch(x4, y4)
    g3, _, _ = np_step(expected2, x3, y3, kind=kind)
    g4, _, _ = np_step(expected2, x4, y4, kind=kind)
    expected4 = [p - lr * (a + b) / 2 for p, a, b in zip(expected2, g3, g4)]
    assert_same(weights(model), expected4, run_atol(x, 4), "after 4 accumulated steps")


@SAM_AND_BISAM
def test_learning_rate_schedule(kind):
    x, y = make_data(16, seed=4)
    params = linear_params()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.4, decay_steps=1, decay_rate=0.5)
    model = sa_model(linear_inner(params), make_opt(kind, keras.optimizers.SGD(schedule)))
    batches = batches_of(x, y, 4)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.4)
    for step, (xb, yb, _) in enumerate(batches, start=1):
        model.train_on_batch(xb, yb)
        assert int(model.optimizer.iterations.numpy()) == step
        assert float(model.optimizer.learning_rate) == pytest.approx(0.4 * 0.5**step, rel=1e-6)
    expected = np_sgd_run(params, batches, kind, 0.3, [0.4 * 0.5**s for s in range(4)])
    constant = np_sgd_run(params, batches, kind, 0.3, [0.4] * 4)
    assert max_diff(expected, constant) > 1e-2
    atol = run_atol(np.concatenate([b[0] for b in batches]), 4, lr=0.4)  # lr <= 0.4
    assert_same(weights(model), expected, atol, "scheduled SGD vs numpy")


@pytest.mark.parametrize(
    "make_inner",
    [
        lambda: keras.optimizers.AdamW(0.05, weight_decay=0.2),
        lambda: keras.optimizers.SGD(0.2, momentum=0.5, weight_decay=0.3),
    ],
    ids=["adamw", "sgd-wd"],
)
@SAM_AND_BISAM
def test_weight_decay_rho_zero_is_plain_training(kind, make_inner):
    """BiSAM/SAM(rho=0, inner) == plain Keras training with `inner`."""
    x, y = make_data(16, seed=6)
    params = mlp_params()
    wrapped = sa_model(mlp_inner(params), make_opt(kind, make_inner(), rho=0.0))
    wrapped.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    plain = mlp_inner(params)
    plain.compile(optimizer=make_inner(), loss=ce_loss())
    plain.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    no_decay = mlp_inner(params)
    inner = make_inner()
    inner.weight_decay = None
    no_decay.compile(optimizer=inner, loss=ce_loss())
    no_decay.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert_moved(weights(plain), weights(no_decay), 1e-3, "weight decay must matter")
    # Adam's step lr m / sqrt(v) has the relative error of the gradient, like SGD's at lr 0.2.
    atol = run_atol(x, 4, lr=0.2, momentum=0.5, orders=2)
    assert_same(weights(wrapped), weights(plain), atol, "rho=0 vs plain")


@pytest.mark.parametrize(
    "make_inner",
    [
        lambda: keras.optimizers.AdamW(0.05, weight_decay=0.2),
        lambda: keras.optimizers.SGD(0.2, momentum=0.5, weight_decay=0.3),
    ],
    ids=["adamw", "sgd-wd"],
)
@SAM_AND_BISAM
def test_weight_decay_applied_to_the_descent_gradient(kind, make_inner):
    """With rho > 0: each step equals the same inner optimizer applied directly
    to the NumPy descent gradient at the current weights."""
    x, y = make_data(12, seed=8)
    params = linear_params()
    model = sa_model(linear_inner(params), make_opt(kind, make_inner()))
    manual = make_inner()
    variables = [keras.Variable(p) for p in params]
    for xb, yb, _ in batches_of(x, y, 4):
        model.train_on_batch(xb, yb)
        point = [np.array(v) for v in variables]
        g, _, _ = np_step(point, xb, yb, kind=kind)
        manual.apply([tf.constant(t, tf.float32) for t in g], variables)
    expected = [np.array(v) for v in variables]
    assert_moved(expected, params)
    atol = run_atol(x, 3, lr=0.2, momentum=0.5, orders=2)
    assert_same(weights(model), expected, atol, "wrapped inner vs inner on numpy gradient")
    if isinstance(manual, keras.optimizers.SGD):
        hand = np_sgd_run(
            params, batches_of(x, y, 4), kind, 0.3, [0.2] * 3, momentum=0.5, weight_decay=0.3
        )
        atol = run_atol(x, 3, lr=0.2, momentum=0.5)
        assert_same(weights(model), hand, atol, "SGD weight decay by hand")


# --------------------------------------------------------------------------- #
# 5. Callbacks.
# --------------------------------------------------------------------------- #


def test_early_stopping_on_loss_restores_best_weights():
    x, y = make_data(16)
    params = linear_params()
    stop = keras.callbacks.EarlyStopping(
        monitor="loss", min_delta=10.0, patience=2, restore_best_weights=True
    )
    model = sa_model(linear_inner(params), make_opt("neglog"))
    history = model.fit(x, y, batch_size=8, epochs=20, shuffle=False, verbose=0, callbacks=[stop])
    # Epoch 0 is the best (nothing improves by 10), epochs 1 and 2 exhaust patience.
    assert len(history.history["loss"]) == 3
    assert stop.stopped_epoch == 2
    reference = sa_model(linear_inner(params), make_opt("neglog"))
    reference.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_moved(weights(reference), params)
    atol = run_atol(x, 2, orders=2)  # the same 2 steps, run twice
    assert_same(weights(model), weights(reference), atol, "restored best (epoch 1) weights")
    three = sa_model(linear_inner(params), make_opt("neglog"))
    three.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert_moved(weights(three), weights(reference), 1e-3, "epochs 2-3 must move the weights")


def test_early_stopping_on_val_loss():
    x, y = make_data(16)
    # Validation labels that disagree with the training labels: val_loss rises.
    y_val = (y + 1) % K
    params = linear_params()
    patience = 2
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    model = sa_model(linear_inner(params), make_opt("sam"))
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=30,
        shuffle=False,
        verbose=0,
        validation_data=(x, y_val),
        callbacks=[stop],
    )
    val_loss = history.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert len(val_loss) == best + patience + 1 < 30, val_loss
    reference = sa_model(linear_inner(params), make_opt("sam"))
    reference.fit(x, y, batch_size=8, epochs=best + 1, shuffle=False, verbose=0)
    atol = run_atol(x, 2 * (best + 1), orders=2)  # the same steps, run twice
    assert_same(weights(model), weights(reference), atol, "restored best weights")
    np.testing.assert_allclose(
        reference.evaluate(x, y_val, verbose=0)[0], val_loss[best], rtol=1e-5
    )


def test_model_checkpoint_writes_loadable_keras_files(tmp_path):
    x, y = make_data(16)
    params = linear_params()
    per_epoch = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: per_epoch.append(weights(model))
    )
    path = str(tmp_path / "ckpt_{epoch}.keras")
    model = sa_model(linear_inner(params), make_opt("neglog", keras.optimizers.SGD(0.1, 0.9)))
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.ModelCheckpoint(path), record],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1.keras", "ckpt_2.keras"]
    assert_moved(per_epoch[1], per_epoch[0])
    for epoch in (1, 2):
        loaded = keras.models.load_model(tmp_path / f"ckpt_{epoch}.keras")
        assert type(loaded) is bk.SharpnessAwareModel
        assert type(loaded.optimizer) is bk.BiSAM
        assert_same(weights(loaded), per_epoch[epoch - 1], 0.0, f"checkpoint {epoch}")
        assert int(loaded.optimizer.iterations.numpy()) == 2 * epoch
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError(f"interrupted at epoch {epoch}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,extra",
    [("sam", {}), ("neglog", {}), ("neglog", {"swp_probability": 0.5, "seed": 7})],
    ids=["sam", "bisam", "bisam-swp"],
)
def test_backup_and_restore_resumes_identically(tmp_path, kind, extra):
    x, y = make_data(16)
    params = mlp_params()

    def build(p):
        opt = make_opt(kind, keras.optimizers.SGD(0.1, momentum=0.9), **extra)
        return sa_model(mlp_inner(p), opt)

    uninterrupted = build(params)
    uninterrupted.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)

    backup = str(tmp_path / "backup")
    first = build(params)
    with pytest.raises(RuntimeError, match="interrupted at epoch 2"):
        first.fit(
            x,
            y,
            batch_size=8,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup), _InterruptAt(2)],
        )
    # A fresh process would start from other weights: the backup must win.
    resumed = build(mlp_params(seed=99))
    history = resumed.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup)],
    )
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert int(resumed.optimizer.iterations.numpy()) == 8
    assert_moved(weights(uninterrupted), params)
    atol = run_atol(x, 8, momentum=0.9, orders=2)  # the same 8 steps, run twice
    assert_same(weights(resumed), weights(uninterrupted), atol, "resumed vs uninterrupted")


# --------------------------------------------------------------------------- #
# 6. Saving and loading a whole model.
# --------------------------------------------------------------------------- #

OPT_CONFIGS = {
    "sam": lambda: bk.SAM(
        keras.optimizers.SGD(0.1, momentum=0.9),
        rho=0.07,
        adaptive=True,
        eta=0.01,
        swp_probability=0.5,
        sds_fraction=0.75,
        micro_batch_size=4,
        seed=123,
        name="my_sam",
    ),
    "bisam": lambda: bk.BiSAM(
        keras.optimizers.SGD(0.1, momentum=0.9),
        rho=0.08,
        lower_bound="tanh",
        mu=5.0,
        alpha=0.3,
        adaptive=True,
        eta=0.02,
        swp_probability=0.5,
        sds_fraction=0.75,
        micro_batch_size=4,
        seed=321,
        name="my_bisam",
    ),
}
CONFIG_KEYS = [
    "name",
    "rho",
    "adaptive",
    "eta",
    "swp_probability",
    "sds_fraction",
    "micro_batch_size",
    "seed",
    "weight_decay",
]


@pytest.mark.parametrize("which", sorted(OPT_CONFIGS))
def test_saved_archive_holds_model_class_weights_and_optimizer_config(tmp_path, which):
    """The part of saving that does not need compile-on-load: the model class,
    its weights, and the optimizer config written into the archive."""
    import json
    import zipfile

    x, y = make_data(16)
    model = sa_model(mlp_inner(), OPT_CONFIGS[which]())
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert type(loaded) is bk.SharpnessAwareModel
    assert_moved(weights(model), mlp_params())
    assert_same(weights(loaded), weights(model), 0.0, "weights")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        config = json.loads(archive.read("config.json"))
    opt = keras.saving.deserialize_keras_object(config["compile_config"]["optimizer"])
    assert type(opt) is type(model.optimizer)
    assert opt.get_config() == model.optimizer.get_config()


@pytest.mark.parametrize("which", sorted(OPT_CONFIGS))
def test_save_load_restores_classes_config_and_optimizer_state(tmp_path, which):
    x, y = make_data(16)
    opt = OPT_CONFIGS[which]()
    model = sa_model(mlp_inner(), opt)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")

    assert type(loaded) is bk.SharpnessAwareModel
    assert type(loaded.optimizer) is type(opt)
    got, expected = loaded.optimizer, model.optimizer
    for key in CONFIG_KEYS:
        assert getattr(got, key) == getattr(expected, key), key
    if which == "bisam":
        assert (got.lower_bound, got.mu, got.alpha) == ("tanh", 5.0, 0.3)
    assert got.get_config() == expected.get_config()
    assert type(got.inner_optimizer) is keras.optimizers.SGD
    assert got.inner_optimizer.momentum == 0.9
    assert float(got.learning_rate) == pytest.approx(0.1)
    assert int(got.iterations.numpy()) == 2
    assert_same(weights(loaded), weights(model), 0.0, "model weights")
    # Slot variables in order (their paths carry the model's unique layer names,
    # which differ between the original and the loaded model).
    inner_got = got.inner_optimizer.variables
    inner_expected = expected.inner_optimizer.variables
    assert len(inner_got) == len(inner_expected)
    for a, b in zip(inner_got, inner_expected):
        assert ("momentum" in a.name) == ("momentum" in b.name), (a.name, b.name)
    momenta = [i for i, v in enumerate(inner_expected) if "momentum" in v.name]
    assert len(momenta) == 4, [v.name for v in inner_expected]
    assert max(float(np.abs(np.array(inner_expected[i])).max()) for i in momenta) > 1e-4
    for a, b in zip(inner_got, inner_expected):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=b.name)


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("sam", {}),
        ("neglog", {}),
        ("tanh", {}),
        ("neglog", {"swp_probability": 0.5}),
        ("sam", {"swp_probability": 0.5}),
    ],
    ids=["sam", "bisam-neglog", "bisam-tanh", "bisam-swp", "sam-swp"],
)
def test_training_after_load_matches_uninterrupted_run(tmp_path, kind, extra):
    x, y = make_data(24)
    params = mlp_params()

    def build(seed=11):
        opt = make_opt(kind, keras.optimizers.SGD(0.1, momentum=0.9), seed=seed, **extra)
        return sa_model(mlp_inner(params), opt)

    uninterrupted = build()
    uninterrupted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    first = build()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations.numpy()) == 3
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 6

    assert_moved(weights(uninterrupted), weights(first), 1e-3, "second epoch")
    atol = run_atol(x, 6, momentum=0.9, orders=2)  # the same 6 steps, run twice
    assert_same(weights(loaded), weights(uninterrupted), atol, "loaded+3 vs 6 steps")
    if extra.get("swp_probability", 1.0) < 1.0:
        # The mask matters: another seed (or a restarted step count) differs.
        other = build(seed=12)
        other.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        assert_moved(weights(other), weights(uninterrupted), 1e-5, "seed must matter")


# --------------------------------------------------------------------------- #
# 7. get_config / from_config.
# --------------------------------------------------------------------------- #


@keras.saving.register_keras_serializable(package="bk_integration_tests")
class TinySubclassed(keras.Model):
    def __init__(self, hidden=H, classes=K, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.classes = classes
        self.d1 = keras.layers.Dense(hidden, activation="tanh")
        self.d2 = keras.layers.Dense(classes)

    def call(self, x):
        return self.d2(self.d1(x))

    def get_config(self):
        config = super().get_config()
        config.update({"hidden": self.hidden, "classes": self.classes})
        return config


def _functional_inner():
    inputs = keras.Input((D,))
    hidden = keras.layers.Dense(H, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(K)(hidden))


def _round_trip(obj):
    clone = type(obj).from_config(obj.get_config())
    via_keras = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    return clone, via_keras


def _ascent_value(opt, y, f):
    return float(opt.ascent_loss(tf.constant(y), tf.constant(f, tf.float32)))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: bk.SAM(
            keras.optimizers.SGD(0.3, momentum=0.5),
            rho=0.2,
            adaptive=True,
            eta=0.1,
            swp_probability=0.25,
            sds_fraction=0.5,
            micro_batch_size=2,
            seed=5,
            weight_decay=1e-3,
            name="s",
        ),
        lambda: bk.BiSAM(
            keras.optimizers.Adam(0.01), rho=0.1, lower_bound="neglog", mu=2.5, seed=6
        ),
        lambda: bk.BiSAM(
            bk.optimizers.TorchSGD(bk.optimizers.EpochCosineDecay(0.1, 3, 7), momentum=0.9),
            rho=0.05,
            mu=1.5,
            weight_decay=5e-4,
            seed=10,
        ),
        lambda: bk.BiSAM(
            keras.optimizers.SGD(0.2),
            rho=0.1,
            lower_bound="tanh",
            mu=4.0,
            alpha=0.7,
            swp_probability=0.5,
            seed=7,
        ),
        lambda: bk.BiSAM(
            keras.optimizers.SGD(0.2),
            lower_bound=bk.losses.TanhLowerBound(mu=3.0, alpha=0.5),
            seed=8,
        ),
        lambda: bk.BiSAM(keras.optimizers.SGD(0.2), lower_bound=ce_loss(), seed=9),
    ],
    ids=[
        "sam",
        "bisam-neglog",
        "bisam-torch-sgd-decay",
        "bisam-tanh",
        "bisam-loss-tanh",
        "bisam-loss-ce",
    ],
)
def test_optimizer_config_round_trip(factory):
    opt = factory()
    config = opt.get_config()
    rs = np.random.RandomState(0)
    f = (2.0 * rs.randn(6, K)).astype(np.float32)
    y = rs.randint(0, K, 6).astype(np.int32)
    for clone in _round_trip(opt):
        assert type(clone) is type(opt)
        assert clone.get_config() == config
        for key in CONFIG_KEYS:
            assert getattr(clone, key) == getattr(opt, key), key
        assert type(clone.inner_optimizer) is type(opt.inner_optimizer)
        assert clone.inner_optimizer.get_config() == opt.inner_optimizer.get_config()
        if isinstance(opt, bk.BiSAM):
            assert clone.mu == opt.mu and clone.alpha == opt.alpha
            if isinstance(opt.lower_bound, str):
                assert clone.lower_bound == opt.lower_bound
            else:
                assert type(clone.lower_bound) is type(opt.lower_bound)
                assert clone.lower_bound.get_config() == opt.lower_bound.get_config()
            # The restored ascent objective gives the same numbers, and those
            # are the lower bound / loss computed independently.
            value = _ascent_value(opt, y, f)
            assert _ascent_value(clone, y, f) == pytest.approx(value, rel=1e-6)
            if isinstance(opt.lower_bound, str) or isinstance(
                opt.lower_bound, bk.losses.TanhLowerBound
            ):
                kind = opt.lower_bound if isinstance(opt.lower_bound, str) else "tanh"
                mu = opt.mu if isinstance(opt.lower_bound, str) else 3.0
                alpha = opt.alpha if isinstance(opt.lower_bound, str) else 0.5
                expected = np_q(f.astype(np.float64), y, kind, mu, alpha)[0].mean()
            else:
                expected = np_ce(f.astype(np.float64), y)[0].mean()
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "loss,kind,mu,alpha",
    [
        (lambda: bk.losses.NegLogLowerBound(), "neglog", 1.5, 0.1),
        (lambda: bk.losses.NegLogLowerBound(mu=2.0, name="nl"), "neglog", 2.0, 0.1),
        (lambda: bk.losses.TanhLowerBound(), "tanh", 10.0, 0.1),
        (lambda: bk.losses.TanhLowerBound(mu=3.0, alpha=0.4, name="th"), "tanh", 3.0, 0.4),
    ],
    ids=["neglog", "neglog-custom", "tanh", "tanh-custom"],
)
def test_loss_config_round_trip(loss, kind, mu, alpha):
    loss = loss()
    rs = np.random.RandomState(1)
    f = (2.0 * rs.randn(5, K)).astype(np.float32)
    y = rs.randint(0, K, 5).astype(np.int32)
    sw = rs.uniform(0.5, 2.0, 5).astype(np.float32)
    expected = float((sw * np_q(f.astype(np.float64), y, kind, mu, alpha)[0]).sum() / 5)
    assert float(loss(y, f, sample_weight=sw)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for clone in _round_trip(loss):
        assert type(clone) is type(loss)
        assert clone.get_config() == loss.get_config()
        assert float(clone(y, f, sample_weight=sw)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    "make_inner",
    [lambda: mlp_inner(), _functional_inner, lambda: TinySubclassed()],
    ids=["sequential", "functional", "subclassed"],
)
def test_sharpness_aware_model_config_round_trip(make_inner):
    x, _ = make_data(6)
    inner = make_inner()
    model = bk.SharpnessAwareModel(inner, name="wrapped")
    model(x)  # builds a subclassed inner model
    model.set_weights(mlp_params())
    config = model.get_config()
    for clone in _round_trip(model):
        assert type(clone) is bk.SharpnessAwareModel
        assert clone.name == "wrapped"
        assert type(clone.inner_model) is type(inner)
        assert clone.inner_model.get_config() == inner.get_config()
        assert clone.get_config() == config
        clone(x)
        clone.set_weights(mlp_params())
        np.testing.assert_allclose(
            clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6
        )
    # Independently: the prediction is the NumPy MLP.
    p = [t.astype(np.float64) for t in mlp_params()]
    expected = np.tanh(x @ p[0] + p[1]) @ p[2] + p[3]
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_subclassed_inner_model_saves_and_trains(tmp_path):
    x, y = make_data(16)
    model = bk.SharpnessAwareModel(TinySubclassed())
    model(x)
    model.set_weights(mlp_params())
    model.compile(optimizer=bk.BiSAM(keras.optimizers.SGD(0.1)), loss=ce_loss())
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.inner_model) is TinySubclassed
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_moved(weights(model), mlp_params())
    atol = run_atol(x, 4, orders=2)  # the same 4 steps, run twice
    assert_same(weights(loaded), weights(model), atol, "subclassed resumed")


# --------------------------------------------------------------------------- #
# 8. The mixin on a user subclass.
# --------------------------------------------------------------------------- #


class MyModel(bk.SharpnessAwareMixin, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(H, activation="tanh")
        self.out = keras.layers.Dense(K)

    def call(self, x):
        return self.out(self.hidden(x))


class MyLinear(bk.SharpnessAwareMixin, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(K)

    def call(self, x):
        return self.dense(x)


@KINDS
def test_mixin_step_equals_wrapper_step(kind):
    x, y = make_data(8, seed=9)
    params = mlp_params()
    mine = MyModel()
    mine(x)
    mine.set_weights(params)
    mine.compile(
        optimizer=make_opt(kind, keras.optimizers.SGD(0.2, momentum=0.9)),
        loss=ce_loss(),
        metrics=["accuracy"],
    )
    logs_mine = mine.train_on_batch(x, y, return_dict=True)
    wrapped = sa_model(mlp_inner(params), make_opt(kind, keras.optimizers.SGD(0.2, momentum=0.9)))
    logs_wrapped = wrapped.train_on_batch(x, y, return_dict=True)
    assert_moved(weights(mine), params)
    atol = run_atol(x, 1, lr=0.2, momentum=0.9, orders=2)  # the same step, run twice
    assert_same(weights(mine), weights(wrapped), atol, "mixin vs wrapper")
    assert set(logs_mine) == set(logs_wrapped)
    for key in logs_wrapped:
        assert float(logs_mine[key]) == pytest.approx(float(logs_wrapped[key]), rel=LOSS_RTOL), key


@KINDS
def test_mixin_matches_numpy_and_trains(kind):
    x, y = make_data(16, seed=10)
    params = linear_params()
    model = MyLinear()
    model(x)
    model.set_weights(params)
    model.compile(optimizer=make_opt(kind), loss=ce_loss(), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=8, epochs=10, shuffle=False, verbose=0)
    expected = np_sgd_run(params, batches_of(x, y, 8) * 10, kind, 0.3, [0.1] * 20)
    assert_same(weights(model), expected, run_atol(x, 20), "mixin 20 steps vs numpy")
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.05


# --------------------------------------------------------------------------- #
# 9. Logs.
# --------------------------------------------------------------------------- #


@KINDS
def test_history_keys_and_values(kind):
    x, y = make_data(16)
    xv, yv = make_data(8, seed=20)
    params = linear_params()
    model = sa_model(linear_inner(params), make_opt(kind, keras.optimizers.SGD(0.5)))
    # One step per epoch, so each epoch's logs are those of one step.
    history = model.fit(
        x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, validation_data=(xv, yv)
    )
    logs = history.history
    assert {"loss", "perturbed_loss", "accuracy", "val_loss", "val_accuracy"} <= set(logs)
    assert "val_perturbed_loss" not in logs
    assert not any(k.startswith("val_") and "perturbed" in k for k in logs)

    p = [t.astype(np.float64) for t in params]
    for epoch in range(3):
        g, loss, perturbed = np_step(p, x, y, kind=kind)
        acc = float(np.mean(np.argmax(np_logits(p, x), -1) == y))
        assert logs["loss"][epoch] == pytest.approx(loss, rel=1e-5), epoch
        assert logs["perturbed_loss"][epoch] == pytest.approx(perturbed, rel=1e-5), epoch
        if kind == "sam":
            assert perturbed > loss  # the perturbation climbs the loss
        assert logs["accuracy"][epoch] == pytest.approx(acc), epoch
        p = [t - 0.5 * gi for t, gi in zip(p, g)]
        fv = np_logits(p, xv)
        assert logs["val_loss"][epoch] == pytest.approx(np_ce(fv, yv)[0].mean(), rel=1e-5)
        assert logs["val_accuracy"][epoch] == pytest.approx(np.mean(np.argmax(fv, -1) == yv))
    val_loss, val_acc = model.evaluate(xv, yv, verbose=0)
    assert logs["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)


@SAM_AND_BISAM
def test_logged_accuracy_is_from_the_pass_before_the_update(kind):
    x, y = make_data(16, seed=2)
    model = sa_model(linear_inner(linear_params(seed=3)), make_opt(kind, keras.optimizers.SGD(2.0)))
    before = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    logs = model.train_on_batch(x, y, return_dict=True)
    after = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    assert before != after, "the step must change the accuracy for this check to mean anything"
    assert float(logs["accuracy"]) == pytest.approx(before)


# --------------------------------------------------------------------------- #
# 10. Bad input.
# --------------------------------------------------------------------------- #

CLASSES = pytest.mark.parametrize("cls", [bk.SAM, bk.BiSAM], ids=["sam", "bisam"])


def _sgd():
    return keras.optimizers.SGD(0.1)


@CLASSES
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"rho": -1}, r"rho=-1\b"),
        ({"rho": -0.5}, r"rho=-0\.5"),
        ({"swp_probability": 0}, r"swp_probability=0\b"),
        ({"swp_probability": 1.5}, r"swp_probability=1\.5"),
        ({"sds_fraction": 0}, r"sds_fraction=0\b"),
        ({"sds_fraction": 1.5}, r"sds_fraction=1\.5"),
        ({"micro_batch_size": 0}, r"micro_batch_size=0\b"),
        ({"micro_batch_size": 2.5}, r"micro_batch_size=2\.5"),
    ],
)
def test_bad_wrapper_arguments(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(_sgd(), **kwargs)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"mu": 0}, r"mu=0\b"),
        ({"mu": -2.0}, r"mu=-2\.0"),
        ({"lower_bound": "tanh", "mu": 0.0}, r"mu=0\.0"),
        ({"alpha": 0}, r"alpha=0\b"),
        ({"lower_bound": "tanh", "alpha": -0.5}, r"alpha=-0\.5"),
        ({"lower_bound": "hinge"}, r"lower_bound='hinge'"),
        ({"lower_bound": 3}, r"lower_bound=3\b"),
    ],
)
def test_bad_bisam_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        bk.BiSAM(_sgd(), **kwargs)


@CLASSES
@pytest.mark.parametrize(
    "inner,pattern",
    [
        ("sgd", r"inner_optimizer='sgd'"),
        (None, r"inner_optimizer=None"),
        (0.1, r"inner_optimizer=0\.1"),
    ],
)
def test_inner_optimizer_must_be_an_optimizer(cls, inner, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(inner)


@CLASSES
def test_inner_optimizer_cannot_be_sharpness_aware(cls):
    with pytest.raises(ValueError, match="inner_optimizer"):
        cls(bk.SAM(_sgd()))


@pytest.mark.parametrize("optimizer", ["sgd", "sgd-instance"])
def test_compile_with_plain_optimizer_raises(optimizer):
    model = bk.SharpnessAwareModel(linear_inner())
    opt = keras.optimizers.SGD() if optimizer == "sgd-instance" else "sgd"
    with pytest.raises(ValueError, match="optimizer") as info:
        model.compile(optimizer=opt, loss=ce_loss())
    assert "optimizer=" + (repr(opt) if isinstance(opt, str) else "<") in str(info.value)
    # The mixin rejects it too.
    with pytest.raises(ValueError, match="optimizer"):
        MyLinear().compile(optimizer=opt, loss=ce_loss())
    # ... and accepts the wrapped version (independent positive control).
    model.compile(optimizer=bk.SAM(keras.optimizers.SGD()), loss=ce_loss())


@SAM_AND_BISAM
def test_micro_batch_size_must_divide_batch(kind):
    x, y = make_data(6)
    model = sa_model(linear_inner(), make_opt(kind, micro_batch_size=4), jit_compile=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="micro_batch_size"):
        model.train_on_batch(x, y)
    # Positive control: a dividing micro-batch size trains.
    ok = sa_model(linear_inner(), make_opt(kind, micro_batch_size=3), jit_compile=False)
    ok.train_on_batch(x, y)
    assert_moved(weights(ok), linear_params())


def _label_blind_loss(y_true, y_pred):
    """A compiled loss that never looks at the labels' range."""
    return keras.ops.mean(keras.ops.square(y_pred), axis=-1) + 0.0 * keras.ops.cast(
        keras.ops.reshape(y_true, (-1,)), "float32"
    )


def test_bisam_labels_out_of_range_raise():
    x, _ = make_data(8)
    y_bad = np.array([0, 1, 2, 3, 0, 1, 2, 5], np.int32)  # K = 3
    model = bk.SharpnessAwareModel(linear_inner())
    # The loss does not tell logits from probabilities: say it.
    model.compile(
        optimizer=bk.BiSAM(_sgd(), from_logits=True), loss=_label_blind_loss, jit_compile=False
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="label"):
        model.train_on_batch(x, y_bad)
    assert_same(weights(model), linear_params(), 0.0, "no update on bad labels")
    # Positive control: SAM with the same label-blind loss does not check labels.
    sam = bk.SharpnessAwareModel(linear_inner())
    sam.compile(optimizer=bk.SAM(_sgd()), loss=_label_blind_loss, jit_compile=False)
    sam.train_on_batch(x, y_bad)
    assert_moved(weights(sam), linear_params(), 1e-4)
