"""SAM: Sharpness-Aware Minimization (Foret et al., 2021), and its variants.

Foret, Kleiner, Mobahi, Neyshabur. "Sharpness-Aware Minimization for
Efficiently Improving Generalization". ICLR 2021. https://arxiv.org/abs/2010.01412

```
g_asc = grad_w L(w)                  # L: the model's compiled loss
e     = rho * g_asc / ||g_asc||_2    # climb to the local maximum "w + e"
g     = grad_w L(w + e)              # descent gradient at the perturbed point
w     = inner_optimizer.apply(g, w)  # update the unperturbed weights
```
"""

import keras

from bisam_keras.optimizers.sharpness_aware_optimizer import SharpnessAwareOptimizer


@keras.saving.register_keras_serializable(package="bisam_keras")
class SAM(SharpnessAwareOptimizer):
    """Sharpness-Aware Minimization, whose ascent step uses the compiled loss.

    Use it with `bisam_keras.SharpnessAwareModel` (or a model that mixes in
    `bisam_keras.SharpnessAwareMixin`): the model runs the two passes, this
    wrapper holds the configuration and applies the descent gradients with
    `inner_optimizer` at the unperturbed weights.

    ```
    e = rho * g / ||g||_2                                 # SAM
    e = rho * T^2 g / ||T g||_2,  T = diag(|w|) + eta     # ASAM (adaptive=True)
    e = mask * e / beta, mask ~ Bernoulli(beta)           # ESAM SWP (swp_probability=beta)
    descent on the top ceil(gamma * b) examples by        # ESAM SDS (sds_fraction=gamma)
        L_i(w + e) - L_i(w)
    one perturbation per micro-batch of size m, descent   # mSAM (micro_batch_size=m)
        gradients averaged
    ```

    Args:
        inner_optimizer: the `keras.optimizers.Optimizer` that applies the
            descent gradients (its learning rate, schedule, weight decay,
            clipping and gradient accumulation all apply).
        rho: the neighbourhood radius, `>= 0`. `rho=0` is the inner
            optimizer alone (the ascent pass is skipped). Defaults to `0.05`.
        adaptive: ASAM's scale-invariant neighbourhood. Defaults to `False`.
        eta: ASAM's offset in `T = |w| + eta`, `>= 0`. Defaults to `0.0`.
        swp_probability: ESAM's stochastic weight perturbation: the
            probability `beta` in (0, 1] that an entry is perturbed.
            Defaults to `1.0` (all entries).
        sds_fraction: ESAM's sharpness-sensitive data selection: the
            fraction `gamma` in (0, 1] of the batch used for the descent
            gradient. Defaults to `1.0` (the whole batch).
        micro_batch_size: mSAM's micro-batch size `m`, which must divide the
            batch size; `None` perturbs with the whole batch. Defaults to `None`.
        sync_perturbation: under `tf.distribute`, all-reduce the ascent
            gradient so every replica perturbs by the global batch's `e` (one
            extra all-reduce a step). By default each replica perturbs with
            its own batch, like mSAM with `m` = the per-replica batch.
            Defaults to `False`.
        seed: seed of the stochastic weight perturbation. Defaults to `None`
            (a random seed, saved in the config).
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
        optimizer=bk.SAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    ```
    """

    def __init__(
        self,
        inner_optimizer,
        rho=0.05,
        adaptive=False,
        eta=0.0,
        swp_probability=1.0,
        sds_fraction=1.0,
        micro_batch_size=None,
        sync_perturbation=False,
        seed=None,
        weight_decay=0.0,
        name="sam",
        **kwargs,
    ):
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
