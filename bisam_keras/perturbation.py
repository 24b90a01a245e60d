"""The maths of the sharpness-aware ascent step, as small pure functions.

Given the ascent gradient `g = grad_w A(w)` of the ascent objective `A`
(the cross-entropy for SAM, the lower bound `Q` for BiSAM), the perturbation
is the first-order maximiser of `A(w + e)` over a ball of radius `rho`:

```
SAM / BiSAM (Algorithm 1):   e = rho * g / ||g||_2
ASAM / A-BiSAM (Algorithm 2): e = rho * T^2 g / ||T g||_2,  T = diag(|w|) + eta
SWP (Algorithm 3):           e = mask * e / beta,  mask_i ~ Bernoulli(beta)
```

Norms are global: one norm over all trainable variables. A zero gradient
gives a zero perturbation (never NaN).
"""

import math

import tensorflow as tf


def global_norm(tensors):
    """The Euclidean norm of all `tensors` taken as one vector, in float32."""
    squares = [tf.reduce_sum(tf.square(tf.cast(t, tf.float32))) for t in tensors]
    return tf.sqrt(tf.add_n(squares))


def adaptive_scale(variables, eta):
    """ASAM's `T_w = |w| + eta`, element-wise, for each variable."""
    return [tf.abs(tf.cast(v, tf.float32)) + eta for v in variables]


def perturbation(gradients, variables, rho, adaptive=False, eta=0.0):
    """The ascent perturbation `e` for each trainable variable.

    Args:
        gradients: the ascent gradients, one per variable (none may be `None`).
        variables: the variables' current values (used by `adaptive`).
        rho: the radius of the neighbourhood, a float >= 0.
        adaptive: whether to use ASAM's scale-invariant ball. Defaults to `False`.
        eta: ASAM's offset in `T_w = |w| + eta`. Defaults to `0.0`.

    Returns:
        A list of float32 tensors shaped like `gradients`.
    """
    gradients = [tf.cast(g, tf.float32) for g in gradients]
    if adaptive:
        scales = adaptive_scale(variables, eta)
        scaled = [t * g for t, g in zip(scales, gradients)]
        factor = tf.math.divide_no_nan(tf.constant(rho, tf.float32), global_norm(scaled))
        return [factor * t * tg for t, tg in zip(scales, scaled)]
    factor = tf.math.divide_no_nan(tf.constant(rho, tf.float32), global_norm(gradients))
    return [factor * g for g in gradients]


def stochastic_weight_mask(perturbations, probability, seed):
    """ESAM's stochastic weight perturbation: keep each entry with `probability`.

    Kept entries are divided by `probability`, so the mask is unbiased:
    `E[mask(e)] = e`. (The paper's Algorithm 3 writes `1 / (1 - beta)`, which
    coincides at its `beta = 0.5` and would divide by zero at `beta = 1`.)

    Args:
        perturbations: the perturbation tensors.
        probability: `beta` in (0, 1].
        seed: an int32 tensor of shape `(2,)` for `tf.random.stateless_uniform`.

    Returns:
        The masked perturbations.
    """
    if probability >= 1.0:
        return list(perturbations)
    masked = []
    for index, e in enumerate(perturbations):
        variable_seed = tf.random.experimental.stateless_fold_in(seed, index)
        keep = tf.random.stateless_uniform(tf.shape(e), variable_seed) < probability
        masked.append(tf.where(keep, e / probability, tf.zeros_like(e)))
    return masked


def top_k_indices(scores, fraction):
    """Indices of the `ceil(fraction * n)` largest `scores`, static-shape friendly.

    Used by ESAM's sharpness-sensitive data selection. With a static batch
    size the number kept is a Python int, so the result has a static shape
    under XLA.
    """
    size = scores.shape[0]
    if size is not None:
        k = max(1, math.ceil(round(fraction * size, 6)))
    else:
        n = tf.cast(tf.shape(scores)[0], tf.float32)
        k = tf.maximum(1, tf.cast(tf.math.ceil(fraction * n), tf.int32))
    return tf.math.top_k(scores, k=k, sorted=False).indices
