"""Tests for `bisam_keras.losses`: the BiSAM lower bounds of the 0-1 loss (Eq. 14).

Every value is checked against an independent float64 NumPy reference written
here (stable log-sum-exp by max shift, softplus by `np.logaddexp`).
"""

import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tolerances import U_FUNC, float32_sum_bound, gamma

from bisam_keras import losses as bl
from bisam_keras.losses import lower_bounds

GAMMA = math.log(math.e - 1.0)


# --------------------------------------------------------------------------- #
# Independent NumPy reference (float64).
# --------------------------------------------------------------------------- #


def np_logsumexp(a, axis=-1):
    a = np.asarray(a, np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


def np_phi_neglog(x):
    return 1.0 - np.logaddexp(0.0, GAMMA - np.asarray(x, np.float64))


def np_phi_tanh(x, alpha):
    return np.tanh(alpha * np.asarray(x, np.float64))


def np_int_labels(y_true):
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[-1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        y = np.argmax(y, axis=-1)
    return y.astype(np.int64)


def np_margins(y_true, scores):
    s = np.asarray(scores, np.float64)
    y = np_int_labels(y_true)
    return s - s[np.arange(s.shape[0]), y][:, None]


def np_q(y_true, scores, bound, mu, alpha=0.1):
    """Q_i of Eq. (14) for scores `s` (logits, or log-probabilities)."""
    f = np_margins(y_true, scores)
    k = f.shape[-1]
    phi = np_phi_neglog(f) if bound == "neglog" else np_phi_tanh(f, alpha)
    return (np_logsumexp(mu * phi) - np.log(k)) / mu


def np_grad_q(y_true, scores, bound, mu, alpha=0.1):
    """Analytic dQ_i/ds_ik (each row's Q only depends on its own scores)."""
    f = np_margins(y_true, scores)
    y = np_int_labels(y_true)
    if bound == "neglog":
        phi = np_phi_neglog(f)
        dphi = np.exp(-np.logaddexp(0.0, f - GAMMA))  # sigmoid(gamma - f), stable
    else:
        phi = np_phi_tanh(f, alpha)
        dphi = alpha * (1.0 - phi**2)
    g = mu * phi
    w = np.exp(g - np_logsumexp(g)[:, None])  # softmax(mu * phi)
    grad = w * dphi
    rows = np.arange(f.shape[0])
    grad[rows, y] -= np.sum(w * dphi, axis=-1)
    return grad


def np_misclassified(y_true, logits):
    """1{max_j F_ij > 0}: ties with the true class count as correct."""
    return (np.max(np_margins(y_true, logits), axis=-1) > 0).astype(np.float64)


def np_softmax(x):
    x = np.asarray(x, np.float64)
    return np.exp(x - np_logsumexp(x)[:, None])


def call_bound(bound, y_true, y_pred, mu, alpha=0.1, from_logits=True):
    if bound == "neglog":
        return bl.neglog_lower_bound(y_true, y_pred, mu=mu, from_logits=from_logits)
    return bl.tanh_lower_bound(y_true, y_pred, mu=mu, alpha=alpha, from_logits=from_logits)


def random_case(seed, batch=7, k=6, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(batch, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, size=batch)
    return logits, labels


# Q_i = (logsumexp_j(mu phi(F_ij)) - log K) / mu in float32, against float64. F = f_j - f_y
# of float32 logits is exact up to u |F| (one rounding, Sterbenz where close); phi (log1p,
# exp, tanh) adds U_FUNC = 2^-21 of |phi| + 1 (the cancellation in 1 - log1p(.) near F = 0);
# the log-sum-exp of K <= 7 positive terms, in the stable forms the kernels use for each mu
# (log domain, expm1/log1p for mu < 1), adds (gamma(K) + 2 U_FUNC) of max|phi|. With
# |phi| <= 1 (tanh) or ~|F| (neglog) and |F| <= ~20 here: <= 2.4e-7 + 1.5e-6 |Q|-scale
# terms, inside atol 1e-6 + rtol 1e-5 |Q| with room for the 3-6 roundings not counted.
RTOL, ATOL = 1e-5, 1e-6
PARAMS = [
    ("neglog", 1.5, 0.1),
    ("neglog", 0.5, 0.1),
    ("neglog", 4.0, 0.1),
    ("neglog", 10.0, 0.1),
    ("neglog", 0.7, 0.1),
    ("tanh", 10.0, 0.1),
    ("tanh", 1.0, 0.5),
    ("tanh", 25.0, 2.0),
    ("tanh", 0.3, 0.5),
    ("tanh", 60.0, 0.5),
]
"""Every kernel: -log with half-integer `mu` (tanh form, square roots) and any
`mu` (log domain); tanh with `mu < 1` (expm1/log1p), `1 <= mu <= 40` (no
shift) and `mu > 40` (max shift)."""


# --------------------------------------------------------------------------- #
# 1. Values against NumPy.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bound,mu,alpha", PARAMS)
@pytest.mark.parametrize("label_kind", ["int", "column", "one_hot"])
def test_values_match_numpy(bound, mu, alpha, label_kind):
    logits, labels = random_case(seed=int(mu * 100 + alpha * 1000) + len(bound))
    k = logits.shape[-1]
    if label_kind == "int":
        y_true = labels
    elif label_kind == "column":
        y_true = labels[:, None]
    else:
        y_true = np.eye(k, dtype=np.float32)[labels]
    q = call_bound(bound, y_true, logits, mu, alpha)
    assert q.dtype == tf.float32
    assert q.shape == (logits.shape[0],)
    expected = np_q(labels, logits, bound, mu, alpha)
    np.testing.assert_allclose(q.numpy(), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bound", ["neglog", "tanh"])
def test_lower_bound_dispatch_and_defaults(bound):
    logits, labels = random_case(seed=3)
    mu_default = {"neglog": 1.5, "tanh": 10.0}[bound]
    # mu=None takes the paper's default for the bound.
    q = bl.lower_bound(labels, logits, bound, mu=None, alpha=0.1)
    np.testing.assert_allclose(
        q.numpy(), np_q(labels, logits, bound, mu_default, 0.1), rtol=RTOL, atol=ATOL
    )
    q2 = bl.lower_bound(labels, logits, bound=bound, mu=2.0, alpha=0.3)
    np.testing.assert_allclose(
        q2.numpy(), np_q(labels, logits, bound, 2.0, 0.3), rtol=RTOL, atol=ATOL
    )
    # The public wrappers' defaults are the paper's defaults.
    default = bl.neglog_lower_bound if bound == "neglog" else bl.tanh_lower_bound
    np.testing.assert_allclose(
        default(labels, logits).numpy(),
        np_q(labels, logits, bound, mu_default, 0.1),
        rtol=RTOL,
        atol=ATOL,
    )


def test_lower_bound_default_bound_is_neglog():
    logits, labels = random_case(seed=4)
    np.testing.assert_allclose(
        bl.lower_bound(labels, logits).numpy(),
        np_q(labels, logits, "neglog", 1.5),
        rtol=RTOL,
        atol=ATOL,
    )


def test_soft_labels_use_argmax():
    logits, _ = random_case(seed=5, batch=4, k=3)
    soft = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9], [0.3, 0.3, 0.4]])
    q = bl.neglog_lower_bound(soft, logits)
    np.testing.assert_allclose(
        q.numpy(), np_q(np.argmax(soft, -1), logits, "neglog", 1.5), rtol=RTOL, atol=ATOL
    )


def test_float_integer_labels_and_tensor_inputs():
    logits, labels = random_case(seed=6)
    q = bl.tanh_lower_bound(
        tf.constant(labels.astype(np.float32)), tf.constant(logits), mu=3.0, alpha=0.2
    )
    np.testing.assert_allclose(
        q.numpy(), np_q(labels, logits, "tanh", 3.0, 0.2), rtol=RTOL, atol=ATOL
    )


def test_hand_computed_example():
    # Two classes, logits (2, 0), label 0: F = (0, -2); label 1: F = (2, 0).
    mu = 1.0
    q = bl.neglog_lower_bound([0, 1], [[2.0, 0.0], [2.0, 0.0]], mu=mu).numpy()
    phi = lambda x: 1.0 - math.log1p(math.exp(GAMMA - x))  # noqa: E731
    q0 = math.log(math.exp(phi(0.0)) + math.exp(phi(-2.0))) - math.log(2.0)
    q1 = math.log(math.exp(phi(2.0)) + math.exp(phi(0.0))) - math.log(2.0)
    np.testing.assert_allclose(q, [q0, q1], rtol=1e-6, atol=1e-7)
    assert q[0] <= 0.0 < q[1] <= 1.0


# --------------------------------------------------------------------------- #
# 2. The phis are lower bounds of the step function.
# --------------------------------------------------------------------------- #


def test_phi_neglog_at_zero_and_limits():
    # Hand derivation: phi(0) = 1 - log(1 + e^gamma) = 1 - log(1 + e - 1) = 1 - 1 = 0.
    assert math.isclose(1.0 - math.log1p(math.exp(GAMMA)), 0.0, abs_tol=1e-15)
    assert math.isclose(bl.NEGLOG_GAMMA, GAMMA, rel_tol=1e-15)
    assert abs(float(bl.phi_neglog(tf.constant(0.0)))) <= 1e-7
    # phi -> 1 as x -> inf, and phi(x) ~ x - gamma + 1 ... -> -inf as x -> -inf.
    assert float(bl.phi_neglog(tf.constant(1e4))) == pytest.approx(1.0, abs=1e-6)
    assert float(bl.phi_neglog(tf.constant(-1e4))) == pytest.approx(1.0 - (GAMMA + 1e4), rel=1e-6)


def test_phi_tanh_at_zero():
    assert float(bl.phi_tanh(tf.constant(0.0), 0.7)) == 0.0


GRID = np.concatenate(
    [
        -np.logspace(-8, 4, 200)[::-1],
        [0.0],
        np.logspace(-8, 4, 200),
        np.linspace(-20.0, 20.0, 401),
    ]
).astype(np.float32)


def test_phi_values_and_step_bound_on_grid():
    step = (GRID.astype(np.float64) > 0).astype(np.float64)
    neglog = bl.phi_neglog(tf.constant(GRID)).numpy()
    np.testing.assert_allclose(neglog, np_phi_neglog(GRID), rtol=1e-5, atol=1e-6)
    assert np.all(neglog <= step + 1e-7)
    assert np.all(np_phi_neglog(GRID) <= step + 1e-15)  # phi(0) is 0 up to rounding
    for alpha in [1e-3, 0.1, 1.0, 10.0]:
        th = bl.phi_tanh(tf.constant(GRID), alpha).numpy()
        np.testing.assert_allclose(th, np_phi_tanh(GRID, alpha), rtol=1e-5, atol=1e-6)
        assert np.all(th <= step)
        assert np.all(np_phi_tanh(GRID, alpha) <= step)
    # Both are increasing.
    assert np.all(np.diff(np_phi_neglog(np.sort(GRID))) >= 0)
    assert np.all(np.diff(neglog[np.argsort(GRID, kind="stable")]) >= -1e-6)


# --------------------------------------------------------------------------- #
# 3. Lemma 1 (property-based).
# --------------------------------------------------------------------------- #


@st.composite
def lemma_cases(draw):
    batch = draw(st.integers(1, 16))
    k = draw(st.integers(2, 20))
    element = st.one_of(
        st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
        # Small pools of values make ties (with the true class) common.
        st.sampled_from([0.0, 1.0, -1.0, 1e4, -1e4, 0.5]),
    )
    logits = draw(hnp.arrays(np.float32, (batch, k), elements=element))
    labels = draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, k - 1)))
    mu = draw(st.floats(0.05, 50.0, exclude_min=True))
    alpha = draw(st.floats(1e-3, 10.0, exclude_min=True))
    bound = draw(st.sampled_from(["neglog", "tanh"]))
    return logits, labels, mu, alpha, bound


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(lemma_cases())
def test_lemma1_q_below_zero_one_loss(case):
    logits, labels, mu, alpha, bound = case
    k = logits.shape[-1]
    q = call_bound(bound, labels, logits, mu, alpha).numpy().astype(np.float64)
    mis = np_misclassified(labels, logits)
    # The float64 reference satisfies the lemma exactly.
    ref = np_q(labels, logits, bound, mu, alpha)
    assert np.all(ref <= mis + 1e-12)
    assert np.all(np.isfinite(q))
    tol = 1e-6  # ATOL: Q's float32 error where Q ~ 0 or 1 (see RTOL, ATOL above)
    assert np.all(q <= mis + tol), (q, mis, tol)
    assert q.mean() <= mis.mean() + tol
    # Lower side: mean_j phi_ij <= Q_i (Jensen) and max_j phi_ij - log(K)/mu <= Q_i.
    f = np_margins(labels, logits)
    phi = np_phi_neglog(f) if bound == "neglog" else np_phi_tanh(f, alpha)
    slack = tol + 1e-5 * (1.0 + np.abs(phi).max(axis=-1))  # RTOL of the terms compared
    assert np.all(q >= phi.mean(axis=-1) - slack)
    assert np.all(q >= phi.max(axis=-1) - math.log(k) / mu - slack)
    # And the value matches the reference (up to the same float32 rounding). Logits reach
    # 1e4 and mu 0.05 here: phi's error U_FUNC |phi| + u |F| reaches 1e-2 where |F| ~ 2e4, and
    # log K / mu reaches 60. Q is a softmax(mu phi)-weighted mean of the phi errors, so its
    # error is < 1e-6 |Q|-scale terms; 1e-4 of |Q| and of max|Q| leaves room for mu's
    # amplification (up to 50) of the log-sum-exp's relative error.
    np.testing.assert_allclose(q, ref, rtol=1e-4, atol=tol + 1e-4 * np.abs(ref).max())


def test_lemma1_ties_count_as_correct():
    # All logits equal: every F_ij = 0, phi(0) = 0 so Q_i = 0 exactly (not > 0).
    for k in [2, 5, 20]:
        logits = np.zeros((3, k), np.float32)
        labels = np.array([0, k - 1, k // 2])
        for mu in [0.05, 1.5, 50.0]:
            assert np.all(bl.neglog_lower_bound(labels, logits, mu=mu).numpy() <= 1e-6)
            assert np.all(bl.tanh_lower_bound(labels, logits, mu=mu, alpha=3.0).numpy() <= 1e-6)
            assert np.all(np_q(labels, logits, "neglog", mu) <= 1e-12)


def test_correct_rows_nonpositive_and_wrong_rows_below_one():
    logits, labels = random_case(seed=11, batch=64, k=10, scale=5.0)
    mis = np_misclassified(labels, logits)
    assert 0 < mis.sum() < len(mis)
    for bound, mu, alpha in PARAMS:
        q = call_bound(bound, labels, logits, mu, alpha).numpy()
        assert np.all(q[mis == 0] <= 1e-6)
        assert np.all(q[mis == 1] <= 1.0 + 1e-6)


# --------------------------------------------------------------------------- #
# 4. Numerical stability and low-precision inputs.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("magnitude", [1e4, 3e4])
@pytest.mark.parametrize(
    "bound,mu,alpha",
    [
        ("neglog", 0.05, 0.1),
        ("neglog", 0.5, 0.1),
        ("neglog", 1.5, 0.1),
        ("neglog", 50.0, 0.1),
        ("tanh", 0.05, 10.0),
        ("tanh", 50.0, 1e-3),
        ("tanh", 10.0, 0.1),
    ],
)
def test_large_logits_finite_values_and_gradients(magnitude, bound, mu, alpha):
    rng = np.random.default_rng(12)
    logits = (rng.choice([-1.0, 1.0, 0.0], size=(6, 5)) * magnitude).astype(np.float32)
    logits[0] = [magnitude, -magnitude, magnitude, -magnitude, 0.0]
    labels = np.array([0, 1, 2, 3, 4, 0])
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        q = call_bound(bound, labels, x, mu, alpha)
        total = tf.reduce_sum(q)
    grad = tape.gradient(total, x)
    assert np.all(np.isfinite(q.numpy()))
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    np.testing.assert_allclose(
        q.numpy(), np_q(labels, logits, bound, mu, alpha), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        grad.numpy(), np_grad_q(labels, logits, bound, mu, alpha), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("bound,mu,alpha", [("neglog", 1.5, 0.1), ("tanh", 10.0, 0.1)])
@pytest.mark.parametrize("scale", [4.0, 1e4])
def test_low_precision_inputs(dtype, bound, mu, alpha, scale):
    logits, labels = random_case(seed=13, batch=9, k=7, scale=scale)
    low = tf.cast(logits, dtype)
    q = call_bound(bound, labels, low, mu, alpha)
    assert q.dtype == tf.float32
    as32 = tf.cast(low, tf.float32)
    q32 = call_bound(bound, labels, as32, mu, alpha)
    assert np.all(np.isfinite(q.numpy()))
    np.testing.assert_allclose(q.numpy(), q32.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        q.numpy(), np_q(labels, as32.numpy(), bound, mu, alpha), rtol=1e-5, atol=1e-5
    )
    x = tf.Variable(low)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(call_bound(bound, labels, x, mu, alpha))
    grad = tape.gradient(total, x)
    assert grad is not None
    assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_probabilities(dtype):
    logits, labels = random_case(seed=14, batch=5, k=4, scale=2.0)
    probs = tf.cast(np_softmax(logits).astype(np.float32), dtype)
    q = bl.neglog_lower_bound(labels, probs, from_logits=False)
    assert q.dtype == tf.float32
    p32 = tf.cast(probs, tf.float32).numpy()
    expected = np_q(labels, np.log(np.clip(p32.astype(np.float64), 1e-7, 1.0)), "neglog", 1.5)
    np.testing.assert_allclose(q.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bound,mu,alpha", PARAMS)
def test_non_finite_logits_give_nan_rows_only(bound, mu, alpha):
    logits, labels = random_case(seed=15, batch=5, k=3)
    logits[1, 2] = np.inf
    logits[2, 0] = np.nan
    logits[3, labels[3]] = -np.inf
    q = call_bound(bound, labels, logits, mu, alpha).numpy()
    assert np.all(np.isnan(q[1:4]))
    np.testing.assert_allclose(
        q[[0, 4]], np_q(labels[[0, 4]], logits[[0, 4]], bound, mu, alpha), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("bound,mu,alpha", PARAMS)
@pytest.mark.parametrize("level", [64.0, 1024.0, -3e4])
def test_ties_at_large_logits_give_zero(bound, mu, alpha, level):
    # Regression: the margins must be formed before gamma is added, else
    # `gamma + s_y` rounds at large |s_y| and ties give |Q| ~ 1e-5. With every
    # margin 0, Q = 0 exactly; float32 evaluation of phi(0) = 0 through the
    # kernel's few roundings (each <= 2^-24 relative, times `1/mu` <= 2) stays
    # far below 1e-6.
    logits = np.full((3, 4), level, np.float32)
    q = call_bound(bound, np.array([0, 2, 3]), logits, mu, alpha).numpy()
    np.testing.assert_allclose(q, 0.0, atol=1e-6)


# --------------------------------------------------------------------------- #
# 5. Probabilities.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bound,mu,alpha", PARAMS)
def test_probabilities_match_logits(bound, mu, alpha):
    logits, labels = random_case(seed=16, batch=8, k=5, scale=2.0)
    probs = np_softmax(logits).astype(np.float32)
    assert probs.min() > 1e-6  # moderate logits: clipping at epsilon is inactive
    q_logits = call_bound(bound, labels, logits, mu, alpha).numpy()
    q_probs = call_bound(bound, labels, probs, mu, alpha, from_logits=False).numpy()
    np.testing.assert_allclose(q_probs, q_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        q_probs,
        np_q(labels, np.log(probs.astype(np.float64)), bound, mu, alpha),
        rtol=1e-4,
        atol=1e-5,
    )


def test_probabilities_with_zeros_are_finite():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    q = bl.neglog_lower_bound([0, 0], probs, from_logits=False).numpy()
    assert np.all(np.isfinite(q))
    # Zero probabilities are clipped to keras epsilon before the log.
    scores = np.log(np.clip(probs.astype(np.float64), keras.config.epsilon(), 1.0))
    np.testing.assert_allclose(q, np_q([0, 0], scores, "neglog", 1.5), rtol=1e-5, atol=1e-6)
    assert q[0] <= 0.0 < q[1] <= 1.0


# --------------------------------------------------------------------------- #
# 6. Loss classes and reductions.
# --------------------------------------------------------------------------- #


LOSS_CASES = [
    (bl.NegLogLowerBound, {}, "neglog", 1.5, 0.1),
    (bl.NegLogLowerBound, {"mu": 4.0}, "neglog", 4.0, 0.1),
    (bl.TanhLowerBound, {}, "tanh", 10.0, 0.1),
    (bl.TanhLowerBound, {"mu": 2.0, "alpha": 0.7}, "tanh", 2.0, 0.7),
]


@pytest.mark.parametrize("cls,kwargs,bound,mu,alpha", LOSS_CASES)
def test_loss_class_reductions(cls, kwargs, bound, mu, alpha):
    logits, labels = random_case(seed=17, batch=10, k=6)
    ref = np_q(labels, logits, bound, mu, alpha)
    loss = cls(**kwargs)
    assert isinstance(loss, keras.losses.Loss)
    value = loss(labels, logits)
    assert value.shape == ()
    # Means of Q_i of both signs: each Q_i within RTOL |Q_i| + ATOL, then a float32 sum of
    # 10 terms (`float32_sum_bound`), scaled by sum|Q_i|, not by the (cancelling) result.
    entry = RTOL * np.abs(ref) + ATOL
    atol = (float32_sum_bound(ref) + entry.sum()) / 10
    np.testing.assert_allclose(float(value), ref.mean(), rtol=1e-5, atol=atol)
    # One-hot labels give the same value.
    np.testing.assert_allclose(
        float(loss(np.eye(6, dtype=np.float32)[labels], logits)), ref.mean(), rtol=1e-5, atol=atol
    )
    w = np.random.default_rng(18).uniform(0.0, 3.0, size=10).astype(np.float32)
    w[3] = 0.0
    weighted = loss(labels, logits, sample_weight=w)
    atol_w = (float32_sum_bound(w * ref) + (w * entry).sum()) / 10
    np.testing.assert_allclose(float(weighted), np.sum(w * ref) / 10, rtol=1e-5, atol=atol_w)
    per_example = cls(reduction=None, **kwargs)(labels, logits)
    assert per_example.shape == (10,)
    np.testing.assert_allclose(per_example.numpy(), ref, rtol=RTOL, atol=ATOL)
    total = cls(reduction="sum", **kwargs)(labels, logits)
    np.testing.assert_allclose(float(total), ref.sum(), rtol=1e-5, atol=10 * atol)


def test_loss_class_probabilities():
    logits, labels = random_case(seed=19, batch=6, k=4, scale=2.0)
    probs = np_softmax(logits).astype(np.float32)
    value = bl.TanhLowerBound(mu=5.0, alpha=0.4, from_logits=False)(labels, probs)
    np.testing.assert_allclose(
        float(value), np_q(labels, logits, "tanh", 5.0, 0.4).mean(), rtol=1e-4, atol=1e-5
    )


def test_loss_class_default_names():
    assert bl.NegLogLowerBound().name == "neglog_lower_bound"
    assert bl.TanhLowerBound().name == "tanh_lower_bound"
    assert bl.TanhLowerBound(name="q").name == "q"


# --------------------------------------------------------------------------- #
# 7. Serialization.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "loss",
    [
        bl.NegLogLowerBound(),
        bl.NegLogLowerBound(mu=3.0, from_logits=False, reduction="sum", name="nl"),
        bl.TanhLowerBound(),
        bl.TanhLowerBound(mu=2.5, alpha=0.25, from_logits=False, reduction=None, name="th"),
    ],
    ids=["neglog-default", "neglog-custom", "tanh-default", "tanh-custom"],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    assert config["mu"] == loss.mu
    assert config["from_logits"] == loss.from_logits
    if isinstance(loss, bl.TanhLowerBound):
        assert config["alpha"] == loss.alpha
    clone = type(loss).from_config(config)
    assert type(clone) is type(loss)
    assert clone.get_config() == config

    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    assert keras.losses.get(keras.saving.serialize_keras_object(loss)).get_config() == config

    logits, labels = random_case(seed=20, batch=5, k=4, scale=2.0)
    y_pred = logits if loss.from_logits else np_softmax(logits).astype(np.float32)
    expected = loss(labels, y_pred).numpy()
    np.testing.assert_allclose(clone(labels, y_pred).numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(restored(labels, y_pred).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_model_compiles_with_loss_and_saves(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    model.compile(optimizer="sgd", loss=bl.TanhLowerBound(mu=2.0, alpha=0.3))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, bl.TanhLowerBound)
    assert loaded.loss.get_config() == model.loss.get_config()


# --------------------------------------------------------------------------- #
# 8. Bad input.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("value", [-1, 0, 0.0, -2.5, float("nan"), "1.5", None, True])
def test_bad_mu_raises(value):
    logits, labels = random_case(seed=21, batch=2, k=3)
    if value is not None:  # None means "default" for lower_bound
        with pytest.raises(ValueError, match=re.escape(f"mu={value!r}")):
            bl.lower_bound(labels, logits, "neglog", mu=value)
        with pytest.raises(ValueError, match="mu"):
            bl.neglog_lower_bound(labels, logits, mu=value)
        with pytest.raises(ValueError, match="mu"):
            bl.tanh_lower_bound(labels, logits, mu=value)
    with pytest.raises(ValueError, match="mu"):
        bl.NegLogLowerBound(mu=value)
    with pytest.raises(ValueError, match="mu"):
        bl.TanhLowerBound(mu=value)


def test_bad_mu_message_contains_received_value():
    with pytest.raises(ValueError, match="mu=-1"):
        bl.neglog_lower_bound([0], [[1.0, 2.0]], mu=-1)
    with pytest.raises(ValueError, match="mu=0"):
        bl.TanhLowerBound(mu=0)
    with pytest.raises(ValueError, match=r"mu=-0\.5"):
        bl.NegLogLowerBound(mu=-0.5)


@pytest.mark.parametrize("value", [-1, 0, -0.25, float("nan"), None, "x"])
def test_bad_alpha_raises(value):
    with pytest.raises(ValueError, match="alpha"):
        bl.tanh_lower_bound([0], [[1.0, 2.0]], alpha=value)
    with pytest.raises(ValueError, match="alpha"):
        bl.lower_bound([0], [[1.0, 2.0]], "tanh", alpha=value)
    with pytest.raises(ValueError, match="alpha"):
        bl.TanhLowerBound(alpha=value)


def test_bad_alpha_message_contains_received_value():
    with pytest.raises(ValueError, match="alpha=-1"):
        bl.tanh_lower_bound([0], [[1.0, 2.0]], alpha=-1)
    with pytest.raises(ValueError, match="alpha=0"):
        bl.TanhLowerBound(alpha=0)


@pytest.mark.parametrize("value", ["hinge", "NEGLOG", None, 1])
def test_unknown_bound_raises(value):
    with pytest.raises(ValueError, match=re.escape(f"bound={value!r}")):
        bl.lower_bound([0], [[1.0, 2.0]], bound=value)


@pytest.mark.parametrize("value", [1, "True", None])
def test_bad_from_logits_raises(value):
    with pytest.raises(ValueError, match="from_logits"):
        bl.neglog_lower_bound([0], [[1.0, 2.0]], from_logits=value)
    with pytest.raises(ValueError, match="from_logits"):
        bl.NegLogLowerBound(from_logits=value)


@pytest.mark.parametrize(
    "y_true",
    [[0, 3], [-1, 0], [[0], [5]], [[0], [-2]]],
    ids=["ge-k", "negative", "column-ge-k", "column-negative"],
)
@pytest.mark.parametrize("bound", ["neglog", "tanh"])
def test_out_of_range_labels_raise_eagerly(y_true, bound):
    logits = np.array([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        bl.lower_bound(y_true, logits, bound)
    with pytest.raises(tf.errors.InvalidArgumentError):
        bl.NegLogLowerBound()(np.asarray(y_true, np.float32), logits)


@pytest.mark.parametrize("bad", [1.5, -0.1])
def test_bad_probabilities_raise_eagerly(bad):
    probs = np.array([[0.2, 0.8, 0.0], [0.3, 0.3, 0.4]], np.float32)
    probs[1, 2] = bad
    with pytest.raises(tf.errors.InvalidArgumentError):
        bl.neglog_lower_bound([0, 1], probs, from_logits=False)
    with pytest.raises(tf.errors.InvalidArgumentError):
        bl.tanh_lower_bound([0, 1], probs, from_logits=False)
    # The same values as logits are fine.
    assert np.all(np.isfinite(bl.neglog_lower_bound([0, 1], probs).numpy()))


@pytest.mark.parametrize("bound", ["neglog", "tanh"])
def test_bad_input_under_jit_gives_nan_rows(bound):
    logits = np.array(
        [[1.0, 2.0, 0.0], [0.5, 0.0, 1.0], [3.0, -1.0, 0.0], [0.0, 0.0, 2.0]], np.float32
    )
    labels = np.array([0, 3, -1, 2], np.int32)

    @tf.function(jit_compile=True)
    def jitted(y, x):
        return bl.lower_bound(y, x, bound, mu=2.0, alpha=0.3)

    q = jitted(tf.constant(labels), tf.constant(logits)).numpy()
    assert q.dtype == np.float32
    assert np.isnan(q[1]) and np.isnan(q[2])
    good = [0, 3]
    np.testing.assert_allclose(
        q[good], np_q(labels[good], logits[good], bound, 2.0, 0.3), rtol=RTOL, atol=ATOL
    )

    probs = np.array([[0.2, 0.8, 0.0], [0.3, 0.3, 1.4], [0.5, -0.5, 1.0]], np.float32)

    @tf.function(jit_compile=True)
    def jitted_probs(y, x):
        return bl.lower_bound(y, x, bound, mu=2.0, alpha=0.3, from_logits=False)

    qp = jitted_probs(tf.constant([1, 0, 0]), tf.constant(probs)).numpy()
    assert np.isnan(qp[1]) and np.isnan(qp[2]) and np.isfinite(qp[0])


# --------------------------------------------------------------------------- #
# 9. XLA compilation and gradients.
# --------------------------------------------------------------------------- #


def _xla_args(bound="neglog", from_logits=True, mu=1.5):
    logits, labels = random_case(seed=22, batch=3, k=4)
    return (
        tf.constant(logits),
        tf.constant(labels, tf.int32),
        tf.constant(mu, tf.float32),
        tf.constant(0.1, tf.float32),
        bound,
        from_logits,
        lower_bounds._fast_path(bound, mu),
    )


@pytest.mark.parametrize(
    "bound,mu", [("neglog", 1.5), ("neglog", 0.7), ("tanh", 10.0), ("tanh", 0.3)]
)
@pytest.mark.parametrize("from_logits", [True, False])
def test_core_is_xla_compiled(bound, mu, from_logits):
    fn = lower_bounds._lower_bound_xla
    assert isinstance(fn, tf.types.experimental.PolymorphicFunction)
    args = _xla_args(bound, from_logits, mu)
    cf = fn.get_concrete_function(*args)
    assert cf.function_def.attr["_XlaMustCompile"].b is True
    hlo = fn.experimental_get_compiler_ir(*args)(stage="hlo")
    assert isinstance(hlo, str) and "HloModule" in hlo and "ENTRY" in hlo


@pytest.mark.parametrize("bound,mu,alpha", PARAMS)
def test_gradient_matches_analytic_and_finite_differences(bound, mu, alpha):
    logits, labels = random_case(seed=23, batch=3, k=4, scale=1.5)
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(call_bound(bound, labels, x, mu, alpha))
    grad = tape.gradient(total, x).numpy()
    analytic = np_grad_q(labels, logits, bound, mu, alpha)
    # dQ/dF = softmax(mu phi) phi'(F): relative error of the softmax (gamma(K) + 2 U_FUNC,
    # K = 4) and of phi' (~2 U_FUNC), amplified by mu |F| phi'' / phi' <= ~10 for the largest
    # mu: <= 1e-5 relative; rtol 1e-4; atol 1e-6 where the weights vanish (entries < 1e-2).
    np.testing.assert_allclose(grad, analytic, rtol=1e-4, atol=1e-6)
    # Central finite differences of the float64 reference.
    h = 1e-6
    fd = np.zeros_like(analytic)
    base = logits.astype(np.float64)
    for idx in np.ndindex(*base.shape):
        plus, minus = base.copy(), base.copy()
        plus[idx] += h
        minus[idx] -= h
        fd[idx] = (
            np_q(labels, plus, bound, mu, alpha).sum() - np_q(labels, minus, bound, mu, alpha).sum()
        ) / (2 * h)
    # float64 FD, h = 1e-6: truncation h^2 |Q'''|/6 ~ 1e-12, roundoff ~ 1e-16 sum|Q| / h ~ 1e-10.
    np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-8)
    # Gradients sum to zero per row (Q depends on margins only).
    # Gradients sum to zero per row, up to cancellation: K entries, each with the relative
    # error of the kernel's softmax weights (gamma(K) + 3 U_FUNC), then a sum of K terms.
    atol = float32_sum_bound(grad, axis=-1) + (gamma(4) + 3 * U_FUNC) * np.abs(grad).sum(-1)
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=atol.max())


def test_gradient_of_loss_class_with_sample_weight():
    logits, labels = random_case(seed=24, batch=4, k=3, scale=1.0)
    w = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    x = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = bl.NegLogLowerBound(mu=2.0)(labels, x, sample_weight=w)
    grad = tape.gradient(value, x).numpy()
    expected = np_grad_q(labels, logits, "neglog", 2.0) * w[:, None] / 4
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def _transcendental_ops(fn):
    """Counts of transcendental HLO ops in XLA's optimized forward+backward."""
    x = tf.constant(random_case(seed=24, batch=8, k=10)[0])
    y = tf.constant(np.arange(8) % 10)

    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(fn(y, x))
        return loss, tape.gradient(loss, x)

    hlo = tf.function(forward_backward, jit_compile=True).experimental_get_compiler_ir(x, y)(
        stage="optimized_hlo"
    )
    ops = ("exponential", "exponential-minus-one", "log", "log-plus-one", "logistic", "power")
    return {op: len(re.findall(rf"\b{op}\(", hlo)) for op in ops + ("sqrt", "tanh")}


def test_default_kernels_transcendental_budget():
    # A graph guard, not a timing: the closed-form gradients reuse the forward
    # values (log only acts once per row, on a reduction). The -log bound
    # needs one tanh (XLA's rational approximation, cheaper than exp plus a
    # division) and one square root (mu = 3/2) per logit; the tanh bound one
    # tanh and one exponential, against cross-entropy's one exponential.
    neglog = _transcendental_ops(bl.neglog_lower_bound)
    assert neglog["tanh"] == 1 and neglog["sqrt"] == 1, neglog
    assert neglog["exponential"] == neglog["exponential-minus-one"] == 0, neglog
    assert neglog["logistic"] == neglog["power"] == neglog["log-plus-one"] == 0, neglog
    tanh = _transcendental_ops(bl.tanh_lower_bound)
    assert tanh["exponential"] == 1 and tanh["tanh"] == 1, tanh
    assert tanh["exponential-minus-one"] == tanh["logistic"] == tanh["power"] == 0, tanh


def _row_reductions(fn):
    """Reductions over the class axis in XLA's optimized forward+backward."""
    x = tf.constant(random_case(seed=25, batch=8, k=10)[0])
    y = tf.constant(np.arange(8) % 10)

    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(fn(y, x))
        return loss, tape.gradient(loss, x)

    hlo = tf.function(forward_backward, jit_compile=True).experimental_get_compiler_ir(x, y)(
        stage="hlo"
    )
    return len(re.findall(r"= f32\[8\]\{0\} reduce\(|= pred\[8\]\{0\} reduce\(", hlo))


def test_default_kernels_reduce_each_row_three_times():
    # s_y (with the validity check riding on it), the sum of the terms and
    # the sum of the gradient the chain rule to s_y needs; no max/min shift
    # pass and no separate is-finite pass.
    assert _row_reductions(bl.neglog_lower_bound) == 3
    assert _row_reductions(bl.tanh_lower_bound) == 3


@pytest.mark.parametrize(
    "bound,mu,expected",
    [("neglog", 1.5, 3), ("neglog", 0.5, 1), ("neglog", 4.0, 8), ("neglog", 0.7, 0),
     ("neglog", 10.0, 0), ("tanh", 10.0, 1), ("tanh", 1.0, 1), ("tanh", 0.3, 0),
     ("tanh", 40.0, 1), ("tanh", 40.5, 2)],
)  # fmt: skip
def test_kernel_choice_for_mu(bound, mu, expected):
    assert lower_bounds._fast_path(bound, mu) == expected
