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
        if lower_bound == "neglog":
            self._ascent_objective = NegLogLowerBound(mu=mu)
        elif lower_bound == "tanh":
            self._ascent_objective = TanhLowerBound(mu=mu, alpha=alpha)
        else:
            self._ascent_objective = lower_bound

    def ascent_loss(self, y_true, y_pred, sample_weight=None):
        """`Q`: the batch mean of the lower bound, with sample weights."""
        objective = self._ascent_objective
        if isinstance(objective, keras.losses.Loss) or (
            "sample_weight" in inspect.signature(objective).parameters
        ):
            return objective(y_true, y_pred, sample_weight=sample_weight)
        return objective(y_true, y_pred)

    def ascent_losses_per_example(self, y_true, y_pred):
        """Per-example `Q_i` (or the custom objective's unreduced values)."""
        objective = self._ascent_objective
        if isinstance(objective, keras.losses.Loss):
            return objective.call(y_true, y_pred)
        return objective(y_true, y_pred)

    def get_config(self):
        config = super().get_config()
        lower_bound = self.lower_bound
        if not isinstance(lower_bound, str):
            lower_bound = keras.saving.serialize_keras_object(lower_bound)
        config.update({"lower_bound": lower_bound, "mu": self.mu, "alpha": self.alpha})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if not isinstance(config.get("lower_bound", "neglog"), str):
            config["lower_bound"] = keras.saving.deserialize_keras_object(
                config["lower_bound"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)
