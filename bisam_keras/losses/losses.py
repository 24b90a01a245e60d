"""`keras.losses.Loss` classes for the BiSAM lower bounds (Eq. 14)."""

import numbers

import keras
from keras import ops

from bisam_keras.losses import lower_bounds


class _LowerBoundLoss(keras.losses.Loss):
    """Mean of a per-position lower bound over the batch, with sample weights.

    `call` gives `Q` at every position (`y_pred.shape[:-1]`); Keras' `Loss`
    reduces it as it reduces a per-position cross-entropy, broadcasting
    `sample_weight` over the positions. With `ignore_class`, the mean runs
    over the positions whose label is not `ignore_class`, as in Keras'
    `SparseCategoricalCrossentropy(ignore_class=...)`.
    """

    bound = None

    def __init__(
        self,
        mu,
        alpha,
        from_logits,
        binary=False,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # Validate now rather than at the first call.
        lower_bounds._check_positive("mu", mu)
        lower_bounds._check_positive("alpha", alpha)
        for arg, value in (("from_logits", from_logits), ("binary", binary)):
            if not isinstance(value, bool):
                raise ValueError(f"`{arg}` must be a bool. Received: {arg}={value!r}")
        if ignore_class is not None and (
            not isinstance(ignore_class, numbers.Integral) or isinstance(ignore_class, bool)
        ):
            raise ValueError(
                f"`ignore_class` must be None or an int. Received: ignore_class={ignore_class!r}"
            )
        if binary and ignore_class is not None:
            raise ValueError(
                "`ignore_class` applies to integer class labels, not to binary outputs. "
                f"Received: ignore_class={ignore_class!r} with binary=True"
            )
        self.mu = float(mu)
        self.alpha = float(alpha)
        self.from_logits = from_logits
        self.binary = binary
        self.ignore_class = None if ignore_class is None else int(ignore_class)

    def call(self, y_true, y_pred):
        return lower_bounds.lower_bound(
            y_true,
            y_pred,
            self.bound,
            mu=self.mu,
            alpha=self.alpha,
            from_logits=self.from_logits,
            binary=self.binary,
            ignore_class=self.ignore_class,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        if self.ignore_class is None:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        valid = ops.cast(self._valid(y_true, y_pred), "float32")
        weights = valid
        if sample_weight is not None:
            weights = valid * _broadcast_weights(sample_weight, valid)
        if self.reduction in ("sum_over_batch_size", "mean"):
            size = ops.cast(ops.size(valid), "float32")
            weights = weights * ops.divide_no_nan(size, ops.sum(valid))
        return super().__call__(y_true, y_pred, sample_weight=weights)

    def _valid(self, y_true, y_pred):
        """Whether each position's label is not `ignore_class` (`y_pred.shape[:-1]`)."""
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape):
            if y_true.shape[-1] == 1:
                y_true = ops.squeeze(y_true, axis=-1)
            else:
                y_true = ops.argmax(y_true, axis=-1)
        return ops.not_equal(ops.cast(y_true, "int32"), self.ignore_class)

    def per_example(self, y_true, y_pred):
        """`Q` per example: the mean over each example's (valid) positions, `(batch,)`."""
        values = self.call(y_true, y_pred)
        if len(values.shape) == 1:
            return values
        axes = tuple(range(1, len(values.shape)))
        if self.ignore_class is None:
            return ops.mean(values, axis=axes)
        valid = ops.cast(self._valid(y_true, y_pred), values.dtype)
        return ops.divide_no_nan(ops.sum(values, axis=axes), ops.sum(valid, axis=axes))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mu": self.mu,
                "from_logits": self.from_logits,
                "binary": self.binary,
                "ignore_class": self.ignore_class,
            }
        )
        return config


def _broadcast_weights(sample_weight, values):
    """`sample_weight` broadcast to `values`' shape, with Keras' rank rules."""
    weights = ops.cast(ops.convert_to_tensor(sample_weight), values.dtype)
    while len(weights.shape) < len(values.shape):
        weights = ops.expand_dims(weights, -1)
    if len(weights.shape) == len(values.shape) + 1 and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, axis=-1)
    return ops.broadcast_to(weights, ops.shape(values))


@keras.saving.register_keras_serializable(package="bisam_keras")
class NegLogLowerBound(_LowerBoundLoss):
    """BiSAM (-log) lower bound of the 0-1 loss, averaged over the batch.

    ```
    phi(x) = 1 - log(1 + exp(gamma - x)),   gamma = log(e - 1)
    Q = mean_i (1 / mu) * log(sum_j exp(mu * phi(f_j(x_i) - f_{y_i}(x_i)))) - log(K) / mu
    ```

    `Q` never exceeds the batch's 0-1 loss (Lemma 1). It is the objective that
    `bk.BiSAM(lower_bound="neglog")` maximises to find the perturbation.

    Args:
        mu: the log-sum-exp temperature, `> 0`. Defaults to `1.5`.
        from_logits: whether `y_pred` holds logits (else probabilities).
            Defaults to `True`.
        binary: treat every entry of `y_pred` as one binary classifier's
            score, the two-class problem with logits `(0, z)` (Keras'
            `BinaryCrossentropy` convention; a last axis of 1 is always
            binary). Defaults to `False`.
        ignore_class: a label whose positions are left out of the bound and
            its mean, as in `SparseCategoricalCrossentropy`, or `None`.
            Defaults to `None`.
        reduction: a Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: optional name. Defaults to `"neglog_lower_bound"`.
        dtype: the loss's dtype. Defaults to `None` (`keras.config.floatx()`).

    Example:

    >>> loss = NegLogLowerBound(mu=1.5)
    >>> value = loss([0, 1], [[3.0, -1.0], [0.5, 0.2]])
    """

    bound = "neglog"

    def __init__(
        self,
        mu=1.5,
        from_logits=True,
        binary=False,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="neglog_lower_bound",
        dtype=None,
    ):
        super().__init__(
            mu,
            0.1,
            from_logits,
            binary=binary,
            ignore_class=ignore_class,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )


@keras.saving.register_keras_serializable(package="bisam_keras")
class TanhLowerBound(_LowerBoundLoss):
    """BiSAM (tanh) lower bound of the 0-1 loss, averaged over the batch.

    ```
    phi(x) = tanh(alpha * x)
    Q = mean_i (1 / mu) * log(sum_j exp(mu * phi(f_j(x_i) - f_{y_i}(x_i)))) - log(K) / mu
    ```

    Args:
        mu: the log-sum-exp temperature, `> 0`. Defaults to `10.0`.
        alpha: the slope of `tanh`, `> 0`. Defaults to `0.1`.
        from_logits: whether `y_pred` holds logits (else probabilities).
            Defaults to `True`.
        binary: treat every entry of `y_pred` as one binary classifier's
            score, the two-class problem with logits `(0, z)` (Keras'
            `BinaryCrossentropy` convention; a last axis of 1 is always
            binary). Defaults to `False`.
        ignore_class: a label whose positions are left out of the bound and
            its mean, as in `SparseCategoricalCrossentropy`, or `None`.
            Defaults to `None`.
        reduction: a Keras loss reduction. Defaults to `"sum_over_batch_size"`.
        name: optional name. Defaults to `"tanh_lower_bound"`.
        dtype: the loss's dtype. Defaults to `None` (`keras.config.floatx()`).
    """

    bound = "tanh"

    def __init__(
        self,
        mu=10.0,
        alpha=0.1,
        from_logits=True,
        binary=False,
        ignore_class=None,
        reduction="sum_over_batch_size",
        name="tanh_lower_bound",
        dtype=None,
    ):
        super().__init__(
            mu,
            alpha,
            from_logits,
            binary=binary,
            ignore_class=ignore_class,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
