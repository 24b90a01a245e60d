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


@tf.function(jit_compile=True)
def _lower_bound_xla(y_pred, labels, mu, alpha, bound, from_logits):
    """`Q_i` for validated integer `labels`, compiled by XLA.

    `bound` and `from_logits` are Python values (one trace each); `mu` and
    `alpha` are float32 scalars, so one kernel serves every value of them.
    Rows with a non-finite score, a probability outside [0, 1] or a label
    outside [0, K) give NaN: under XLA the eager checks are compiled away, and
    bad input must never turn into a plausible-looking number.
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
    margins = scores - tf.reduce_sum(scores * one_hot, axis=-1, keepdims=True)
    phi = phi_neglog(margins) if bound == "neglog" else phi_tanh(margins, alpha)
    # (1/mu) * (logsumexp(z) - log K) written as (m + log(mean(exp(z - m)))) / mu,
    # with m = max(z) and log1p/expm1, so that it stays exact for small mu and
    # is exactly 0 (not a rounding error above it) for a row with all z = 0.
    z = mu * phi
    # The value does not depend on m, so m needs no gradient.
    m = tf.stop_gradient(tf.reduce_max(z, axis=-1))
    q = (m + tf.math.log1p(tf.reduce_mean(tf.math.expm1(z - m[..., None]), axis=-1))) / mu
    return tf.where(valid, q, tf.constant(float("nan")))


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
