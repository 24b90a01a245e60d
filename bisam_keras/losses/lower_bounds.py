"""Differentiable lower bounds of the 0-1 loss (BiSAM, Eqs. 11-18).

For logits `f(x)` and label `y`, let `F_j = f_j(x) - f_y(x)` be the margin of
class `j` over the true class. Lemma 1 of the paper shows that for any lower
bound `phi` of the step function `{x > 0}` and any `mu > 0`:

```
Q_i = (1 / mu) * log(sum_j exp(mu * phi(F_ij))) - log(K) / mu  <=  1{argmax_j f_j(x_i) != y_i}
```

Two choices of `phi` are provided:

- `"tanh"`:   `phi(x) = tanh(alpha * x)` (Eq. 17).
- `"neglog"`: `phi(x) = 1 - log(1 + exp(gamma - x))`, `gamma = log(e - 1)` (Eq. 18),
  so that `phi(0) = 0` and `phi(x) -> 1` as `x -> inf`.

The functions here return the per-example values `Q_i`; the `keras.losses.Loss`
classes average them over the batch (Eq. 14), honouring sample weights.
Everything is computed in float32 inside one XLA-compiled function, whatever
the dtype of the predictions.

Reference: "Improving SAM Requires Rethinking its Optimization Formulation"
(BiSAM), Sections 3 and 4.
"""

import math
import numbers

import keras
import tensorflow as tf

NEGLOG_GAMMA = math.log(math.e - 1.0)
"""`gamma = log(e - 1)`, the shift that makes the -log bound pass through 0."""

DEFAULT_MU = {"neglog": 1.5, "tanh": 10.0}
"""The paper's CIFAR defaults for `mu` (Section 4.1)."""


def phi_tanh(x, alpha=0.1):
    """The tanh lower bound of the step function, `tanh(alpha * x)` (Eq. 17)."""
    return tf.tanh(alpha * x)


def phi_neglog(x):
    """The -log lower bound, `1 - log(1 + exp(gamma - x))` (Eq. 18)."""
    return 1.0 - tf.math.softplus(NEGLOG_GAMMA - x)


# Largest `gamma - F` kept in `exp(gamma - F)` on the half-integer path: a term
# clipped there weighs below e^-39 of the true-class term (mu >= 1/2), which
# float32 cannot see, and the exponential stays finite. The any-`mu` path clips
# nothing.
_MAX_EXPONENT = 80.0

# `mu` values whose power `(1 + t)**-mu` is computed with one reciprocal square
# root and products: the half-integers 1/2 ... 4, which include the paper's grid
# for the -log bound.
_HALF_INTEGER_MU = tuple(n / 2 for n in range(1, 9))

# Largest tanh `mu` computed without a max shift: `exp(mu * u)` with |u| <= 1
# then lies in [e^-40, e^40], and the true-class term is exp(0) = 1.
_TANH_UNSHIFTED_MAX_MU = 40.0


def _true_class_scores(scores, one_hot, bad):
    """`s_iy`, or NaN in every row where `bad` (an invalid input) holds.

    One pass over the scores: the validity check rides on the reduction that
    picks the true class's score, so a bad row's margins, `Q_i` and gradient
    are all NaN.
    """
    poison = tf.where(bad, tf.constant(float("nan")), tf.zeros_like(scores))
    return tf.reduce_sum(tf.where(one_hot > 0.0, scores, poison), axis=-1, keepdims=True)


def _nan_where_invalid(q, s_y):
    """`q`, NaN in the rows whose `s_y` is (a bad row's, see above)."""
    return tf.where(tf.math.is_finite(s_y[:, 0]), q, tf.constant(float("nan")))


def _row_sums(*columns):
    """`[sum_j c_ij for c in columns]` in one pass (one reduction of a stack)."""
    return [tf.reduce_sum(c, axis=-1) for c in columns]


def _power(a, n):
    """`a ** n` for a Python int `n >= 1`, by repeated squaring."""
    out, square = None, a
    while n:
        if n & 1:
            out = square if out is None else out * square
        n >>= 1
        if n:
            square = square * square
    return out


def _neglog_q(scores, one_hot, bad, mu, twice_mu):
    """`Q_i` for the -log bound, and its gradient, in closed form.

    With `t_j = exp(gamma - F_j)`, `phi(F_j) = 1 - log(1 + t_j)`, so
    `exp(mu * phi(F_j)) = e^mu * (1 + t_j)^-mu`, and with `a_j = (1 + t_j)^-1/2`:

    ```
    Q_i       = 1 + (1/mu) * log(mean_j a_j^(2 mu))
    dQ_i/dF_j = t_j * a_j^(2 mu + 2) / sum_j a_j^(2 mu)     (= p_j * phi'(F_j))
    ```

    No shift is needed: every term `a^(2 mu)` is at most 1, and the true
    class's (`F_y = 0`, `t_y = e - 1`) is `e^-mu`, so the sum neither
    overflows nor underflows. Per logit: one exponential and one reciprocal
    square root; the two row sums (of the terms and of the gradient, which
    the chain rule to `s_y` needs) share one pass. `twice_mu` is `2 * mu` when
    it is an integer in 1..8, else 0: `mu` is then handled in the log domain
    (`_neglog_q_any_mu`).
    """

    if not twice_mu:
        return _neglog_q_any_mu(scores, one_hot, bad, mu)

    @tf.custom_gradient
    def q_of(s):
        s_y = _true_class_scores(s, one_hot, bad)
        # sigmoid(F - gamma) = 1 / (1 + t) = (1 - tanh((gamma - F) / 2)) / 2. The
        # clip keeps a NaN-free path for huge margins; tanh is +-1 there anyway.
        z = tf.minimum(NEGLOG_GAMMA - (s - s_y), _MAX_EXPONENT)
        a2 = 0.5 - 0.5 * tf.tanh(0.5 * z)
        terms = _power(a2, twice_mu // 2) if twice_mu > 1 else None
        if twice_mu % 2:
            terms = tf.sqrt(a2) if terms is None else terms * tf.sqrt(a2)
        slopes = terms * (1.0 - a2)  # (1 + t)^-mu * phi'(F), phi'(F) = t / (1 + t)
        total, slope_sum = _row_sums(terms, slopes)
        num_classes = tf.cast(tf.shape(s)[-1], tf.float32)
        q = 1.0 + tf.math.log(total / num_classes) / mu

        def grad(upstream):
            scale = (upstream / total)[:, None]
            return scale * (slopes - one_hot * slope_sum[:, None])

        return _nan_where_invalid(q, s_y), grad

    return q_of(scores)


def _neglog_q_any_mu(scores, one_hot, bad, mu):
    """`_neglog_q` for any `mu`, in the log domain: `log r_j = sp_min - sp_j`.

    `sp_j = softplus(gamma - F_j) = log(1 + t_j)` is exact for any margin, so
    no term is clipped (for small `mu`, `r^mu` decays slowly). `expm1` and
    `log1p` keep `Q` exact where `1/mu` would magnify rounding; the shift by
    `sp_min` keeps any large `mu` from underflowing.
    """

    @tf.custom_gradient
    def q_of(s):
        s_y = _true_class_scores(s, one_hot, bad)
        sp = tf.math.softplus(NEGLOG_GAMMA - (s - s_y))
        sp_min = tf.reduce_min(sp, axis=-1, keepdims=True)
        terms_minus_one = tf.math.expm1(mu * (sp_min - sp))
        terms = terms_minus_one + 1.0
        slopes = terms * -tf.math.expm1(-sp)  # phi'(F) = t / (1 + t)
        total, sum_minus_one, slope_sum = _row_sums(terms, terms_minus_one, slopes)
        num_classes = tf.cast(tf.shape(s)[-1], tf.float32)
        q = 1.0 - sp_min[:, 0] + tf.math.log1p(sum_minus_one / num_classes) / mu

        def grad(upstream):
            scale = (upstream / total)[:, None]
            return scale * (slopes - one_hot * slope_sum[:, None])

        return _nan_where_invalid(q, s_y), grad

    return q_of(scores)


def _tanh_q(scores, one_hot, bad, mu, alpha, kernel):
    """`Q_i` for the tanh bound, and its gradient, in closed form.

    ```
    u_j = tanh(alpha * F_j),   e_j = exp(mu * (u_j - c))
    Q_i = c + (1/mu) * log(mean_j e_j)
    dQ_i/dF_j = (e_j / sum(e)) * alpha * (1 - u_j^2)
    ```

    `kernel` (static) picks the shift `c` and the form: 0 for `mu < 1`
    (`c = 0`; `e_j - 1 = expm1(...)` and `log1p` of the mean keep `Q` exact
    where `1/mu` would magnify rounding), 1 for `1 <= mu <= 40` (`c = 0`:
    `e_j` lies in [e^-40, e^40] and the true class's is 1, so no max pass is
    needed), 2 for `mu > 40` (`c = max_j u_j`).
    """

    @tf.custom_gradient
    def q_of(s):
        s_y = _true_class_scores(s, one_hot, bad)
        u = tf.tanh(alpha * (s - s_y))
        slope = alpha * (1.0 - u * u)
        num_classes = tf.cast(tf.shape(s)[-1], tf.float32)
        if kernel == 0:
            terms_minus_one = tf.math.expm1(mu * u)
            terms = terms_minus_one + 1.0
            total, sum_minus_one, slope_sum = _row_sums(terms, terms_minus_one, terms * slope)
            q = tf.math.log1p(sum_minus_one / num_classes) / mu
        else:
            shift = tf.reduce_max(u, axis=-1, keepdims=True) if kernel == 2 else 0.0
            terms = tf.exp(mu * (u - shift))
            total, slope_sum = _row_sums(terms, terms * slope)
            q = tf.math.log(total / num_classes) / mu
            if kernel == 2:
                q += shift[:, 0]

        def grad(upstream):
            scale = (upstream / total)[:, None]
            return scale * (terms * slope - one_hot * slope_sum[:, None])

        return _nan_where_invalid(q, s_y), grad

    return q_of(scores)


@tf.function(jit_compile=True)
def _lower_bound_xla(y_pred, labels, mu, alpha, bound, from_logits, fast_path):
    """`Q_i` for validated integer `labels`, compiled by XLA.

    `bound`, `from_logits` and `fast_path` are Python values (one trace each);
    `mu` and `alpha` are float32 scalars, so one kernel serves every value of
    them that shares a `fast_path` (`2 * mu` for a half-integer -log `mu`, else
    0; for tanh, see `_tanh_q`). Rows with a non-finite score, a probability
    outside [0, 1] or a label outside [0, K) give NaN: under XLA the eager
    checks are compiled away, and bad input must never turn into a
    plausible-looking number.
    """
    y_pred = tf.cast(y_pred, tf.float32)
    num_classes = tf.shape(y_pred)[-1]
    if from_logits:
        scores = y_pred
        bad = ~tf.math.is_finite(y_pred)
    else:
        bad = ~((y_pred >= 0.0) & (y_pred <= 1.0))
        scores = tf.math.log(tf.clip_by_value(y_pred, keras.config.epsilon(), 1.0))
    bad_label = (labels < 0) | (labels >= num_classes)
    # A bad label poisons its whole row (an out-of-range one_hot row is zero).
    bad |= bad_label[:, None]
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if bound == "neglog":
        return _neglog_q(scores, one_hot, bad, mu, fast_path)
    return _tanh_q(scores, one_hot, bad, mu, alpha, fast_path)


def _fast_path(bound, mu):
    """The static kernel choice for `mu` (see `_lower_bound_xla`)."""
    if bound == "neglog":
        return int(2 * mu) if mu in _HALF_INTEGER_MU else 0
    return 0 if mu < 1.0 else 1 if mu <= _TANH_UNSHIFTED_MAX_MU else 2


def _probability_checks(y_pred):
    """Eager checks that probabilities lie in [0, 1] (compiled away under XLA)."""
    p = tf.cast(y_pred, tf.float32)
    return [
        tf.debugging.assert_greater_equal(
            p, 0.0, message="`y_pred` holds a probability < 0 with from_logits=False."
        ),
        tf.debugging.assert_less_equal(
            p, 1.0, message="`y_pred` holds a probability > 1 with from_logits=False."
        ),
    ]


def _check_label_shape(labels, y_pred, y_true_shape):
    """A `ValueError` when the labels cannot be one per position of `y_pred`."""
    want = y_pred.shape[:-1]
    if labels.shape.rank is None or want.rank is None:
        return
    if labels.shape.rank != want.rank or not labels.shape[1:].is_compatible_with(want[1:]):
        raise ValueError(
            "`y_true` must hold one label per position of `y_pred`: integer labels of "
            f"shape {want.as_list()} (or with a last axis of 1), or one-hot labels of "
            f"shape {y_pred.shape.as_list()}. Received: y_true of shape "
            f"{y_true_shape.as_list()} for y_pred of shape {y_pred.shape.as_list()}"
        )


def _labels(y_true, y_pred, from_logits, ignore_class=None):
    """Integer labels, one per position of `y_pred` (shape `y_pred.shape[:-1]`).

    Integer labels have the shape of `y_pred` without its class axis (or with
    a class axis of 1); one-hot or soft labels have `y_pred`'s shape and give
    their argmax. Outside XLA, labels outside `[0, K)` (but for
    `ignore_class`) and probabilities outside `[0, 1]` raise.
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    true_rank, pred_rank = y_true.shape.rank, y_pred.shape.rank
    shape = y_true.shape
    if true_rank is not None and true_rank == pred_rank:
        if y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, axis=-1)
        else:
            y_true = tf.argmax(y_true, axis=-1)
    labels = tf.cast(y_true, tf.int32)
    _check_label_shape(labels, y_pred, shape)
    checked = labels
    if ignore_class is not None:
        checked = tf.where(tf.equal(labels, ignore_class), tf.zeros_like(labels), labels)
    num_classes = tf.shape(y_pred, out_type=tf.int32)[-1]
    checks = [
        tf.debugging.assert_non_negative(
            checked, message="`y_true` holds a label < 0; labels must be in [0, K)."
        ),
        tf.debugging.assert_less(
            checked,
            num_classes,
            message="`y_true` holds a label >= K, the number of classes of `y_pred`.",
        ),
    ]
    if not from_logits:
        checks += _probability_checks(y_pred)
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def _binary_scores(y_true, y_pred, from_logits):
    """Two-class scores `(0, z)` and labels for every entry of a binary output.

    Each entry `z` of `y_pred` is one binary classifier's logit (or, with
    `from_logits=False`, its probability `p`, whose log-probabilities
    `(log(1 - p), log p)` have the same margin `z`). Labels are `y_true > 1/2`:
    0/1 (or soft) labels as for `BinaryCrossentropy`, and -1/1 as for `Hinge`.
    Rows with a label outside `[-1, 1]` or a probability outside `[0, 1]`
    get NaN scores (and raise eagerly).

    Returns:
        `(scores, labels)`: float32 `(N, 2)` and int32 `(N,)`, `N` the number
        of entries of `y_pred`.
    """
    y_true = tf.cast(tf.convert_to_tensor(y_true), tf.float32)
    y_pred = tf.convert_to_tensor(y_pred)
    if y_true.shape.rank is not None and y_pred.shape.rank is not None:
        if y_true.shape.rank == y_pred.shape.rank - 1 and y_pred.shape[-1] == 1:
            y_true = y_true[..., None]
        if not y_true.shape.is_compatible_with(y_pred.shape):
            raise ValueError(
                "A binary output needs one label per score: `y_true` of the shape of "
                f"`y_pred`. Received: y_true of shape {y_true.shape.as_list()} for y_pred "
                f"of shape {y_pred.shape.as_list()}"
            )
    z = tf.reshape(tf.cast(y_pred, tf.float32), [-1])
    y = tf.reshape(y_true, [-1])
    bad_label = ~((y >= -1.0) & (y <= 1.0))
    checks = [
        tf.debugging.assert_equal(
            tf.reduce_any(bad_label),
            False,
            message="`y_true` holds a label outside [-1, 1] for a binary output (one score "
            "per example, or a binary loss): binary labels are 0/1 (or -1/1 for hinge).",
        )
    ]
    if from_logits:
        scores = tf.stack([tf.zeros_like(z), z], axis=-1)
        bad = bad_label
    else:
        checks += _probability_checks(z)
        eps = keras.config.epsilon()
        scores = tf.stack(
            [
                tf.math.log(tf.clip_by_value(1.0 - z, eps, 1.0)),
                tf.math.log(tf.clip_by_value(z, eps, 1.0)),
            ],
            axis=-1,
        )
        bad = bad_label | ~((z >= 0.0) & (z <= 1.0))
    scores = tf.where(bad[:, None], tf.constant(float("nan")), scores)
    with tf.control_dependencies(checks):
        labels = tf.identity(tf.cast(y > 0.5, tf.int32))
    return scores, labels


def _check_positive(name, value):
    """`value` as a float, or a ValueError naming `name` unless finite and > 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def lower_bound(
    y_true,
    y_pred,
    bound="neglog",
    mu=None,
    alpha=0.1,
    from_logits=True,
    binary=False,
    ignore_class=None,
):
    """Lower bound `Q_i` of the 0-1 loss at every position, for either `phi`.

    The class axis is the last one; every other axis is a position: an
    example `(batch, K)`, a token `(batch, T, K)`, a pixel `(batch, H, W, K)`.
    Positions are independent (the bound of each is computed alone).

    A binary output, one score per position (`K = 1`, or `binary=True` for
    several independent binary scores as with `BinaryCrossentropy`), is the
    two-class problem with logits `(0, z)`, so that `Q` is exact for it.

    Args:
        y_true: integer labels of shape `y_pred.shape[:-1]` (or with a last
            axis of 1), or one-hot (or soft) labels of `y_pred`'s shape, whose
            argmax is the class. For a binary output: 0/1 (or soft, or -1/1)
            labels of `y_pred`'s shape; a label counts as 1 above 1/2.
        y_pred: logits (or probabilities, see `from_logits`) of shape
            `(batch, ..., K)`.
        bound: `"neglog"` (Eq. 18) or `"tanh"` (Eq. 17). Defaults to `"neglog"`.
        mu: the log-sum-exp temperature `mu > 0`. Defaults to `1.5` for neglog
            and `10.0` for tanh (the paper's CIFAR values).
        alpha: the slope of the tanh bound, `alpha > 0`. Defaults to `0.1`.
        from_logits: whether `y_pred` holds logits. With `False`, `y_pred`
            holds probabilities (softmax, or sigmoid for a binary output) and
            the margins are `log p_j - log p_y`, equal to the logit margins.
            Defaults to `True`.
        binary: treat every entry of `y_pred` as the score of its own binary
            classifier (Keras' `BinaryCrossentropy` convention) and average
            the entries' bounds over the last axis, as that loss does. A last
            axis of size 1 is always binary. Defaults to `False`.
        ignore_class: a label value whose positions get `Q_i = 0` and no
            gradient (Keras' `SparseCategoricalCrossentropy(ignore_class=...)`),
            or `None`. Defaults to `None`.

    Returns:
        A float32 tensor of shape `y_pred.shape[:-1]` with
        `Q_i <= 1{misclassified_i}`.
    """
    if bound not in DEFAULT_MU:
        raise ValueError(f"`bound` must be one of {sorted(DEFAULT_MU)}. Received: bound={bound!r}")
    mu = DEFAULT_MU[bound] if mu is None else _check_positive("mu", mu)
    alpha = _check_positive("alpha", alpha)
    for name, value in (("from_logits", from_logits), ("binary", binary)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be a bool. Received: {name}={value!r}")
    if ignore_class is not None and (
        not isinstance(ignore_class, numbers.Integral) or isinstance(ignore_class, bool)
    ):
        raise ValueError(
            f"`ignore_class` must be None or an int. Received: ignore_class={ignore_class!r}"
        )
    y_pred = tf.convert_to_tensor(y_pred)
    if y_pred.shape.rank is not None and y_pred.shape.rank < 2:
        raise ValueError(
            "`y_pred` must have a class axis: shape (batch, ..., K), K = 1 for a binary "
            f"output. Received: y_pred of shape {y_pred.shape.as_list()}"
        )
    binary = binary or y_pred.shape[-1] == 1
    if binary:
        if ignore_class is not None:
            raise ValueError(
                "`ignore_class` applies to integer class labels, not to a binary output. "
                f"Received: ignore_class={ignore_class!r} for y_pred of shape "
                f"{y_pred.shape.as_list()}"
            )
        scores, labels = _binary_scores(y_true, y_pred, from_logits)
        shape, from_logits, valid = tf.shape(y_pred), True, None
    else:
        labels = _labels(y_true, y_pred, from_logits, ignore_class)
        shape = tf.shape(labels)
        scores = tf.reshape(y_pred, tf.stack([-1, tf.shape(y_pred)[-1]]))
        labels = tf.reshape(labels, [-1])
        valid = None
        if ignore_class is not None:
            valid = tf.not_equal(labels, ignore_class)
            labels = tf.where(valid, labels, tf.zeros_like(labels))
    q = _lower_bound_xla(
        scores,
        labels,
        tf.constant(mu, tf.float32),
        tf.constant(alpha, tf.float32),
        bound,
        from_logits,
        _fast_path(bound, mu),
    )
    if valid is not None:
        q = tf.where(valid, q, tf.zeros_like(q))
    q = tf.reshape(q, shape)
    if binary:
        q = tf.reduce_mean(q, axis=-1)
    return q


def neglog_lower_bound(y_true, y_pred, mu=1.5, from_logits=True):
    """Per-example BiSAM (-log) lower bound of the 0-1 loss (Eqs. 14 and 18).

    ```
    phi(x) = 1 - log(1 + exp(gamma - x)),   gamma = log(e - 1)
    Q_i = (1 / mu) * log(sum_j exp(mu * phi(f_j(x_i) - f_{y_i}(x_i)))) - log(K) / mu
    ```

    Args:
        y_true: integer labels `(batch,)`/`(batch, 1)` or one-hot `(batch, K)`.
        y_pred: logits `(batch, K)`, or probabilities with `from_logits=False`.
        mu: the log-sum-exp temperature, `> 0`. Defaults to `1.5`.
        from_logits: whether `y_pred` holds logits. Defaults to `True`.

    Returns:
        A float32 tensor of shape `(batch,)`; its mean is `Q` of Eq. (14).

    Example:

    >>> q = neglog_lower_bound([0, 1], [[2.0, 0.0], [2.0, 0.0]])
    >>> bool(q[0] <= 0.0) and bool(q[1] <= 1.0)
    True
    """
    return lower_bound(y_true, y_pred, "neglog", mu=mu, from_logits=from_logits)


def tanh_lower_bound(y_true, y_pred, mu=10.0, alpha=0.1, from_logits=True):
    """Per-example BiSAM (tanh) lower bound of the 0-1 loss (Eqs. 14 and 17).

    ```
    phi(x) = tanh(alpha * x)
    Q_i = (1 / mu) * log(sum_j exp(mu * phi(f_j(x_i) - f_{y_i}(x_i)))) - log(K) / mu
    ```

    Args:
        y_true: integer labels `(batch,)`/`(batch, 1)` or one-hot `(batch, K)`.
        y_pred: logits `(batch, K)`, or probabilities with `from_logits=False`.
        mu: the log-sum-exp temperature, `> 0`. Defaults to `10.0`.
        alpha: the slope of `tanh`, `> 0`. Defaults to `0.1`.
        from_logits: whether `y_pred` holds logits. Defaults to `True`.

    Returns:
        A float32 tensor of shape `(batch,)`; its mean is `Q` of Eq. (14).
    """
    return lower_bound(y_true, y_pred, "tanh", mu=mu, alpha=alpha, from_logits=from_logits)
