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
# clipped there weighs below e^-39 of the largest one (mu >= 1/2), which float32
# cannot see, and the exponential stays finite. The any-`mu` path clips nothing.
_MAX_EXPONENT = 80.0

# `mu` values whose power `r**mu` is computed with square roots and products:
# the half-integers 1/2 ... 4, which include the paper's grid for the -log bound.
_HALF_INTEGER_MU = tuple(n / 2 for n in range(1, 9))


def _margins(scores, one_hot):
    """`F_ij = s_ij - s_iy`: the margin of every class over the true one."""
    return scores - tf.reduce_sum(scores * one_hot, axis=-1, keepdims=True)


def _half_integer_power(r, twice_mu):
    """`r ** (twice_mu / 2)` with one square root and products (exact for r=1)."""
    whole, half = divmod(twice_mu, 2)
    out = tf.sqrt(r) if half else None
    for _ in range(whole):
        out = r if out is None else out * r
    return out


def _chain_to_scores(grad_margins, one_hot):
    """dQ/ds from dQ/dF, since `F_ij = s_ij - s_iy`."""
    return grad_margins - one_hot * tf.reduce_sum(grad_margins, axis=-1, keepdims=True)


def _neglog_q(scores, one_hot, mu, twice_mu):
    """`Q_i` for the -log bound, and its gradient, in closed form.

    With `t_j = exp(gamma - F_j)`, `phi(F_j) = 1 - log(1 + t_j)` and so
    `exp(mu * phi(F_j)) = e^mu * (1 + t_j)^-mu`. Scaling every term by the
    largest one (the smallest `t`, `t_min`) gives ratios `r_j in (0, 1]`:

    ```
    r_j = (1 + t_min) / (1 + t_j)
    Q_i = phi(F_max) + (1/mu) * log(mean_j r_j^mu)
    dQ_i/dF_j = p_j * phi'(F_j),  p = r^mu / sum(r^mu),  phi'(F_j) = t_j / (1 + t_j)
    ```

    One exponential per logit (plus a square root for half-integer `mu`)
    where the textbook form needs three transcendentals forward and two more
    backward; the gradient reuses the forward values. `twice_mu` is `2 * mu`
    when it is an integer in 1..8 (the power is then a square root and
    products), else 0: `r^mu - 1 = expm1(mu * log r)`, and `log1p` of the
    mean keeps `Q` exact for small `mu`.
    """

    if not twice_mu:
        return _neglog_q_any_mu(scores, one_hot, mu)

    @tf.custom_gradient
    def q_of(s):
        # Clipping `gamma - F` at 80 changes only terms below e^-40 (mu >= 1/2)
        # of the largest one: they vanish in float32 either way.
        t = tf.exp(tf.minimum(NEGLOG_GAMMA - _margins(s, one_hot), _MAX_EXPONENT))
        t_min = tf.reduce_min(t, axis=-1, keepdims=True)
        r = (1.0 + t_min) / (1.0 + t)
        terms = _half_integer_power(r, twice_mu)
        total = tf.reduce_sum(terms, axis=-1)
        num_classes = tf.cast(tf.shape(s)[-1], tf.float32)
        q = 1.0 - tf.math.log1p(t_min[:, 0]) + tf.math.log(total / num_classes) / mu

        def grad(upstream):
            # phi'(F_j) = t_j / (1 + t_j) = t_j * r_j / (1 + t_min): no new division.
            scale = upstream / (total * (1.0 + t_min[:, 0]))
            return _chain_to_scores(scale[:, None] * terms * (t * r), one_hot)

        return q, grad

    return q_of(scores)


def _neglog_q_any_mu(scores, one_hot, mu):
    """`_neglog_q` for any `mu`, in the log domain: `log r_j = sp_min - sp_j`.

    `sp_j = softplus(gamma - F_j) = log(1 + t_j)` is exact for any margin, so
    no term is clipped (for small `mu`, `r^mu` decays slowly). `expm1` and
    `log1p` keep `Q` exact where `1/mu` would magnify rounding.
    """

    @tf.custom_gradient
    def q_of(s):
        sp = tf.math.softplus(NEGLOG_GAMMA - _margins(s, one_hot))
        sp_min = tf.reduce_min(sp, axis=-1, keepdims=True)
        terms_minus_one = tf.math.expm1(mu * (sp_min - sp))
        terms = terms_minus_one + 1.0
        total = tf.reduce_sum(terms, axis=-1)
        q = 1.0 - sp_min[:, 0] + tf.math.log1p(tf.reduce_mean(terms_minus_one, axis=-1)) / mu

        def grad(upstream):
            dphi = -tf.math.expm1(-sp)  # t / (1 + t)
            return _chain_to_scores((upstream / total)[:, None] * terms * dphi, one_hot)

        return q, grad

    return q_of(scores)


def _tanh_q(scores, one_hot, mu, alpha, precise):
    """`Q_i` for the tanh bound, and its gradient, in closed form.

    ```
    u_j = tanh(alpha * F_j),   e_j = exp(mu * (u_j - max_j u_j))
    Q_i = max_j u_j + (1/mu) * log(mean_j e_j)
    dQ_i/dF_j = (e_j / sum(e)) * alpha * (1 - u_j^2)
    ```

    With `precise` (for `mu < 1`), `e_j - 1 = expm1(...)` and `log1p` of the
    mean keep `Q` exact where `1/mu` would magnify rounding.
    """

    @tf.custom_gradient
    def q_of(s):
        u = tf.tanh(alpha * _margins(s, one_hot))
        u_max = tf.reduce_max(u, axis=-1, keepdims=True)
        if precise:
            terms_minus_one = tf.math.expm1(mu * (u - u_max))
            terms = terms_minus_one + 1.0
            total = tf.reduce_sum(terms, axis=-1)
            mean_log = tf.math.log1p(tf.reduce_mean(terms_minus_one, axis=-1))
        else:
            terms = tf.exp(mu * (u - u_max))
            total = tf.reduce_sum(terms, axis=-1)
            mean_log = tf.math.log(total / tf.cast(tf.shape(s)[-1], tf.float32))
        q = u_max[:, 0] + mean_log / mu

        def grad(upstream):
            scale = upstream / total
            return _chain_to_scores(scale[:, None] * terms * (alpha * (1.0 - u * u)), one_hot)

        return q, grad

    return q_of(scores)


@tf.function(jit_compile=True)
def _lower_bound_xla(y_pred, labels, mu, alpha, bound, from_logits, fast_path):
    """`Q_i` for validated integer `labels`, compiled by XLA.

    `bound`, `from_logits` and `fast_path` are Python values (one trace each);
    `mu` and `alpha` are float32 scalars, so one kernel serves every value of
    them that shares a `fast_path` (`2 * mu` for a half-integer -log `mu`, else
    0; for tanh, whether `mu >= 1`). Rows with a non-finite score, a
    probability outside [0, 1] or a label outside [0, K) give NaN: under XLA
    the eager checks are compiled away, and bad input must never turn into a
    plausible-looking number.
    """
    y_pred = tf.cast(y_pred, tf.float32)
    num_classes = tf.shape(y_pred)[-1]
    if from_logits:
        scores = y_pred
        valid = tf.reduce_all(tf.math.is_finite(y_pred), axis=-1)
    else:
        valid = tf.reduce_all((y_pred >= 0.0) & (y_pred <= 1.0), axis=-1)
        scores = tf.math.log(tf.clip_by_value(y_pred, keras.config.epsilon(), 1.0))
    valid &= (labels >= 0) & (labels < num_classes)
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if bound == "neglog":
        q = _neglog_q(scores, one_hot, mu, fast_path)
    else:
        q = _tanh_q(scores, one_hot, mu, alpha, precise=not fast_path)
    return tf.where(valid, q, tf.constant(float("nan")))


def _fast_path(bound, mu):
    """The static kernel choice for `mu` (see `_lower_bound_xla`)."""
    if bound == "neglog":
        return int(2 * mu) if mu in _HALF_INTEGER_MU else 0
    return int(mu >= 1.0)


def _labels(y_true, y_pred, from_logits):
    """Integer labels from `y_true`, checked (outside XLA) against `y_pred`."""
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    true_rank, pred_rank = y_true.shape.rank, y_pred.shape.rank
    if true_rank is not None and true_rank == pred_rank:
        if y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, axis=-1)
        else:
            y_true = tf.argmax(y_true, axis=-1)
    labels = tf.cast(y_true, tf.int32)
    num_classes = tf.shape(y_pred, out_type=tf.int32)[-1]
    checks = [
        tf.debugging.assert_non_negative(
            labels, message="`y_true` holds a label < 0; labels must be in [0, K)."
        ),
        tf.debugging.assert_less(
            labels,
            num_classes,
            message="`y_true` holds a label >= K, the number of classes of `y_pred`.",
        ),
    ]
    if not from_logits:
        checks += [
            tf.debugging.assert_greater_equal(
                tf.cast(y_pred, tf.float32),
                0.0,
                message="`y_pred` holds a probability < 0 with from_logits=False.",
            ),
            tf.debugging.assert_less_equal(
                tf.cast(y_pred, tf.float32),
                1.0,
                message="`y_pred` holds a probability > 1 with from_logits=False.",
            ),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(labels)


def _check_positive(name, value):
    """`value` as a float, or a ValueError naming `name` unless finite and > 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}")
    return float(value)


def lower_bound(y_true, y_pred, bound="neglog", mu=None, alpha=0.1, from_logits=True):
    """Per-example lower bound `Q_i` of the 0-1 loss, for either `phi`.

    Args:
        y_true: integer labels of shape `(batch,)` or `(batch, 1)`, or one-hot
            (or soft) labels of shape `(batch, K)`, whose argmax is the class.
        y_pred: logits (or probabilities, see `from_logits`) of shape `(batch, K)`.
        bound: `"neglog"` (Eq. 18) or `"tanh"` (Eq. 17). Defaults to `"neglog"`.
        mu: the log-sum-exp temperature `mu > 0`. Defaults to `1.5` for neglog
            and `10.0` for tanh (the paper's CIFAR values).
        alpha: the slope of the tanh bound, `alpha > 0`. Defaults to `0.1`.
        from_logits: whether `y_pred` holds logits. With `False`, `y_pred`
            holds probabilities and the margins are `log p_j - log p_y`, equal
            to the logit margins. Defaults to `True`.

    Returns:
        A float32 tensor of shape `(batch,)` with `Q_i <= 1{misclassified_i}`.
    """
    if bound not in DEFAULT_MU:
        raise ValueError(f"`bound` must be one of {sorted(DEFAULT_MU)}. Received: bound={bound!r}")
    mu = DEFAULT_MU[bound] if mu is None else _check_positive("mu", mu)
    alpha = _check_positive("alpha", alpha)
    if not isinstance(from_logits, bool):
        raise ValueError(f"`from_logits` must be a bool. Received: from_logits={from_logits!r}")
    labels = _labels(y_true, y_pred, from_logits)
    return _lower_bound_xla(
        y_pred,
        labels,
        tf.constant(mu, tf.float32),
        tf.constant(alpha, tf.float32),
        bound,
        from_logits,
        _fast_path(bound, mu),
    )


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
