"""The perturbation balls of worst-case sharpness, as small pure functions.

A perturbation is a list of tensors, one per trainable variable; norms are
global (over all of them, as one vector). The ascent runs in `u`, with
`delta = T u` and `||u|| <= rho`:

```
l2 ball:       ||u||_2 <= rho      step  u <- P(u + step_size * g_u / ||g_u||_2)
l-inf ball:    ||u||_inf <= rho    step  u <- P(u + step_size * sign(g_u))
plain:         T = 1
adaptive:      T = diag(|w|) + eta     (ASAM; Andriushchenko et al., 2023)
```

`g_u = T g` is the gradient with respect to `u` of the objective at
`w + T u`, and `P` projects back onto the ball.

References: J. Kwon, J. Kim, H. Park, I. K. Choi, "ASAM: Adaptive
Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
Networks", ICML 2021, https://arxiv.org/abs/2102.11600; M. Andriushchenko,
F. Croce, M. Mueller, M. Hein, N. Flammarion, "A Modern Look at the
Relationship between Sharpness and Generalization", ICML 2023,
https://arxiv.org/abs/2302.07011
"""

import numpy as np
from keras import ops

BALLS = ("l2", "linf")
"""The norms of the perturbation ball."""


def global_norm(tensors):
    """The Euclidean norm of all `tensors` taken as one vector."""
    return ops.sqrt(sum(ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors))


def ascent_direction(gradients, ball):
    """The steepest-ascent direction of unit norm in `ball`'s norm (0 for a zero gradient)."""
    if ball == "linf":
        return [ops.sign(g) for g in gradients]
    norm = global_norm(gradients)
    return [ops.divide_no_nan(g, norm) for g in gradients]


def project(u, ball, rho):
    """The closest point to `u` in the `ball` of radius `rho`."""
    if ball == "linf":
        return [ops.clip(t, -rho, rho) for t in u]
    scale = ops.minimum(1.0, ops.divide_no_nan(rho, global_norm(u)))
    return [t * scale for t in u]


def ascent_step(u, gradients, ball, rho, step_size):
    """One projected gradient-ascent step in `u`."""
    direction = ascent_direction(gradients, ball)
    return project([t + step_size * d for t, d in zip(u, direction)], ball, rho)


def random_point(shapes, ball, rho, rng):
    """A point drawn uniformly from the `ball` of radius `rho`, as float32 arrays.

    The l2 ball: a Gaussian direction, radius `rho * U^(1/n)`; the l-inf ball:
    each entry uniform in `[-rho, rho]`.
    """
    sizes = [int(np.prod(shape)) for shape in shapes]
    if ball == "linf":
        flat = rng.uniform(-rho, rho, sum(sizes))
    else:
        flat = rng.standard_normal(sum(sizes))
        flat *= rho * rng.uniform() ** (1.0 / flat.size) / np.linalg.norm(flat)
    pieces = np.split(flat, np.cumsum(sizes)[:-1])
    return [p.reshape(shape).astype(np.float32) for p, shape in zip(pieces, shapes)]


def adaptive_scale(weights, eta):
    """ASAM's `T = |w| + eta`, element-wise, as float32 arrays."""
    return [(np.abs(w) + eta).astype(np.float32) for w in weights]
