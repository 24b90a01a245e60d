"""BiSAM: bilevel sharpness-aware minimization, and its variants.

"Improving SAM Requires Rethinking its Optimization Formulation" (BiSAM),
Algorithm 1. The perturbation maximises a lower bound `Q` of the 0-1 loss
(Lemma 1) instead of the cross-entropy; the descent step is SAM's:

```
g_asc = grad_w Q(w)                  # Q: the lower bound of Eq. (14)
e     = rho * g_asc / ||g_asc||_2    # climb the lower bound of the 0-1 loss
g     = grad_w L(w + e)              # L: the model's compiled loss
w     = inner_optimizer.apply(g, w)
```
"""

import inspect

import keras

from bisam_keras.losses import lower_bounds
from bisam_keras.losses.classification import describe_loss, loss_name
from bisam_keras.losses.losses import NegLogLowerBound, TanhLowerBound
from bisam_keras.optimizers.sharpness_aware_optimizer import (
    SharpnessAwareOptimizer,
    _check_number,
)


@keras.saving.register_keras_serializable(package="bisam_keras")
class BiSAM(SharpnessAwareOptimizer):
    """Bilevel SAM: the perturbation climbs a lower bound of the 0-1 loss.

    ```
    phi(x) = 1 - log(1 + exp(gamma - x)), gamma = log(e - 1)     # "neglog" (Eq. 18)
    phi(x) = tanh(alpha * x)                                     # "tanh"   (Eq. 17)
    Q(w)   = mean_i (1/mu) log sum_j exp(mu phi(f_j(x_i) - f_{y_i}(x_i))) - log(K)/mu
    e      = rho * grad Q / ||grad Q||_2
    w      = inner_optimizer step with grad_w L(w + e)
    ```

    The variants of `bisam_keras.SAM` compose the same way: `adaptive=True`
    is A-BiSAM (Algorithm 2), `swp_probability`/`sds_fraction` give E-BiSAM
    (Algorithm 3) and `micro_batch_size` gives mSAM-style BiSAM.

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` that applies the
            descent gradients.
        rho: the neighbourhood radius, `>= 0`. Defaults to `0.05`.
        lower_bound: `"neglog"`, `"tanh"`, or for research any
            `keras.losses.Loss` or callable `(y_true, y_pred) -> scalar` to
            maximise instead. Defaults to `"neglog"`.
        mu: the log-sum-exp temperature, `> 0`. Defaults to `None`: `1.5`
            for neglog and `10.0` for tanh.
        alpha: the slope of the tanh bound, `> 0`. Defaults to `0.1`.
        from_logits: whether the model's outputs are logits (`True`) or
            probabilities (`False`), for the bound. Defaults to `None`: read
            from the compiled loss of each output (`from_logits` of
            `SparseCategoricalCrossentropy`, `BinaryCrossentropy`, ...), and
            an error where the loss does not tell (a custom loss function).
            Set it to use a custom classification loss; it may not contradict
            a compiled Keras loss.
        adaptive: A-BiSAM's scale-invariant neighbourhood. Defaults to `False`.
        eta: A-BiSAM's offset in `T = |w| + eta`. Defaults to `0.0`.
        swp_probability: E-BiSAM's stochastic weight perturbation
            probability `beta` in (0, 1]. Defaults to `1.0`.
        sds_fraction: E-BiSAM's data-selection fraction `gamma` in (0, 1];
            the sharpness of an example is `Q_i(w + e) - Q_i(w)`. Defaults to `1.0`.
        micro_batch_size: the micro-batch size `m` of mSAM. Defaults to `None`.
        sync_perturbation: under `tf.distribute`, all-reduce the ascent
            gradient so every replica perturbs by the global batch's `e` (one
            extra all-reduce a step). By default each replica perturbs with
            its own batch, like mSAM with `m` = the per-replica batch.
            Defaults to `False`.
        seed: seed of the stochastic weight perturbation. Defaults to `None`.
        weight_decay: coupled decay at the unperturbed weights, `>= 0`: adds
            `weight_decay * w` to the descent gradient before the inner
            optimizer, so it runs through momentum (PyTorch's
            `SGD(weight_decay=...)` in the paper's code). An L2 regularizer in
            the loss would add `weight_decay * (w + e)` instead. Every
            trainable variable is decayed unless excluded with
            `exclude_from_weight_decay()`. Defaults to `0.0`.
        name: the optimizer's name.

    Example:

    ```python
    model = bk.SharpnessAwareModel(inner_model)
    model.compile(
        optimizer=bk.BiSAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05,
                           lower_bound="neglog", mu=1.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_ds, validation_data=val_ds, epochs=200)
    ```
    """

    def __init__(
        self,
        inner_optimizer,
        rho=0.05,
        lower_bound="neglog",
        mu=None,
        alpha=0.1,
        from_logits=None,
        adaptive=False,
        eta=0.0,
        swp_probability=1.0,
        sds_fraction=1.0,
        micro_batch_size=None,
        sync_perturbation=False,
        seed=None,
        weight_decay=0.0,
        name="bisam",
        **kwargs,
    ):
        if isinstance(lower_bound, str):
            if lower_bound not in lower_bounds.DEFAULT_MU:
                raise ValueError(
                    "`lower_bound` must be 'neglog', 'tanh', a keras.losses.Loss or a "
                    f"callable. Received: lower_bound={lower_bound!r}"
                )
            mu = lower_bounds.DEFAULT_MU[lower_bound] if mu is None else mu
            mu = _check_number("mu", mu, 0.0, low_open=True)
            alpha = _check_number("alpha", alpha, 0.0, low_open=True)
        elif callable(lower_bound):
            if from_logits is not None:
                raise ValueError(
                    "`from_logits` only applies to lower_bound='neglog' or 'tanh'; a custom "
                    "lower bound reads the outputs itself. Received: "
                    f"from_logits={from_logits!r} with lower_bound={lower_bound!r}"
                )
            if mu is not None:
                raise ValueError(
                    "`mu` only applies to lower_bound='neglog' or 'tanh'; configure a "
                    f"custom lower bound itself. Received: mu={mu!r} with "
                    f"lower_bound={lower_bound!r}"
                )
        else:
            raise ValueError(
                "`lower_bound` must be 'neglog', 'tanh', a keras.losses.Loss or a "
                f"callable. Received: lower_bound={lower_bound!r}"
            )
        if from_logits is not None and not isinstance(from_logits, bool):
            raise ValueError(
                f"`from_logits` must be None or a bool. Received: from_logits={from_logits!r}"
            )
        super().__init__(
            inner_optimizer,
            rho=rho,
            adaptive=adaptive,
            eta=eta,
            swp_probability=swp_probability,
            sds_fraction=sds_fraction,
            micro_batch_size=micro_batch_size,
            sync_perturbation=sync_perturbation,
            seed=seed,
            weight_decay=weight_decay,
            name=name,
            **kwargs,
        )
        self.lower_bound = lower_bound
        self.mu = mu
        self.alpha = alpha
        self.from_logits = from_logits
        if lower_bound == "neglog":
            self._ascent_objective = NegLogLowerBound(mu=mu, from_logits=from_logits is not False)
        elif lower_bound == "tanh":
            self._ascent_objective = TanhLowerBound(
                mu=mu, alpha=alpha, from_logits=from_logits is not False
            )
        else:
            self._ascent_objective = lower_bound

    def output_objective(self, loss, output=None):
        """The lower bound `Q` of one model output compiled with `loss`.

        The bound follows the loss: categorical or binary, logits or
        probabilities, `ignore_class`, and the loss's reduction.

        Args:
            loss: the output's compiled loss (object, function or name), or
                `None` for a model compiled without one.
            output: the output's name, for messages. Defaults to `None`.

        Returns:
            A `NegLogLowerBound` or `TanhLowerBound`, or `None` for a custom
            `lower_bound` (`ascent_loss` is then the objective).

        Raises:
            ValueError: for a regression loss, and for a loss that does not
                tell logits from probabilities when `from_logits` is `None`.
        """
        if not isinstance(self.lower_bound, str):
            return None
        kind = describe_loss(loss) if loss is not None else None
        where = "" if output is None else f" {output!r}"
        name = "no loss" if loss is None else loss_name(loss)
        if kind is not None and kind.kind == "regression":
            raise ValueError(
                "BiSAM's perturbation climbs a lower bound of the 0-1 loss, which needs "
                f"class scores, and the output{where} is compiled with the regression loss "
                f"{name}. Use `bisam_keras.SAM`, whose ascent follows the compiled loss "
                "whatever it is, or give BiSAM the objective to climb, "
                f"`BiSAM(lower_bound=<a loss>)`. Received: loss={name}"
            )
        from_logits = None if kind is None else kind.from_logits
        if self.from_logits is not None:
            if from_logits is not None and from_logits != self.from_logits:
                raise ValueError(
                    f"`from_logits`={self.from_logits} contradicts the loss of the "
                    f"output{where}, {name}, which has from_logits={from_logits}. "
                    f"Received: from_logits={self.from_logits}, loss={name}"
                )
            from_logits = self.from_logits
        if from_logits is None:
            raise ValueError(
                f"BiSAM cannot tell from the loss of the output{where} whether it holds "
                "logits or probabilities: compile with a Keras classification loss "
                "(`SparseCategoricalCrossentropy(from_logits=...)`, "
                "`BinaryCrossentropy(...)`, ...), or pass `BiSAM(from_logits=True)` (or "
                "False) if the output holds class scores, or "
                f"`BiSAM(lower_bound=<a loss>)`. Received: loss={name}"
            )
        reduction = getattr(loss, "reduction", None) if kind is not None else None
        if reduction in (None, "none") or not isinstance(loss, keras.losses.Loss):
            reduction = "sum_over_batch_size"
        options = {
            "mu": self.mu,
            "from_logits": from_logits,
            "binary": kind is not None and kind.kind == "binary",
            "ignore_class": None if kind is None else kind.ignore_class,
            "reduction": reduction,
        }
        if self.lower_bound == "neglog":
            return NegLogLowerBound(**options)
        return TanhLowerBound(alpha=self.alpha, **options)

    def ascent_loss(self, y_true, y_pred, sample_weight=None):
        """`Q` of one `(batch, ..., K)` output, or the custom lower bound.

        Called on its own, the built-in bound reads `y_pred` as logits unless
        `from_logits=False`; inside `fit` the model uses `output_objective`,
        which follows each output's compiled loss.
        """
        objective = self._ascent_objective
        if isinstance(objective, keras.losses.Loss) or (
            "sample_weight" in inspect.signature(objective).parameters
        ):
            return objective(y_true, y_pred, sample_weight=sample_weight)
        return objective(y_true, y_pred)

    def ascent_losses_per_example(self, y_true, y_pred):
        """Per-example `Q_i` (or the custom objective's unreduced values)."""
        objective = self._ascent_objective
        if hasattr(objective, "per_example"):
            return objective.per_example(y_true, y_pred)
        if isinstance(objective, keras.losses.Loss):
            return objective.call(y_true, y_pred)
        return objective(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        lower_bound = self.lower_bound
        if not isinstance(lower_bound, str):
            lower_bound = keras.saving.serialize_keras_object(lower_bound)
        config.update(
            {
                "lower_bound": lower_bound,
                "mu": self.mu,
                "alpha": self.alpha,
                "from_logits": self.from_logits,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if not isinstance(config.get("lower_bound", "neglog"), str):
            config["lower_bound"] = keras.saving.deserialize_keras_object(
                config["lower_bound"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)
