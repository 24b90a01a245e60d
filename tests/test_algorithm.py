"""One `train_on_batch` of `bk.SharpnessAwareModel` against an independent NumPy step.

The expected weights and logged losses come from `tests/numpy_reference.py`,
a float64 NumPy implementation with a hand-derived backward pass (checked
here against finite differences). No expected value is computed with
TensorFlow or with `bisam_keras`.

Model: ``logits = tanh(x W1 + b1) W2 + b2`` (input 5, hidden 7, 4 classes),
batch 12, weights set from a fixed `RandomState`. Every case runs with
``jit_compile=False`` and ``jit_compile=True``.
"""

import functools
import math
import os
import sys

import keras
import numpy as np
import pytest

import bisam_keras as bk

sys.path.insert(0, os.path.dirname(__file__))
import numpy_reference as ref  # noqa: E402
from tolerances import U32, U_FUNC, gamma, momentum_accumulation  # noqa: E402

IN, HIDDEN, K, B = 5, 7, 4, 12
LR = 0.1
L2 = 1e-2
# Logged losses: a mean of B = 12 per-example values (CE >= 0; the bounds in [-1, 1]), each
# through dot products of length <= HIDDEN + 1 = 8 and exp/log/tanh: relative error
# <= gamma(12) + 2 gamma(8) + 3 U_FUNC = 3.1e-6 of the magnitudes (O(1)), inside rtol 1e-5
# (atol 1e-6 where the loss is ~0), on weights off by `weights_atol` (x |dL/dw| <= 0.6).
RTOL, ATOL = 1e-5, 1e-6
JIT = pytest.mark.parametrize("jit", [False, True], ids=["nojit", "xla"])

# --------------------------------------------------------------------------- #
# Fixtures and helpers.
# --------------------------------------------------------------------------- #


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    yield


def make_params(seed=0):
    rs = np.random.RandomState(seed)
    return [
        (0.6 * rs.randn(IN, HIDDEN)).astype(np.float32),
        (0.2 * rs.randn(HIDDEN)).astype(np.float32),
        (0.6 * rs.randn(HIDDEN, K)).astype(np.float32),
        (0.2 * rs.randn(K)).astype(np.float32),
    ]


def make_data(seed=1):
    rs = np.random.RandomState(seed)
    x = rs.randn(B, IN).astype(np.float32)
    y = rs.randint(0, K, size=B).astype(np.int32)
    sample_weight = rs.uniform(0.2, 2.0, size=B).astype(np.float32)
    return x, y, sample_weight


def build_inner(params, l2=False):
    regularizer = keras.regularizers.L2(L2) if l2 else None
    inner = keras.Sequential(
        [
            keras.Input((IN,)),
            keras.layers.Dense(HIDDEN, activation="tanh", kernel_regularizer=regularizer),
            keras.layers.Dense(K),
        ]
    )
    inner.set_weights([p.copy() for p in params])
    return inner


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_optimizer(case):
    inner = keras.optimizers.SGD(learning_rate=LR, momentum=case.get("momentum", 0.0))
    kwargs = dict(
        rho=case["rho"],
        adaptive=case.get("adaptive", False),
        eta=case.get("eta", 0.0),
        sds_fraction=case.get("sds", 1.0),
        micro_batch_size=case.get("m"),
        seed=1234,
    )
    if case["kind"] == "sam":
        return bk.SAM(inner, **kwargs)
    return bk.BiSAM(
        inner, lower_bound=case["kind"], mu=case["mu"], alpha=case.get("alpha", 0.1), **kwargs
    )


def ref_config(case):
    if case["kind"] == "sam":
        objective = ("ce",)
    else:
        objective = (case["kind"], case["mu"], case.get("alpha", 0.1))
    return {
        "objective": objective,
        "rho": case["rho"],
        "adaptive": case.get("adaptive", False),
        "eta": case.get("eta", 0.0),
        "l2": [L2 if case.get("l2") else 0.0, 0.0, 0.0, 0.0],
        "sds_fraction": case.get("sds", 1.0),
        "micro_batch_size": case.get("m"),
    }


def sharpness_aware_model(params, case, jit):
    inner = build_inner(params, l2=case.get("l2", False))
    model = bk.SharpnessAwareModel(inner)
    model.compile(optimizer=make_optimizer(case), loss=loss_fn(), jit_compile=jit)
    return model, inner


@functools.cache
def summed_gradient_magnitude():
    """max over weights of sum_b |s_b| |d l_b / d w| / B: the magnitudes a step's gradient sums.

    From the float64 reference, per example, for each objective the cases use, with the
    largest sample weight (2.0), plus the L2 term's 2 L2 |w|.
    """
    params = [p.astype(np.float64) for p in make_params()]
    x, y, sw = make_data()
    largest = 0.0
    for objective in [("ce",), ("neglog", 1.5, 0.1), ("tanh", 10.0, 0.1), ("tanh", 3.0, 0.7)]:
        total = [np.zeros_like(p) for p in params]
        for b in range(B):
            _, grads = ref.mean_objective(params, x[b : b + 1], y[b : b + 1], None, objective)
            total = [t + np.abs(g) * sw.max() / B for t, g in zip(total, grads)]
        largest = max(largest, max(float(t.max()) for t in total))
    return largest + 2 * L2 * max(float(np.abs(p).max()) for p in params)


def weights_atol(steps, momentum=0.0):
    """Float32 bound on |weights - float64 reference| after `steps` SGD steps.

    Per step, a gradient entry is a sum of B = 12 per-example terms, each a chain of dot
    products of length <= HIDDEN + 1 = 8 and exp/log/tanh: relative error <= gamma(12) +
    2 gamma(8) + 3 U_FUNC of `summed_gradient_magnitude` (tests/tolerances.py). The ascent
    gradient's error moves the perturbation, and so the descent gradient, by no more again
    (rho |H| < 1 here): factor 2. SGD with momentum adds the steps up, times LR; a factor 2
    covers the curvature feedback over these <= 3 steps. (Weights themselves are rounded:
    the rtol 2 u per step of `assert_weights`.)
    """
    per_step = 2 * (gamma(B) + 2 * gamma(HIDDEN + 1) + 3 * U_FUNC) * summed_gradient_magnitude()
    return 2 * LR * momentum_accumulation(steps, momentum) * per_step


def assert_weights(got, expected, what, steps=1, momentum=0.0):
    for index, (g, e) in enumerate(zip(got, expected)):
        assert np.all(np.isfinite(g)), f"{what}: variable {index} is not finite"
        np.testing.assert_allclose(
            np.asarray(g, np.float64),
            e,
            rtol=2 * steps * U32,
            atol=weights_atol(steps, momentum),
            err_msg=f"{what}: variable {index} ([W1, b1, W2, b2])",
        )


def assert_logs(logs, loss, perturbed_loss, what):
    np.testing.assert_allclose(
        float(logs["loss"]), loss, rtol=RTOL, atol=ATOL, err_msg=f"{what}: logged loss"
    )
    np.testing.assert_allclose(
        float(logs["perturbed_loss"]),
        perturbed_loss,
        rtol=RTOL,
        atol=ATOL,
        err_msg=f"{what}: logged perturbed_loss",
    )


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - v))) for u, v in zip(a, b))


def run_and_compare(case, jit, steps=2, use_sample_weight=None):
    """Train `steps` steps with the package and with NumPy; compare after each."""
    params = make_params(case.get("param_seed", 0))
    x, y, sw = make_data(case.get("data_seed", 1))
    if not (case.get("sw", False) if use_sample_weight is None else use_sample_weight):
        sw = None
    model, inner = sharpness_aware_model(params, case, jit)
    cfg = ref_config(case)
    opt = ref.SGD(LR, case.get("momentum", 0.0))
    expected = [p.astype(np.float64) for p in params]
    for step in range(steps):
        logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        expected, loss, perturbed_loss = ref.train_step(expected, x, y, sw, cfg, opt)
        what = f"{case} jit={jit} step {step + 1}"
        assert_weights(inner.get_weights(), expected, what, step + 1, case.get("momentum", 0.0))
        assert_logs(logs, loss, perturbed_loss, what)
    return params, (x, y, sw), expected


# --------------------------------------------------------------------------- #
# The reference itself: hand-derived gradients against finite differences.
# --------------------------------------------------------------------------- #


def _finite_difference(fun, params, h=1e-6):
    grads = []
    for i, p in enumerate(params):
        g = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            plus = [q.copy() for q in params]
            minus = [q.copy() for q in params]
            plus[i][idx] += h
            minus[i][idx] -= h
            g[idx] = (fun(plus) - fun(minus)) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize(
    "objective",
    [("ce",), ("neglog", 1.5, 0.1), ("tanh", 10.0, 0.1), ("tanh", 3.0, 0.7)],
    ids=["ce", "neglog", "tanh", "tanh-alpha0.7"],
)
def test_reference_gradients_match_finite_differences(objective):
    params = [p.astype(np.float64) for p in make_params()]
    x, y, sw = make_data()
    fun = lambda ps: ref.mean_objective(ps, x, y, sw, objective)[0]  # noqa: E731
    _, analytic = ref.mean_objective(params, x, y, sw, objective)
    numeric = _finite_difference(fun, params)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-8)
    l2 = [L2, 0.0, 0.0, 0.0]
    fun = lambda ps: ref.total_loss(ps, x, y, sw, l2)[0]  # noqa: E731
    _, analytic = ref.total_loss(params, x, y, sw, l2)
    for a, n in zip(analytic, _finite_difference(fun, params)):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-8)


def test_reference_lower_bound_values_by_hand():
    # One example, K = 2, logits (0, 2), label 0: F = (0, 2).
    f = np.array([[0.0, 2.0]])
    gamma = math.log(math.e - 1)
    phi2 = 1 - math.log(1 + math.exp(gamma - 2.0))
    q_neglog = (math.log(1 + math.exp(1.5 * phi2)) - math.log(2)) / 1.5
    np.testing.assert_allclose(ref.lower_bound(f, [0], "neglog", 1.5)[0], [q_neglog], rtol=1e-12)
    q_tanh = (math.log(1 + math.exp(10 * math.tanh(0.2))) - math.log(2)) / 10
    np.testing.assert_allclose(ref.lower_bound(f, [0], "tanh", 10.0, 0.1)[0], [q_tanh], rtol=1e-12)
    # phi(0) = 0 for both bounds.
    assert abs(ref.phi(0.0, "neglog", 0.1)) < 1e-15
    assert ref.phi(0.0, "tanh", 0.1) == 0.0


# --------------------------------------------------------------------------- #
# 1-3, 5-7: the grid.
# --------------------------------------------------------------------------- #

NEGLOG = dict(kind="neglog", mu=1.5)
TANH = dict(kind="tanh", mu=10.0, alpha=0.1)
SAM = dict(kind="sam")

CASES = {
    # 1. SAM and BiSAM, several rho.
    "sam-rho0.05": dict(SAM, rho=0.05),
    "sam-rho0.5": dict(SAM, rho=0.5),
    "neglog-rho0.05": dict(NEGLOG, rho=0.05),
    "neglog-rho0.5": dict(NEGLOG, rho=0.5),
    "tanh-rho0.05": dict(TANH, rho=0.05),
    "tanh-rho0.5": dict(TANH, rho=0.5),
    # 2. ASAM / A-BiSAM.
    "asam-eta0": dict(SAM, rho=0.5, adaptive=True, eta=0.0),
    "asam-eta0.01": dict(SAM, rho=0.5, adaptive=True, eta=0.01),
    "abisam-neglog-eta0": dict(NEGLOG, rho=0.5, adaptive=True, eta=0.0),
    "abisam-tanh-eta0.01": dict(TANH, rho=0.5, adaptive=True, eta=0.01),
    # 3. mSAM.
    "msam-m4": dict(SAM, rho=0.3, m=4),
    "msam-m6": dict(SAM, rho=0.3, m=6),
    "mbisam-neglog-m4": dict(NEGLOG, rho=0.3, m=4),
    "mbisam-tanh-m6": dict(TANH, rho=0.3, m=6),
    # 5. sample weights in ascent and descent.
    "sam-sw": dict(SAM, rho=0.3, sw=True),
    "neglog-sw": dict(NEGLOG, rho=0.3, sw=True),
    "tanh-sw": dict(TANH, rho=0.3, sw=True),
    "asam-sw": dict(SAM, rho=0.3, adaptive=True, eta=0.01, sw=True),
    "msam-m4-sw": dict(SAM, rho=0.3, m=4, sw=True),
    "mbisam-m6-sw": dict(NEGLOG, rho=0.3, m=6, sw=True),
    # 7. L2 regularization: in the descent loss at w + e, not in the ascent.
    "sam-l2": dict(SAM, rho=0.5, l2=True),
    "neglog-l2": dict(NEGLOG, rho=0.5, l2=True),
    "sam-l2-sw": dict(SAM, rho=0.5, l2=True, sw=True),
    # momentum, over the steps (Keras: v = 0.9 v - lr g; w += v).
    "sam-momentum": dict(SAM, rho=0.3, momentum=0.9, steps=3),
    "neglog-momentum": dict(NEGLOG, rho=0.3, momentum=0.9, steps=3, sw=True),
}


def _grid_params():
    params = []
    for name in CASES:
        for jit in (False, True):
            params.append(pytest.param(name, jit, id=f"{name}-{'xla' if jit else 'nojit'}"))
    return params


@pytest.mark.parametrize("name, jit", _grid_params())
def test_step_matches_numpy(name, jit):
    """Weights after each step and the logged `loss`/`perturbed_loss` (6) match NumPy."""
    case = CASES[name]
    run_and_compare(case, jit, steps=case.get("steps", 2))


@pytest.mark.parametrize("name", list(CASES))
def test_grid_cases_are_distinguishable(name):
    """The tolerance is far below the effect of the option under test (NumPy only)."""
    case = CASES[name]
    params = [p.astype(np.float64) for p in make_params()]
    x, y, sw = make_data()
    sw = sw if case.get("sw") else None
    cfg = ref_config(case)
    grads, _, _ = ref.step_gradient(params, x, y, sw, cfg)
    alternatives = {"rho=0": dict(cfg, rho=0.0)}
    if case["kind"] != "sam":
        alternatives["SAM ascent"] = dict(cfg, objective=("ce",))
    if cfg["adaptive"]:
        alternatives["not adaptive"] = dict(cfg, adaptive=False)
    if cfg["micro_batch_size"]:
        alternatives["no micro-batches"] = dict(cfg, micro_batch_size=None)
    if case.get("l2"):
        alternatives["L2 in ascent"] = dict(cfg, ascent_l2=cfg["l2"])
        alternatives["L2 gradient at w"] = dict(cfg, descent_at_w=True)
    if case.get("sw"):
        alternatives["no sample weight"] = "no-sw"
    for label, alt in alternatives.items():
        if alt == "no-sw":
            other, _, _ = ref.step_gradient(params, x, y, None, cfg)
        else:
            other, _, _ = ref.step_gradient(params, x, y, sw, alt)
        assert LR * max_diff(grads, other) > 10 * weights_atol(1), label


# --------------------------------------------------------------------------- #
# 4. rho = 0 is the plain inner optimizer.
# --------------------------------------------------------------------------- #


@JIT
@pytest.mark.parametrize("kind", ["sam", "neglog"])
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["sgd", "momentum"])
@pytest.mark.parametrize("l2", [False, True], ids=["nol2", "l2"])
def test_rho_zero_is_plain_inner_optimizer(l2, kind, momentum, jit):
    """rho = 0: the step of a plain keras.Model with the same SGD, and of NumPy."""
    case = dict(SAM if kind == "sam" else NEGLOG, rho=0.0, momentum=momentum, sw=True, l2=l2)
    params = make_params()
    x, y, sw = make_data()
    model, inner = sharpness_aware_model(params, case, jit)
    plain = build_inner(params, l2=l2)
    plain.compile(
        optimizer=keras.optimizers.SGD(LR, momentum=momentum), loss=loss_fn(), jit_compile=jit
    )
    cfg = ref_config(case)
    opt = ref.SGD(LR, momentum)
    expected = [p.astype(np.float64) for p in params]
    for step in range(2):
        logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        plain_logs = plain.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        expected, loss, _ = ref.train_step(expected, x, y, sw, cfg, opt)
        what = f"rho=0 {kind} momentum={momentum} jit={jit} step {step + 1}"
        assert_weights(inner.get_weights(), expected, what, step + 1, momentum)
        assert_weights(  # two float32 runs: each within the bound of the reference
            inner.get_weights(),
            [w.astype(np.float64) for w in plain.get_weights()],
            what + " vs plain keras",
            2 * (step + 1),
            momentum,
        )
        assert_logs(logs, loss, loss, what)
        np.testing.assert_allclose(float(plain_logs["loss"]), loss, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- #
# 8. A zero ascent gradient gives a zero perturbation, and no NaN.
# --------------------------------------------------------------------------- #


@JIT
@pytest.mark.parametrize("name", ["sam", "neglog", "tanh", "asam"])
def test_zero_ascent_gradient_gives_zero_perturbation(name, jit):
    """All sample weights 0, no regularizer: the ascent objective is identically 0,
    its gradient exactly 0, so e = 0 (not NaN from 0/0); the descent gradient is 0
    too, so the step is the plain SGD step on a zero gradient: nothing moves."""
    base = {"sam": SAM, "neglog": NEGLOG, "tanh": TANH, "asam": SAM}[name]
    case = dict(base, rho=0.5, adaptive=(name == "asam"))
    params = make_params()
    x, y, _ = make_data()
    sw = np.zeros(B, np.float32)
    model, inner = sharpness_aware_model(params, case, jit)
    for step in range(2):
        logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        what = f"zero gradient {name} jit={jit} step {step + 1}"
        assert_weights(inner.get_weights(), [p.astype(np.float64) for p in params], what)
        assert_logs(logs, 0.0, 0.0, what)


@JIT
@pytest.mark.parametrize("name", ["sam", "neglog", "asam"])
def test_zero_ascent_gradient_with_l2_gives_plain_step(name, jit):
    """All sample weights 0 and L2(1e-2) on W1: the ascent objective (which excludes the
    L2 term) is identically 0, so e = 0 and the descent gradient is the L2 gradient
    at w: W1 <- W1 - lr * 2 * 1e-2 * W1, all other variables unchanged."""
    base = {"sam": SAM, "neglog": NEGLOG, "asam": SAM}[name]
    case = dict(base, rho=0.5, l2=True, adaptive=(name == "asam"))
    params = make_params()
    x, y, _ = make_data()
    sw = np.zeros(B, np.float32)
    model, inner = sharpness_aware_model(params, case, jit)
    logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    w1 = params[0].astype(np.float64)
    by_hand = [w1 - LR * 2 * L2 * w1] + [p.astype(np.float64) for p in params[1:]]
    assert_weights(inner.get_weights(), by_hand, f"zero gradient {name} jit={jit}")
    reg = L2 * float(np.sum(w1 * w1))
    assert_logs(logs, reg, reg, f"zero gradient {name} jit={jit}")
    # The NumPy reference agrees (its perturbation is zero too).
    expected, _, _ = ref.train_step(
        [p.astype(np.float64) for p in params], x, y, sw, ref_config(case), ref.SGD(LR)
    )
    assert_weights(inner.get_weights(), expected, f"zero gradient {name} jit={jit} (reference)")


# --------------------------------------------------------------------------- #
# 9. ESAM's sharpness-sensitive data selection.
# --------------------------------------------------------------------------- #

SDS_CASES = {
    "sam": dict(SAM, rho=0.5, sds=0.5),
    "neglog": dict(NEGLOG, rho=0.5, sds=0.5),
    "tanh-sw": dict(TANH, rho=0.5, sds=0.5, sw=True),
    "sam-sw-l2": dict(SAM, rho=0.5, sds=0.5, sw=True, l2=True),
}


@pytest.mark.parametrize("name", list(SDS_CASES))
def test_sds_reference_selection_is_well_separated(name):
    """The kept and dropped sharpness values are distinct, and the subset matters."""
    case = SDS_CASES[name]
    params = [p.astype(np.float64) for p in make_params()]
    x, y, sw = make_data()
    sw = sw if case.get("sw") else None
    cfg = ref_config(case)
    grads, _, _, info = ref.sharpness_aware_gradient(params, x, y, sw, cfg)
    assert info["k"] == math.ceil(0.5 * B) == 6
    s = np.sort(info["sharpness"])[::-1]
    assert s[5] - s[6] > 1e-4 * max(1.0, abs(s[5])), s  # no near-tie at the cut
    assert len(set(np.round(info["sharpness"], 9))) == B
    full, _, _, _ = ref.sharpness_aware_gradient(params, x, y, sw, dict(cfg, sds_fraction=1.0))
    assert LR * max_diff(grads, full) > 10 * weights_atol(1)


@JIT
@pytest.mark.parametrize(
    "name",
    list(SDS_CASES),
)
def test_sds_step_matches_numpy(name, jit):
    case = SDS_CASES[name]
    run_and_compare(case, jit, steps=1)
