"""Every model a user brings: one BiSAM step against an independent NumPy step.

Issue 17, items 1-5. The models are linear (a `Dense` layer applied at every
position), so that the float64 NumPy reference is a few lines: the logits are
`z = x W + b` at every position, the lower bound and its gradient with respect
to `z` come from `tests/numpy_reference.py`, and the weight gradients are
`x^T dA/dz`. Each case trains one `train_on_batch` with SGD and compares the
new weights, and the perturbation direction where it matters, with NumPy:

- a softmax output compiled with `from_logits=False` (the bound follows the loss);
- per-position outputs `(B, T, K)` with `T == K`, and `(B, H, W, K)`, with
  per-example sample weights broadcast over the positions;
- two heads (dict and list outputs) weighted by `loss_weights`;
- binary outputs (one logit, sigmoid probabilities, all-zero labels);
- `ignore_class`;
- unbuilt models (the README's mixin example, a `Sequential` without `Input`,
  an unbuilt subclassed inner model);
- `export()` and the reloaded SavedModel.

Tolerances (see `tests/tolerances.py`): every gradient entry is a sum over
`N` positions of products `x * dA/dz`, whose `dA/dz` goes through a softmax-like
normalisation (exp, log, tanh: `U_FUNC` each) and a dot product of length
`C + 1`; it is off by at most `(gamma(N + C + 2) + 6 U_FUNC) * sum |terms|`,
twice that for two computations in different orders. The perturbation is a
normalised gradient: `|delta(g / |g|)| <= 2 |delta g| / |g|`. The descent
gradient at `w + e` moves by at most `|x| (|x| + 1) |delta e|` per term, since
the cross-entropy's (and the logistic loss') Hessian in the logits is at most
1. `step_tolerance` adds these up.
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk

sys.path.insert(0, os.path.dirname(__file__))
import numpy_reference as ref  # noqa: E402
from tolerances import U32, U_FUNC, gamma  # noqa: E402

LR, RHO = 0.5, 0.2
JIT = pytest.mark.parametrize("jit", [False, True], ids=["nojit", "xla"])
BOUNDS = pytest.mark.parametrize(
    "bound, mu, alpha", [("neglog", 1.5, 0.1), ("tanh", 10.0, 0.1)], ids=["neglog", "tanh"]
)


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    yield


# --------------------------------------------------------------------------- #
# The NumPy reference: linear heads, per position.
# --------------------------------------------------------------------------- #


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ce(z, y):
    """Per-position cross-entropy of logits `z` `(N, K)` and its gradient."""
    p = _softmax(z)
    values = -np.log(p[np.arange(len(y)), y])
    grad = p.copy()
    grad[np.arange(len(y)), y] -= 1.0
    return values, grad


def logistic(z, y):
    """Per-entry binary cross-entropy of logits `z` `(N,)`, labels 0/1, and its gradient."""
    values = np.logaddexp(0.0, z) - y * z
    return values, 1.0 / (1.0 + np.exp(-z)) - y


def bound(z, y, kind, mu, alpha):
    """Per-position `Q` of logits `(N, K)` and its gradient (the reference's)."""
    return ref.lower_bound(z, y, kind, mu, alpha)


def binary_bound(z, y, kind, mu, alpha):
    """`Q` of the two-class problem with logits `(0, z)`, and `dQ/dz`."""
    values, grad = ref.lower_bound(np.stack([np.zeros_like(z), z], axis=-1), y, kind, mu, alpha)
    return values, grad[:, 1]


class Head:
    """One linear head: `z = x W + b` at each of `N` positions, per-position weights `s`.

    `objective(z, y) -> (values, dvalues/dz)` per position; the head's value is
    `weight * sum_n s_n v_n / norm`, Keras' `sum_over_batch_size` with `norm`
    the number of positions (or of valid positions with `ignore_class`).
    """

    def __init__(self, x, y, s, weight=1.0, norm=None, binary=False):
        self.x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        self.y = np.asarray(y).reshape(-1)
        self.s = np.asarray(s, np.float64).reshape(-1)
        self.weight = weight
        self.norm = len(self.y) if norm is None else norm
        self.binary = binary

    def grads(self, w, b, objective):
        z = self.x @ w + b
        if self.binary:
            z = z[:, 0]
        values, dz = objective(z, self.y)
        scale = self.weight * self.s / self.norm
        if self.binary:
            dz = dz[:, None]
        dz = dz * scale[:, None]
        value = float((values * scale).sum())
        return value, [self.x.T @ dz, dz.sum(axis=0)], (self.x, dz)


def reference_step(heads, params, ascent, descent, rho=RHO, lr=LR):
    """One SAM/BiSAM step of SGD on linear heads; params `[W_0, b_0, W_1, b_1, ...]`.

    Returns `(new_params, e, terms)`: `terms` holds, per head, the inputs and
    `dA/dz` of the ascent and of the descent, for the tolerance.
    """
    params = [np.asarray(p, np.float64) for p in params]
    g_asc, terms = [], []
    for i, head in enumerate(heads):
        _, g, t = head.grads(params[2 * i], params[2 * i + 1], ascent[i])
        g_asc += g
        terms.append(t)
    e = ref.perturbation(g_asc, params, rho)
    perturbed = [p + d for p, d in zip(params, e)]
    g_desc, desc_terms = [], []
    for i, head in enumerate(heads):
        _, g, t = head.grads(perturbed[2 * i], perturbed[2 * i + 1], descent[i])
        g_desc += g
        desc_terms.append(t)
    new = [p - lr * g for p, g in zip(params, g_desc)]
    return new, e, {"ascent": terms, "descent": desc_terms, "g_asc": g_asc}


def _term_bound(x, dz, n):
    """Bounds of `x^T dz` and `sum dz` (the W and b gradients) computed in float32."""
    c = x.shape[1]
    factor = 2.0 * (gamma(n + c + 2) + 6.0 * U_FUNC)
    return [factor * (np.abs(x).T @ np.abs(dz)), factor * np.abs(dz).sum(axis=0)]


def step_tolerance(info, params, heads, rho=RHO, lr=LR):
    """Per-parameter bounds on the float32 step's new weights (module docstring)."""
    asc = []
    for (x, dz), head in zip(info["ascent"], heads):
        asc += _term_bound(x, dz, len(head.y))
    g_norm = ref.global_norm(info["g_asc"])
    e_err = rho * 2.0 * ref.global_norm(asc) / g_norm + rho * 4.0 * U32
    tol = []
    for (x, dz), head in zip(info["descent"], heads):
        w_bound, b_bound = _term_bound(x, dz, len(head.y))
        # Moving e by e_err moves each logit by <= (|x_n| + 1) e_err; the objective's
        # Hessian in the logits is <= 1 (weight * s / norm as in the gradient).
        scale = head.weight * np.abs(head.s) / head.norm
        reach = (np.linalg.norm(x, axis=1) + 1.0) * e_err * scale
        w_bound = w_bound + np.abs(x).T @ np.broadcast_to(reach[:, None], (len(reach), 1))
        b_bound = b_bound + reach.sum()
        tol += [lr * w_bound, lr * b_bound]
    return [t + 4.0 * U32 * np.abs(p) for t, p in zip(tol, params)]


def assert_step(model_weights, expected, tolerance):
    for got, want, tol in zip(model_weights, expected, tolerance):
        np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), tol + 1e-30)


def _objectives(kind, mu, alpha, binary=False):
    if binary:
        return (lambda z, y: binary_bound(z, y, kind, mu, alpha)), logistic
    return (lambda z, y: bound(z, y, kind, mu, alpha)), ce


def _bisam(kind, mu, alpha, **kwargs):
    return bk.BiSAM(
        keras.optimizers.SGD(LR), rho=RHO, lower_bound=kind, mu=mu, alpha=alpha, seed=3, **kwargs
    )


def _weights(shape_in, k, seed):
    rs = np.random.RandomState(seed)
    return [
        (0.8 * rs.randn(shape_in, k)).astype(np.float32),
        (0.3 * rs.randn(k)).astype(np.float32),
    ]


# --------------------------------------------------------------------------- #
# 2. Softmax outputs: the bound follows the compiled loss's from_logits.
# --------------------------------------------------------------------------- #


@JIT
@BOUNDS
def test_softmax_output_uses_log_probability_margins(jit, bound, mu, alpha):
    rs = np.random.RandomState(0)
    x = rs.randn(16, 5).astype(np.float32)
    y = rs.randint(0, 4, 16)
    params = _weights(5, 4, 1)
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="softmax")])
    inner.set_weights(params)
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam(bound, mu, alpha),
        loss=keras.losses.SparseCategoricalCrossentropy(),  # from_logits=False
        jit_compile=jit,
    )
    model.train_on_batch(x, y)
    heads = [Head(x, y, np.ones(16))]
    expected, _, info = reference_step(heads, params, *zip(_objectives(bound, mu, alpha)))
    tol = step_tolerance(info, params, heads)
    assert_step(inner.get_weights(), expected, tol)
    # The old behaviour (probabilities used as logits) is far outside the tolerance.
    wrong, _, _ = reference_step(
        heads,
        params,
        [lambda z, y: _probabilities_as_logits(z, y, bound, mu, alpha)],
        [ce],
    )
    assert max(np.abs(w - e).max() for w, e in zip(wrong, expected)) > 20 * max(
        t.max() for t in tol
    )


def _probabilities_as_logits(z, y, kind, mu, alpha):
    p = _softmax(z)
    values, dp = ref.lower_bound(p, y, kind, mu, alpha)
    # Chain rule through the softmax: dz = p * (dp - sum(dp * p)).
    dz = p * (dp - (dp * p).sum(axis=1, keepdims=True))
    return values, dz


def test_string_loss_and_probability_bound_agree_with_explicit_from_logits():
    model = bk.SharpnessAwareModel(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    )
    model.compile(optimizer=_bisam("neglog", 1.5, 0.1), loss="sparse_categorical_crossentropy")
    objective = model._ascent_objective.objectives
    assert objective.from_logits is False
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert model._ascent_objective.objectives.from_logits is True


def test_custom_loss_needs_from_logits():
    def my_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_pred))

    model = bk.SharpnessAwareModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match=r"logits or probabilities.*from_logits=True.*my_loss"):
        model.compile(optimizer=_bisam("neglog", 1.5, 0.1), loss=my_loss)
    model.compile(optimizer=_bisam("neglog", 1.5, 0.1, from_logits=True), loss=my_loss)
    assert model._ascent_objective.objectives.from_logits is True


def test_from_logits_that_contradicts_the_loss_is_refused():
    model = bk.SharpnessAwareModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match=r"`from_logits`=False contradicts.*from_logits=True"):
        model.compile(
            optimizer=_bisam("neglog", 1.5, 0.1, from_logits=False),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )


def test_from_logits_with_a_custom_lower_bound_is_refused():
    with pytest.raises(ValueError, match=r"from_logits=True with lower_bound="):
        bk.BiSAM(
            keras.optimizers.SGD(0.1),
            lower_bound=keras.losses.SparseCategoricalCrossentropy(),
            from_logits=True,
        )


# --------------------------------------------------------------------------- #
# 3. Per-position outputs and several outputs.
# --------------------------------------------------------------------------- #


@JIT
@BOUNDS
@pytest.mark.parametrize("positions", [(4,), (3, 2)], ids=["sequence-T=K", "pixels"])
def test_per_position_outputs_with_sample_weights(jit, bound, mu, alpha, positions):
    """`(B, T, K)` with T == K (the silently wrong case) and `(B, H, W, K)`."""
    k, c, b = 4, 3, 6
    rs = np.random.RandomState(2)
    x = rs.randn(b, *positions, c).astype(np.float32)
    y = rs.randint(0, k, (b, *positions))
    sw = rs.uniform(0.2, 2.0, b).astype(np.float32)
    params = _weights(c, k, 3)
    inner = keras.Sequential([keras.Input((*positions, c)), keras.layers.Dense(k)])
    inner.set_weights(params)
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam(bound, mu, alpha),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    # Keras' per-position losses take per-position weights (a `(B,)` weight is not
    # broadcast over the positions): each example's weight at each of its positions.
    per_position = np.broadcast_to(sw.reshape(b, *([1] * len(positions))), y.shape).copy()
    model.train_on_batch(x, y, sample_weight=per_position)
    heads = [Head(x, y, per_position)]
    expected, _, info = reference_step(heads, params, *zip(_objectives(bound, mu, alpha)))
    assert_step(inner.get_weights(), expected, step_tolerance(info, params, heads))


@JIT
def test_one_hot_per_pixel_labels(jit):
    k, c, b = 3, 2, 4
    rs = np.random.RandomState(4)
    x = rs.randn(b, 2, 2, c).astype(np.float32)
    y = rs.randint(0, k, (b, 2, 2))
    params = _weights(c, k, 5)
    inner = keras.Sequential([keras.Input((2, 2, c)), keras.layers.Dense(k)])
    inner.set_weights(params)
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    model.train_on_batch(x, np.eye(k, dtype=np.float32)[y])
    heads = [Head(x, y, np.ones(y.shape))]
    expected, _, info = reference_step(heads, params, *zip(_objectives("neglog", 1.5, 0.1)))
    assert_step(inner.get_weights(), expected, step_tolerance(info, params, heads))


def _two_heads(c, k):
    inputs = keras.Input((c,))
    return keras.Model(
        inputs,
        {
            "digit": keras.layers.Dense(k, name="digit")(inputs),
            "odd": keras.layers.Dense(1, name="odd")(inputs),
        },
    )


@JIT
@pytest.mark.parametrize("structure", ["dict", "list"])
def test_two_heads_weighted_by_loss_weights(jit, structure):
    """A 4-class head (logits) and a binary head (one logit), `loss_weights` 0.3 and 2."""
    c, k, b = 3, 4, 10
    rs = np.random.RandomState(6)
    x = rs.randn(b, c).astype(np.float32)
    y = rs.randint(0, k, b)
    odd = (y % 2).astype(np.float32)
    inner = _two_heads(c, k)
    if structure == "list":
        inputs = inner.inputs[0]
        inner = keras.Model(inputs, [inner.output["digit"], inner.output["odd"]])
    p_digit, p_odd = _weights(c, k, 7), _weights(c, 1, 8)
    inner.get_layer("digit").set_weights(p_digit)
    inner.get_layer("odd").set_weights(p_odd)
    model = bk.SharpnessAwareModel(inner)
    losses = {
        "digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "odd": keras.losses.BinaryCrossentropy(from_logits=True),
    }
    weights = {"digit": 0.3, "odd": 2.0}
    labels = {"digit": y, "odd": odd[:, None]}
    if structure == "list":
        losses, weights = list(losses.values()), list(weights.values())
        labels = [labels["digit"], labels["odd"]]
    model.compile(
        optimizer=_bisam("tanh", 10.0, 0.1), loss=losses, loss_weights=weights, jit_compile=jit
    )
    model.train_on_batch(x, labels)
    heads = [Head(x, y, np.ones(b), weight=0.3), Head(x, odd, np.ones(b), weight=2.0, binary=True)]
    asc_digit, desc_digit = _objectives("tanh", 10.0, 0.1)
    asc_odd, desc_odd = _objectives("tanh", 10.0, 0.1, binary=True)
    params = p_digit + p_odd
    expected, _, info = reference_step(heads, params, [asc_digit, asc_odd], [desc_digit, desc_odd])
    got = inner.get_layer("digit").get_weights() + inner.get_layer("odd").get_weights()
    assert_step(got, expected, step_tolerance(info, params, heads))


def test_a_regression_head_is_refused_at_compile():
    model = bk.SharpnessAwareModel(_two_heads(3, 4))
    with pytest.raises(ValueError, match=r"output 'odd'.*regression loss.*bisam_keras.SAM"):
        model.compile(
            optimizer=_bisam("neglog", 1.5, 0.1),
            loss={"digit": "sparse_categorical_crossentropy", "odd": "mse"},
        )
    # An output without a loss takes no part; SAM climbs any compiled loss.
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1), loss={"digit": "sparse_categorical_crossentropy"}
    )
    model.compile(
        optimizer=bk.SAM(keras.optimizers.SGD(0.1)),
        loss={"digit": "sparse_categorical_crossentropy", "odd": "mse"},
    )


def test_regression_model_is_refused_and_trains_with_sam():
    rs = np.random.RandomState(9)
    x, y = rs.randn(8, 3).astype(np.float32), rs.randn(8, 3).astype(np.float32)
    model = bk.SharpnessAwareModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)]))
    with pytest.raises(
        ValueError, match=r"needs class scores.*regression loss MeanSquaredError\(\)"
    ):
        model.compile(optimizer=_bisam("neglog", 1.5, 0.1), loss=keras.losses.MeanSquaredError())
    model.compile(optimizer=bk.SAM(keras.optimizers.SGD(0.1)), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=5, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before


# --------------------------------------------------------------------------- #
# 4. Binary outputs and ignore_class.
# --------------------------------------------------------------------------- #


@JIT
@BOUNDS
@pytest.mark.parametrize("labels", ["mixed", "all-zero"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logit", "sigmoid"])
def test_one_output_binary_is_the_two_class_bound(jit, bound, mu, alpha, labels, from_logits):
    c, b = 4, 12
    rs = np.random.RandomState(10)
    x = rs.randn(b, c).astype(np.float32)
    y = (rs.rand(b) < 0.5).astype(np.float32) if labels == "mixed" else np.zeros(b, np.float32)
    params = _weights(c, 1, 11)
    activation = None if from_logits else "sigmoid"
    inner = keras.Sequential([keras.Input((c,)), keras.layers.Dense(1, activation=activation)])
    inner.set_weights(params)
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam(bound, mu, alpha),
        loss=keras.losses.BinaryCrossentropy(from_logits=from_logits),
        jit_compile=jit,
    )
    model.train_on_batch(x, y[:, None])
    heads = [Head(x, y.astype(int), np.ones(b), binary=True)]
    expected, e, info = reference_step(heads, params, *zip(_objectives(bound, mu, alpha, True)))
    assert ref.global_norm(e) == pytest.approx(RHO)  # a real perturbation, not plain SGD
    got = inner.get_weights()
    assert np.all(np.isfinite(got[0]))
    assert_step(got, expected, step_tolerance(info, params, heads))


def test_binary_labels_outside_minus_one_one_raise_eagerly():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside \[-1, 1\].*binary"):
        bk.losses.lower_bound([[3.0]], [[0.5]])


@JIT
def test_ignore_class_is_left_out_of_the_bound_and_its_mean(jit):
    k, c, b = 3, 2, 4
    rs = np.random.RandomState(12)
    x = rs.randn(b, 5, c).astype(np.float32)
    y = rs.randint(0, k, (b, 5))
    y[rs.rand(b, 5) < 0.3] = -1
    y[0, 0] = -1
    params = _weights(c, k, 13)
    inner = keras.Sequential([keras.Input((5, c)), keras.layers.Dense(k)])
    inner.set_weights(params)
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1),
        jit_compile=jit,
    )
    model.train_on_batch(x, y)
    valid = (y != -1).reshape(-1)
    # Keras averages the ignore_class cross-entropy over valid positions (with its
    # total / (valid + 1e-7) weights: relative 1e-7 / valid, below the bound here).
    heads = [Head(x.reshape(-1, c)[valid], y.reshape(-1)[valid], np.ones(valid.sum()))]
    expected, _, info = reference_step(heads, params, *zip(_objectives("neglog", 1.5, 0.1)))
    tol = step_tolerance(info, params, heads)
    assert_step(inner.get_weights(), expected, [t + 1e-7 * np.abs(p) for t, p in zip(tol, params)])


def test_ignore_class_loss_value_is_the_mean_over_valid_positions():
    rs = np.random.RandomState(14)
    z = rs.randn(3, 4, 5).astype(np.float32)
    y = rs.randint(0, 5, (3, 4))
    y[:, 1] = 7
    sw = np.array([0.5, 1.0, 2.0], np.float32)
    loss = bk.losses.TanhLowerBound(mu=10.0, ignore_class=7)
    values, _ = ref.lower_bound(z.reshape(-1, 5)[(y != 7).reshape(-1)], y[y != 7], "tanh", 10.0)
    weights = np.broadcast_to(sw[:, None], y.shape)[y != 7]
    expected = (weights * values).sum() / (y != 7).sum()
    got = float(loss(y, z, sample_weight=sw))
    # A mean of 9 values in [-1, 1] with sample weights: gamma(9) + 3 U_FUNC relative of the
    # summed magnitudes (<= 2 * 9 / 9).
    assert abs(got - expected) < 2.0 * (gamma(9) + 3 * U_FUNC) * 2.0


# --------------------------------------------------------------------------- #
# 1. Unbuilt models, and 5. export.
# --------------------------------------------------------------------------- #


class MyModel(bk.SharpnessAwareMixin, keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = keras.layers.Dense(6, activation="tanh")
        self.head = keras.layers.Dense(3)

    def call(self, x, training=False):
        return self.head(self.body(x))


class Inner(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = keras.layers.Dense(3)

    def call(self, x):
        return self.head(x)


UNBUILT = {
    "mixin": MyModel,
    "wrapped-subclassed": lambda: bk.SharpnessAwareModel(Inner()),
    "wrapped-sequential-without-input": lambda: bk.SharpnessAwareModel(
        keras.Sequential([keras.layers.Dense(3)])
    ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["nojit", "xla"])
@pytest.mark.parametrize("kind", list(UNBUILT))
def test_unbuilt_models_train_and_export(kind, jit, tmp_path):
    rs = np.random.RandomState(15)
    x, y = rs.randn(32, 4).astype(np.float32), rs.randint(0, 3, 32)
    model = UNBUILT[kind]()
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["perturbed_loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    prediction = model.predict(x[:5], verbose=0)
    model.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    assert_same_dense_outputs(served.serve(x[:5]).numpy(), prediction, model, x[:5])


def assert_same_dense_outputs(got, want, model, x):
    """Two float32 evaluations of a stack of `Dense` layers (tanh or linear), in two graphs.

    Each layer's products of length n are off by <= gamma(n + 1) * (|h| |W| + |b|) in
    each graph, tanh adds U_FUNC and passes errors on with slope <= 1: the
    difference is at most twice the propagated bound.
    """
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    h = np.abs(np.asarray(x, np.float64))
    err = np.zeros_like(h)
    for layer in dense:
        kernel, bias = (np.abs(np.asarray(w, np.float64)) for w in layer.get_weights())
        magnitude = h @ kernel + bias
        err = err @ kernel + gamma(kernel.shape[0] + 1) * magnitude + U_FUNC * magnitude
        h = magnitude
    np.testing.assert_array_less(np.abs(got - want), 2.0 * err + 1e-30)


def test_unbuilt_model_first_step_equals_numpy():
    """An unbuilt `Sequential` gets the same first step as NumPy from its initial weights."""
    rs = np.random.RandomState(16)
    x, y = rs.randn(8, 4).astype(np.float32), rs.randint(0, 3, 8)
    inner = keras.Sequential([keras.layers.Dense(3)])
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    initial = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            initial.extend(w.copy() for w in inner.get_weights())

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Record()])
    heads = [Head(x, y, np.ones(8))]
    expected, _, info = reference_step(heads, initial, *zip(_objectives("neglog", 1.5, 0.1)))
    assert_step(inner.get_weights(), expected, step_tolerance(info, initial, heads))


@pytest.mark.parametrize("inputs", ["single", "dict"])
def test_export_of_a_wrapped_functional_model(inputs, tmp_path):
    rs = np.random.RandomState(17)
    if inputs == "single":
        inp = keras.Input((4,), name="pixels")
        inner = keras.Model(inp, keras.layers.Dense(3)(inp))
        x = rs.randn(16, 4).astype(np.float32)
    else:
        inp = {"a": keras.Input((2,), name="a"), "b": keras.Input((3,), name="b")}
        joined = keras.layers.Concatenate()([inp["a"], inp["b"]])
        inner = keras.Model(inp, keras.layers.Dense(3)(joined))
        x = {"a": rs.randn(16, 2).astype(np.float32), "b": rs.randn(16, 3).astype(np.float32)}
    y = rs.randint(0, 3, 16)
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=_bisam("neglog", 1.5, 0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=1, verbose=0)
    prediction = model.predict(x, verbose=0)
    model.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    inputs = x if inputs == "single" else np.concatenate([x["a"], x["b"]], axis=1)
    assert_same_dense_outputs(served.serve(x).numpy(), prediction, model, inputs)
