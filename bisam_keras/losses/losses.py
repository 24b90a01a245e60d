"""`keras.losses.Loss` classes for the BiSAM lower bounds (Eq. 14)."""

import keras

from bisam_keras.losses import lower_bounds


class _LowerBoundLoss(keras.losses.Loss):
    """Mean of a per-example lower bound over the batch, with sample weights."""

    bound = None

    def __init__(
        self,
        mu,
        alpha,
        from_logits,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # Validate now rather than at the first call.
        lower_bounds._check_positive("mu", mu)
        lower_bounds._check_positive("alpha", alpha)
        if not isinstance(from_logits, bool):
            raise ValueError(f"`from_logits` must be a bool. Received: from_logits={from_logits!r}")
        self.mu = float(mu)
        self.alpha = float(alpha)
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        return lower_bounds.lower_bound(
            y_true,
            y_pred,
            self.bound,
            mu=self.mu,
            alpha=self.alpha,
            from_logits=self.from_logits,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"mu": self.mu, "from_logits": self.from_logits})
        return config


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
        reduction="sum_over_batch_size",
        name="neglog_lower_bound",
        dtype=None,
    ):
        super().__init__(mu, 0.1, from_logits, reduction=reduction, name=name, dtype=dtype)


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
        reduction="sum_over_batch_size",
        name="tanh_lower_bound",
        dtype=None,
    ):
        super().__init__(mu, alpha, from_logits, reduction=reduction, name=name, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config
