"""bk.sharpness against independent computations: closed forms, NumPy, brute force.

Models: a quadratic loss `1/2 (w - w*)^T A (w - w*)` with a known `A`, where
every measure has a closed form; softmax regression, whose Hessian is built
explicitly in float64 NumPy; a two-parameter linear classifier, whose 0-1
sharpness is found by enumerating the disc of perturbations.

Tolerances are float32 error bounds (tests/tolerances.py), plus, where a
measure is iterative or random, a stated convergence or Monte Carlo bound.
"""

import json
import math

import keras
import numpy as np
import pytest
from keras import ops

from bisam_keras import sharpness
from bisam_keras.sharpness import autodiff
from tests.tolerances import FUNC_ULPS, U32, assert_within, gamma

# --------------------------------------------------------------------------- #
# The quadratic model.
# --------------------------------------------------------------------------- #


class Quadratic(keras.layers.Layer):
    """Outputs `1/2 (w - w*)^T A (w - w*)` for every example; `w` starts at `w0`."""

    def __init__(self, a, w_star, w0, **kwargs):
        super().__init__(**kwargs)
        self.a = np.asarray(a, np.float32)
        self.w_star = np.asarray(w_star, np.float32)
        self.w0 = np.asarray(w0, np.float32)

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=self.w0.shape, initializer=keras.initializers.Constant(self.w0), name="w"
        )

    def call(self, x):
        d = self.w - self.w_star
        q = 0.5 * ops.sum(d * ops.matmul(ops.convert_to_tensor(self.a), d))
        return ops.zeros((ops.shape(x)[0], 1)) + q


def mean_output(y_true, y_pred):
    return ops.mean(y_pred)


def quadratic(a, w_star, w0=None):
    w0 = w_star if w0 is None else w0
    model = keras.Sequential([keras.Input((1,)), Quadratic(a, w_star, w0)])
    model.compile(loss=mean_output)
    data = (np.zeros((8, 1), np.float32), np.zeros((8, 1), np.float32))
    return model, data


def spd_matrix(eigenvalues, seed):
    """`Q diag(eigenvalues) Q^T` with a random orthogonal `Q`, rounded to float32."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return (q @ np.diag(eigenvalues) @ q.T).astype(np.float32).astype(np.float64)


def quadratic_bound(a, w, d):
    """Float32 error of `1/2 d^T A d` computed as `1/2 ((w + d) - w*)^T A ((w + d) - w*)`.

    `d` is formed by three roundings (`T u`, `w + delta`, minus `w*`): each
    entry is off by at most `3 u (|w| + |d|)`, which moves the value by
    `(|A| |d|) . e`; the matrix-vector product and the dot product add
    `gamma(2n + 2) * 1/2 |d|^T |A| |d|`.
    """
    a, w, d = np.abs(a), np.abs(w), np.abs(d)
    entry_error = 3 * U32 * (w + d)
    return (a @ d) @ entry_error + gamma(2 * len(d) + 2) * 0.5 * d @ a @ d


def power_steps(eigenvalues, step_over_rho, target=1e-30):
    """Ascent steps after which the l2 ascent is within `target` (relative) of the top direction.

    On the quadratic `1/2 u^T B u` at its minimum, a step `u + eta B u / ||B u||`
    multiplies the ratio of each eigen-component to the top one by
    `(c + eta l_i) / (c + eta l_1) <= (l_1 rho + eta l_2) / (l_1 rho + eta l_1)`
    (`c = ||B u|| <= l_1 rho`; projection onto the ball rescales all
    components alike). The shortfall of the value is at most
    `l_1 rho^2 / 2 * tan^2` of the angle to the top eigenvector, so `t` steps
    leave at most `r^(2t) tan^2(angle at the start)`: `target` allows a start
    with `tan^2 <= 1e10` (a random start nearly orthogonal to the top
    eigenvector, with probability < 1e-4).
    """
    top, second = sorted(eigenvalues)[-1], sorted(eigenvalues)[-2]
    ratio = (top + step_over_rho * second) / (top + step_over_rho * top)
    return math.ceil(math.log(target * 1e-10) / (2 * math.log(ratio)))


# --------------------------------------------------------------------------- #
# Worst-case and average-case sharpness on the quadratic.
# --------------------------------------------------------------------------- #


def test_l2_worst_case_at_a_minimum_is_rho_squared_lambda_max_over_two():
    eigenvalues = [3.0, 1.0, 0.5, 0.25]
    a = spd_matrix(eigenvalues, seed=1)
    model, data = quadratic(a, np.zeros(4))
    rho, step = 0.1, 10.0  # step_size = 100 rho: each step nearly a power-iteration step
    steps = power_steps(np.linalg.eigvalsh(a), step / rho)
    result = sharpness.worst_case(
        model, data, rho=rho, steps=steps, step_size=step, random_start=True
    )
    top = np.linalg.eigvalsh(a)[-1]
    expected = rho**2 * top / 2
    direction = np.linalg.eigh(a)[1][:, -1] * rho
    # The projection leaves ||u|| <= rho (1 + gamma(n + 4)): the value may exceed
    # the maximum by twice that, relative.
    bound = quadratic_bound(a, np.zeros(4), direction) + 2 * gamma(4 + 4) * expected
    bound += expected * 1e-30  # the convergence shortfall (`power_steps`)
    assert_within(result.value, expected, bound, "l2 worst-case sharpness")
    assert result.reference == 0.0
    assert result.forward_passes == steps + 2 and result.backward_passes == steps


def test_adaptive_worst_case_is_the_top_eigenvalue_of_t_a_t():
    # The adaptive ball {T u : ||u|| <= rho}, T = |w*| + eta: the maximum of
    # 1/2 (T u)^T A (T u) is rho^2 lambda_max(T A T) / 2.
    a = spd_matrix([2.0, 1.0, 0.5], seed=2)
    w_star = np.array([1.5, -0.5, 0.25])
    eta = 0.1
    scale = np.abs(w_star.astype(np.float32)) + np.float32(eta)
    b = scale[:, None] * a * scale[None, :]
    rho, step = 0.2, 20.0
    steps = power_steps(np.linalg.eigvalsh(b), step / rho)
    model, data = quadratic(a, w_star)
    result = sharpness.worst_case(
        model,
        data,
        rho=rho,
        adaptive=True,
        eta=eta,
        steps=steps,
        step_size=step,
        random_start=True,
    )
    expected = rho**2 * np.linalg.eigvalsh(b)[-1] / 2
    direction = scale * np.linalg.eigh(b)[1][:, -1] * rho
    bound = quadratic_bound(a, w_star, direction) + 2 * gamma(3 + 5) * expected
    bound += expected * 1e-30
    assert_within(result.value, expected, bound, "adaptive worst-case sharpness")


def test_linf_worst_case_of_a_diagonal_quadratic_is_at_a_vertex():
    # For diagonal A > 0 the sign step pushes every entry outwards until the
    # clip: the ascent ends at a vertex, where 1/2 delta^T A delta = rho^2 tr(A) / 2.
    a = np.diag([2.0, 1.0, 0.5])
    rho = 0.1
    model, data = quadratic(a, np.zeros(3))
    result = sharpness.worst_case(
        model, data, rho=rho, ball="linf", steps=12, step_size=rho / 4, random_start=True
    )
    expected = rho**2 * np.trace(a) / 2
    bound = quadratic_bound(a, np.zeros(3), np.full(3, rho))
    assert_within(result.value, expected, bound, "l-inf worst-case sharpness")


@pytest.mark.parametrize("adaptive", [False, True])
def test_average_case_is_sigma_squared_trace_over_two(adaptive):
    # E 1/2 (sigma T z)^T A (sigma T z) = sigma^2 tr(T A T) / 2. The estimate
    # over S draws has variance sigma^4 tr((T A T)^2) / (2 S) (Gaussian
    # quadratic form): 6 standard deviations miss with probability < 2e-9.
    a = spd_matrix([2.0, 1.0, 0.5, 0.1], seed=3)
    w_star = np.array([1.0, -2.0, 0.5, 0.25]) if adaptive else np.zeros(4)
    scale = np.abs(w_star.astype(np.float32)) if adaptive else np.ones(4)
    b = scale[:, None] * a * scale[None, :]
    sigma, samples = 0.05, 400
    model, data = quadratic(a, w_star)
    result = sharpness.average_case(
        model, data, sigma=sigma, num_samples=samples, adaptive=adaptive
    )
    expected = sigma**2 * np.trace(b) / 2
    monte_carlo = 6 * sigma**2 * math.sqrt(np.trace(b @ b) / (2 * samples))
    rounding = quadratic_bound(a, w_star, 4 * sigma * scale)  # 4 sigma: a large draw
    assert_within(result.value, expected, monte_carlo + rounding, "average-case sharpness")
    assert len(result.per_sample) == samples
    assert result.forward_passes == samples + 1 and result.backward_passes == 0


def test_worst_case_without_random_start_cannot_leave_a_minimum():
    # At a minimum the gradient is 0: the ascent stays at u = 0 and reports 0.
    model, data = quadratic(np.diag([1.0, 2.0]), np.zeros(2))
    assert sharpness.worst_case(model, data, rho=0.1).value == 0.0


# --------------------------------------------------------------------------- #
# Hessian spectrum and trace on the quadratic.
# --------------------------------------------------------------------------- #


def hvp_bound(a):
    """2-norm bound of the float32 error of one product `A v` (||v|| = 1).

    The double-backward product sums at most `2n` products per entry (the
    gradient `1/2 (A + A^T) d`, differentiated), and `v` is rounded to float32
    first: `gamma(2n + 1) || |A| ||_2`.
    """
    return gamma(2 * len(a) + 1) * np.linalg.norm(np.abs(a), 2)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_of_the_quadratic_are_a_s(method):
    eigenvalues = [4.0, 2.0, 1.0, 0.5, 0.25]
    a = spd_matrix(eigenvalues, seed=4)
    model, data = quadratic(a, np.zeros(5))
    exact = np.sort(np.linalg.eigvalsh(a))[::-1]
    # Lanczos with n products is exact up to the products' errors, amplified
    # by at most sqrt(n) (Paige). Power iteration: eigenvalue i converges as
    # lambda_i (lambda_{i+1} / lambda_i)^(2t) (ratio 1/2 here): 60 products
    # leave 2^-120 lambda_1 of the start's tan^2 (<= 1e10).
    iterations = 5 if method == "lanczos" else 60
    result = sharpness.hessian_eigenvalues(model, data, k=3, method=method, iterations=iterations)
    bound = 4 * math.sqrt(5) * hvp_bound(a) + exact[0] * 1e10 * 2.0**-120
    assert_within(result.eigenvalues, exact[:3], bound, f"top eigenvalues ({method})")
    products = iterations if method == "lanczos" else 3 * iterations
    assert result.forward_passes == 2 * products


def test_trace_of_a_diagonal_quadratic_is_exact_and_of_a_full_one_within_monte_carlo():
    # Rademacher probes: z^T A z = tr(A) exactly for diagonal A; for a full A
    # the variance per probe is 2 sum_{i != j} A_ij^2 (Hutchinson).
    diagonal = np.diag([3.0, 1.0, 0.5])
    model, data = quadratic(diagonal, np.zeros(3))
    result = sharpness.hessian_trace(model, data, num_samples=4)
    assert_within(result.value, np.trace(diagonal), 3 * hvp_bound(diagonal), "trace, diagonal A")
    full = spd_matrix([3.0, 1.0, 0.5, 0.2], seed=5)
    samples = 300
    model, data = quadratic(full, np.zeros(4))
    result = sharpness.hessian_trace(model, data, num_samples=samples)
    off = full - np.diag(np.diag(full))
    monte_carlo = 6 * math.sqrt(2 * np.sum(off**2) / samples)
    assert_within(result.value, np.trace(full), monte_carlo + 4 * hvp_bound(full), "trace")


# --------------------------------------------------------------------------- #
# Softmax regression: the Hessian in NumPy.
# --------------------------------------------------------------------------- #


def softmax_regression(num=200, dim=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((num, dim)) * [2.0, 1.0, 0.7, 0.4][:dim]).astype(np.float32)
    y = rng.integers(0, classes, num)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((dim,)), keras.layers.Dense(classes, kernel_initializer="glorot_normal")]
    )
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model, x, y


def softmax_hessian(model, x, y):
    """The Hessian of the mean cross-entropy w.r.t. `[vec(W), b]`, and its error scale.

    `H = mean_i J_i^T (diag(p_i) - p_i p_i^T) J_i` with `J_i = [x_i^T kron I_K, I_K]`.
    Also returns `M = mean_i |J_i|^T (diag(p_i) + p_i p_i^T) |J_i|`, the matrix of
    absolute values that bounds the float32 error of `H v` entrywise, and the
    largest `|x_i|^T |W| + |b|`, which bounds the logits' rounding.
    """
    w, b = (np.asarray(v, np.float64) for v in model.trainable_variables)
    x = np.asarray(x, np.float64)
    logits = x @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    classes = w.shape[1]
    h = np.zeros((w.size + b.size,) * 2)
    m = np.zeros_like(h)
    for xi, pi in zip(x, p):
        j = np.concatenate([np.kron(xi[None, :], np.eye(classes)), np.eye(classes)], axis=1)
        h += j.T @ (np.diag(pi) - np.outer(pi, pi)) @ j
        m += np.abs(j).T @ (np.diag(pi) + np.outer(pi, pi)) @ np.abs(j)
    scale = np.max(np.abs(x) @ np.abs(w) + np.abs(b))
    return h / len(x), m / len(x), scale


def softmax_relative_error(num, dim, classes, logit_scale):
    """Relative float32 error of a product `H v`, against `M |v|`.

    The logits carry `gamma(dim + 1) * logit_scale` absolute error, which
    moves each `p_j` by twice that, relative; softmax adds `U_FUNC` (exp) and
    `gamma(K)` (the sum); the double backward adds at most `2 (dim + K) + 4`
    roundings per entry, and the mean over the `num` examples `gamma(num)`.
    Every `p` enters the product at most twice.
    """
    p_error = 2 * gamma(dim + 1) * logit_scale + FUNC_ULPS * U32 + gamma(classes)
    return 2 * p_error + gamma(num + 2 * (dim + classes) + 4)


def test_hessian_vector_products_match_numpy():
    model, x, y = softmax_regression()
    h, m, scale = softmax_hessian(model, x, y)
    rng = np.random.default_rng(7)
    v = rng.standard_normal(h.shape[0])
    pieces = [v[:12].reshape(4, 3), v[12:]]
    product = sharpness.hessian_vector_product(model, (x, y), pieces, batch_size=64)
    product = np.concatenate([t.ravel() for t in product])
    bound = softmax_relative_error(200, 4, 3, scale) * (m @ np.abs(v))
    assert_within(product, h @ v, bound, "Hessian-vector product")


def test_hessian_eigenvalues_and_trace_of_softmax_regression_match_numpy():
    # Two classes: the Hessian has rank 5 and a top eigenvalue well apart from
    # the next (the features have scales 2, 1, 0.7, 0.4).
    model, x, y = softmax_regression(classes=2)
    h, m, scale = softmax_hessian(model, x, y)
    exact = np.sort(np.linalg.eigvalsh(h))[::-1]
    epsilon = softmax_relative_error(200, 4, 2, scale) * np.linalg.norm(m, 2)
    n = h.shape[0]
    lanczos = sharpness.hessian_eigenvalues(model, (x, y), k=4, iterations=n, batch_size=64)
    assert_within(lanczos.eigenvalues, exact[:4], 4 * math.sqrt(n) * epsilon, "Lanczos")
    # Power iteration falls short of lambda_1 by at most
    # lambda_1 (lambda_2 / lambda_1)^(2t) tan^2(start angle); t makes that
    # <= epsilon for a start with tan^2 <= 1e10.
    ratio = exact[1] / exact[0]
    iterations = math.ceil(math.log(epsilon / (exact[0] * 1e10)) / (2 * math.log(ratio)))
    power = sharpness.hessian_eigenvalues(model, (x, y), k=1, method="power", iterations=iterations)
    assert_within(power.top, exact[0], 4 * epsilon + epsilon, "power iteration")
    samples = 200
    trace = sharpness.hessian_trace(model, (x, y), num_samples=samples)
    off = h - np.diag(np.diag(h))
    monte_carlo = 6 * math.sqrt(2 * np.sum(off**2) / samples)
    assert_within(trace.value, np.trace(h), monte_carlo + n * epsilon, "Hutchinson trace")


# --------------------------------------------------------------------------- #
# The 0-1 sharpness.
# --------------------------------------------------------------------------- #


class TwoParameterClassifier(keras.Model):
    """Logits `[0, x . w]`: class 1 where `x . w > 0`; `w` has two entries."""

    def __init__(self, w, **kwargs):
        super().__init__(**kwargs)
        self.w0 = np.asarray(w, np.float32)

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(2, 1), initializer=keras.initializers.Constant(self.w0[:, None]), name="w"
        )

    def call(self, x):
        z = ops.matmul(x, self.w)
        return ops.concatenate([ops.zeros_like(z), z], axis=-1)


def two_parameter_data():
    """Points on the unit circle at angles `psi`, labelled 1 where `cos(psi) > 0`.

    With `w = (1, 0)` all are classified right. Twenty class-1 points sit 1 to
    5 degrees inside the boundary at +90 degrees, five 1 to 5 degrees inside
    the one at -90 degrees; the rest are 40 or more degrees from a boundary.
    Every turn of the boundary by 5 to 30 degrees towards the twenty flips
    all of them and nothing else: the maximum is a wide plateau, which the
    ascent of the lower bound reaches although it also shrinks `w`.
    """
    near = np.linspace(85.0, 89.0, 20)
    other_side = -np.linspace(85.0, 89.0, 5)
    bulk_one = np.linspace(-50.0, 50.0, 60)
    bulk_zero = np.linspace(130.0, 230.0, 60)
    psi = np.radians(np.concatenate([near, other_side, bulk_one, bulk_zero]))
    x = np.stack([np.cos(psi), np.sin(psi)], axis=1).astype(np.float32)
    y = (np.cos(psi) > 0).astype(np.int64)
    return x, y


def brute_force_zero_one(x, y, w, rho):
    """`max_{||d|| <= rho} err(w + d) - err(w)` over a polar grid of the disc, in float64.

    The error depends only on the angle of `w + d`, a piecewise-constant
    function whose pieces here are at least 0.2 degree wide; 2881 angles on
    each of 41 circles step by at most 0.125 degree of that angle.
    """
    radius, angle = np.meshgrid(np.linspace(0.0, rho, 41), np.linspace(0.0, 2 * np.pi, 2881))
    d = np.stack([radius.ravel() * np.cos(angle.ravel()), radius.ravel() * np.sin(angle.ravel())])
    errors = np.mean(((w[:, None] + d).T @ np.asarray(x, np.float64).T > 0) != y, axis=1)
    return np.max(errors) - np.mean((np.asarray(x, np.float64) @ w > 0) != y)


def test_zero_one_sharpness_equals_a_brute_force_search_on_two_parameters():
    x, y = two_parameter_data()
    w = np.array([1.0, 0.0])
    rho = 0.5  # the boundary can turn by up to 30 degrees
    model = TwoParameterClassifier(w)
    model(x[:1])
    expected = brute_force_zero_one(x, y, w, rho)
    assert round(expected * len(y)) == 20  # the twenty points near +90 degrees
    result = sharpness.worst_case(
        model, (x, y), rho=rho, steps=20, step_size=0.1, objective="zero_one", batch_size=256
    )
    assert round(result.value * len(y)) == round(expected * len(y))
    assert result.reference == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        {"rho": 0.05},
        {"rho": 0.5, "m": 32},
        {"rho": 0.02, "ball": "linf", "random_start": True, "m": 50},
        {"rho": 0.3, "adaptive": True, "steps": 3},
    ],
)
def test_zero_one_sharpness_is_an_error_rate_rise_and_never_below_zero(settings):
    model, x, y = softmax_regression(num=200)
    result = sharpness.worst_case(model, (x, y), objective="zero_one", **settings)
    m = settings.get("m")
    assert result.value >= 0.0
    if m is not None:  # each batch's own ascent: each rise is >= 0 too
        assert min(result.per_batch) >= 0.0
        counts = np.asarray(result.per_batch) * m
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-6 * m)
    else:  # one ascent over all 200 examples: a rise of the error rate, k / 200
        assert abs(result.value * 200 - round(result.value * 200)) <= 200 * gamma(200)
    logits = x.astype(np.float64) @ np.asarray(model.layers[0].kernel) + np.asarray(
        model.layers[0].bias
    )
    top_two = np.sort(logits, axis=1)[:, -2:]
    assert np.min(top_two[:, 1] - top_two[:, 0]) > 1e-4  # no near-tie that rounding could flip
    expected_error = np.mean(np.argmax(logits, axis=1) != y)
    # The mean of 200 zeros and ones is exact in float32 up to one rounding.
    assert abs(result.reference - expected_error) <= U32


# --------------------------------------------------------------------------- #
# Conventions: weights unchanged, wrappers, data subsets, no retracing.
# --------------------------------------------------------------------------- #


def batchnorm_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((96, 5)).astype(np.float32)
    return model, x, rng.integers(0, 3, 96)


@pytest.mark.parametrize("training", [False, True])
def test_every_measure_leaves_the_weights_bitwise_unchanged(training):
    model, x, y = batchnorm_mlp()
    model.fit(x, y, epochs=1, verbose=0)  # moving statistics away from their initial values
    before = [np.array(v) for v in model.variables]
    data = (x, y)
    kwargs = {"batch_size": 32, "training": training}
    sharpness.worst_case(model, data, steps=2, random_start=True, **kwargs)
    sharpness.worst_case(model, data, steps=2, objective="zero_one", m=32, **kwargs)
    sharpness.average_case(model, data, num_samples=2, adaptive=True, **kwargs)
    sharpness.hessian_eigenvalues(model, data, k=2, iterations=3, **kwargs)
    sharpness.hessian_trace(model, data, num_samples=2, **kwargs)
    sharpness.loss_landscape(model, data, resolution=3, **kwargs)
    after = [np.array(v) for v in model.variables]
    assert all(np.array_equal(b, a) for b, a in zip(before, after))


def batchnorm_mlp_loss(model, x, y, training, epsilon=1e-3):
    """The mean cross-entropy of `batchnorm_mlp` in float64 NumPy, and its float32 error bound.

    A first-order forward error analysis, layer by layer: `e_*` bounds the
    float32 error of each intermediate (dot products `gamma(k) |a| |b|`; the
    batch mean and variance `gamma(n)` of their absolute sums plus the
    propagated error; BatchNorm's division and square root a few roundings
    each; the cross-entropy is 2-Lipschitz in the max-norm of the logits,
    plus its own exp/log rounding).
    """
    w1, b1, scale, offset, w2, b2 = (np.asarray(v, np.float64) for v in model.trainable_variables)
    moving_mean, moving_var = (np.asarray(v, np.float64) for v in model.non_trainable_variables)
    x = np.asarray(x, np.float64)
    n = len(x)
    h = x @ w1 + b1
    e_h = gamma(x.shape[1] + 1) * (np.abs(x) @ np.abs(w1) + np.abs(b1))
    if training:
        mean, var = h.mean(axis=0), h.var(axis=0)
        e_mean = gamma(n) * np.abs(h).mean(axis=0) + e_h.max(axis=0)
        centred = np.abs(h - mean)
        e_var = gamma(n + 3) * (centred**2).mean(axis=0) + 2 * centred.mean(axis=0) * (
            e_mean + e_h.max(axis=0)
        )
    else:
        mean, var = moving_mean, moving_var
        e_mean = e_var = 0.0
    std = np.sqrt(var + epsilon)
    e_std = std * (e_var / (2 * (var + epsilon)) + 2 * U32)
    centred = h - mean
    hn = scale * centred / std + offset
    e_hn = np.abs(scale) * ((e_h + e_mean) / std + np.abs(centred) * e_std / std**2)
    e_hn += 4 * U32 * (np.abs(scale * centred / std) + np.abs(offset))
    a = np.maximum(hn, 0.0)
    z = a @ w2 + b2
    e_z = gamma(w2.shape[0] + 1) * (np.abs(a) @ np.abs(w2) + np.abs(b2)) + e_hn @ np.abs(w2)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    ce = lse - z[np.arange(n), y]
    e_ce = 2 * e_z.max(axis=1) + (gamma(z.shape[1] + 2) + 2 * FUNC_ULPS * U32) * (
        np.abs(lse) + np.abs(z).max(axis=1)
    )
    return ce.mean(), e_ce.mean() + gamma(n) * np.abs(ce).mean()


def test_training_mode_uses_batch_statistics():
    model, x, y = batchnorm_mlp()
    model.fit(x, y, epochs=3, verbose=0)
    for training in (False, True):
        result = sharpness.average_case(
            model, (x, y), num_samples=1, batch_size=96, training=training
        )
        expected, bound = batchnorm_mlp_loss(model, x, y, training)
        assert_within(result.reference, expected, bound, f"training={training}")
    inference, _ = batchnorm_mlp_loss(model, x, y, False)
    training, bound = batchnorm_mlp_loss(model, x, y, True)
    assert abs(training - inference) > 100 * bound  # the two modes differ on this model


def test_a_sharpness_aware_model_is_measured_through_its_inner_model():
    import bisam_keras as bk

    inner, x, y = softmax_regression(num=64)
    wrapper = bk.SharpnessAwareModel(inner)
    wrapper.compile(optimizer=bk.SAM(keras.optimizers.SGD(0.1)), loss=inner.loss)
    direct = sharpness.worst_case(inner, (x, y), steps=3)
    wrapped = sharpness.worst_case(wrapper, (x, y), steps=3)
    assert wrapped.value == direct.value and wrapped.reference == direct.reference


def test_a_fixed_subset_and_seed_give_the_same_examples_and_draws():
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.arange(50)
    first = sharpness.select((x, y), num_examples=10, seed=3)
    second = sharpness.select((x, y), num_examples=10, seed=3)
    other = sharpness.select((x, y), num_examples=10, seed=4)
    assert np.array_equal(first.x, second.x) and not np.array_equal(first.x, other.x)
    assert np.array_equal(first.x[:, 0].astype(int), first.y)
    assert np.all(np.diff(first.y) > 0)  # kept in their original order
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    from_dataset = sharpness.select(dataset, num_examples=10, seed=3)
    assert np.array_equal(from_dataset.y, first.y)
    model, xs, ys = softmax_regression(num=120)
    one = sharpness.average_case(model, (xs, ys), num_samples=3, num_examples=60, seed=1)
    two = sharpness.average_case(model, (xs, ys), num_samples=3, num_examples=60, seed=1)
    assert one.per_sample == two.per_sample


def test_nothing_retraces_per_iteration_grid_point_or_batch_size():
    model, x, y = softmax_regression(num=150)  # batches of 64, 64 and 22
    autodiff.TRACES.clear()
    sharpness.hessian_eigenvalues(model, (x, y), k=2, method="power", iterations=7, batch_size=64)
    sharpness.worst_case(model, (x, y), steps=6, batch_size=64)
    sharpness.loss_landscape(model, (x, y), resolution=6, batch_size=64)
    assert dict(autodiff.TRACES) == {"hvp": 1, "gradient": 1, "values": 1, "grid2": 1}


def test_other_backends_raise_naming_the_backend():
    for backend in ("jax", "torch"):
        with pytest.raises(NotImplementedError, match=backend):
            autodiff.backend_module(backend)


def test_results_serialize_to_json():
    model, x, y = softmax_regression(num=64)
    results = [
        sharpness.worst_case(model, (x, y), steps=2),
        sharpness.hessian_eigenvalues(model, (x, y), iterations=3),
        sharpness.loss_landscape(model, (x, y), dims=1, resolution=3),
    ]
    for result in results:
        text = json.dumps(result.to_dict())
        assert json.loads(text)["settings"]["num_examples"] == 64
        assert type(result).__name__ in repr(result)


@pytest.mark.parametrize(
    "function, kwargs, argument",
    [
        (sharpness.worst_case, {"rho": -0.1}, "rho"),
        (sharpness.worst_case, {"rho": 0.0}, "rho"),
        (sharpness.worst_case, {"steps": 0}, "steps"),
        (sharpness.worst_case, {"ball": "l1"}, "ball"),
        (sharpness.worst_case, {"m": 2.5}, "m"),
        (sharpness.worst_case, {"num_examples": 10_000}, "num_examples"),
        (sharpness.average_case, {"sigma": float("nan")}, "sigma"),
        (sharpness.average_case, {"num_samples": 0}, "num_samples"),
        (sharpness.hessian_eigenvalues, {"k": 0}, "k"),
        (sharpness.hessian_eigenvalues, {"k": 3, "iterations": 2}, "iterations"),
        (sharpness.hessian_eigenvalues, {"method": "arnoldi"}, "method"),
        (sharpness.hessian_eigenvalues, {"objective": "zero_one"}, "objective"),
        (sharpness.hessian_trace, {"num_samples": -1}, "num_samples"),
        (sharpness.loss_landscape, {"resolution": 1}, "resolution"),
        (sharpness.loss_landscape, {"span": (1.0, -1.0)}, "span"),
        (sharpness.loss_landscape, {"dims": 3}, "dims"),
    ],
)
def test_invalid_arguments_raise_naming_them(function, kwargs, argument):
    model, x, y = softmax_regression(num=32)
    with pytest.raises(ValueError, match=f"`{argument}`") as error:
        function(model, (x, y), **kwargs)
    assert f"{argument}=" in str(error.value) or "Received" in str(error.value)


def test_an_uncompiled_model_needs_an_objective():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    data = (np.zeros((4, 2), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="objective"):
        sharpness.worst_case(model, data)
    assert sharpness.worst_case(model, data, objective="cross_entropy", steps=1).value >= 0.0
