"""Worst-case sharpness, by projected gradient ascent in a ball around `w`.

```
S_max(w) = max_{||u|| <= rho} V(w + T u) - V(w)
u_0 = 0 (or a uniform draw from the ball)
u_{t+1} = P(u_t + step_size * dir(T grad A(w + T u_t)))     # see `balls`
value   = max(V(w), V(w + T u_1), ..., V(w + T u_steps)) - V(w)   >= 0
```

`A` is the objective the ascent follows and `V` the one reported (the same
but for the 0-1 loss, whose ascent follows a BiSAM lower bound and whose
reported value is the error rate). The best iterate is kept, and `u = 0` is
one of the candidates, so the value is never below 0.

With `m=None` one perturbation serves all the measured examples (its gradient
sums over the batches). With `m`, the examples are split into batches of `m`,
each with its own ascent, and the values are averaged: m-sharpness, what SAM
minimises (Foret et al., 2021; Andriushchenko and Flammarion, "Towards
Understanding Sharpness-Aware Minimization", ICML 2022,
https://arxiv.org/abs/2206.06232).
"""

import numpy as np

from bisam_keras.sharpness import balls, checks, evaluation, objectives
from bisam_keras.sharpness import data as data_lib
from bisam_keras.sharpness.evaluation import weighted_mean, weights
from bisam_keras.sharpness.results import SharpnessResult, standard_error


def _ascend(evaluator, batches, u, scale, ball, rho, step_size, steps, start_value):
    """The ascent on one group of batches: `(per-batch values at w, at the best iterate)`.

    `start_value` holds the per-batch values at `w` when `u` starts away from 0.
    """
    sizes = [len(y) for _, y in batches]
    reference = start_value
    best = None

    def perturbation(u):
        return u if scale is None else [t * s for t, s in zip(u, scale)]

    for _ in range(steps):
        delta = perturbation(u)
        gradient, values = None, []
        for (x, y), size in zip(batches, sizes):
            _, reported, grads = evaluator.gradient(delta, x, y)
            values.append(reported[0])
            weight = size / sum(sizes)
            grads = [g * weight for g in grads]
            gradient = grads if gradient is None else [a + b for a, b in zip(gradient, grads)]
        if reference is None:
            reference = best = np.asarray(values)
        elif best is None or weighted_mean(values, sizes) > weighted_mean(best, sizes):
            best = np.asarray(values)
        if scale is not None:
            gradient = [g * s for g, s in zip(gradient, scale)]
        u = balls.ascent_step(u, gradient, ball, rho, step_size)
    values = np.asarray([evaluator.values(perturbation(u), x, y)[0] for x, y in batches])
    if best is None or weighted_mean(values, sizes) > weighted_mean(best, sizes):
        best = values
    if weighted_mean(best, sizes) < weighted_mean(reference, sizes):
        best = reference  # u = 0 is a candidate too
    return reference, best


def worst_case(
    model,
    data,
    rho=0.05,
    ball="l2",
    adaptive=False,
    eta=0.0,
    steps=10,
    step_size=None,
    random_start=False,
    m=None,
    objective=None,
    batch_size=128,
    num_examples=None,
    seed=0,
    training=False,
):
    """Worst-case sharpness `max_{||u|| <= rho} V(w + T u) - V(w)`, by projected ascent.

    ```
    T = 1 (adaptive=False)  or  diag(|w|) + eta (adaptive=True)
    u <- P(u + step_size * dir(T grad A(w + T u)))    # dir: g/||g||_2 (l2), sign(g) (linf)
    ```

    Args:
        model: a built `keras.Model`; a `bk.SharpnessAwareModel` is measured
            through its inner model's weights.
        data: a `tf.data.Dataset` of `(x, y)` batches, or a pair `(x, y)` of arrays.
        rho: the radius of the ball, `> 0`. Defaults to `0.05`.
        ball: `"l2"` or `"linf"`. Defaults to `"l2"`.
        adaptive: scale the ball element-wise by `|w| + eta` (ASAM's
            scale-invariant ball). Defaults to `False`.
        eta: the offset of the adaptive scale, `>= 0`. Defaults to `0.0`.
        steps: ascent steps, `>= 1`. Defaults to `10`.
        step_size: the length of one step (in `u`, in the ball's norm);
            `None` means `2.5 * rho / steps` (Madry et al., 2018). Defaults to `None`.
        random_start: start from a uniform draw from the ball (seeded by
            `seed`) instead of `u = 0`; at a stationary point, where the
            gradient is 0, the ascent cannot leave `u = 0` otherwise.
            Defaults to `False`.
        m: m-sharpness: one ascent per batch of `m` examples, averaged.
            `None`: one ascent over all the measured examples. Defaults to `None`.
        objective: `None` (the compiled loss), `"cross_entropy"`,
            `"neglog"`, `"tanh"`, `"zero_one"` (the ascent follows the -log
            bound, the error rate is reported), a
            `bk.sharpness.objectives.Objective`, a `keras.losses.Loss` or a
            callable `(y_true, y_pred) -> loss`. Defaults to `None`.
        batch_size: examples per forward pass (ignored when `m` is set).
            Defaults to `128`.
        num_examples: measure a fixed subset of this many examples, drawn by
            `seed`; `None` measures all. Defaults to `None`.
        seed: seeds the subset and the random start. Defaults to `0`.
        training: run the model in training mode (BatchNorm on batch
            statistics; the statistics updates are dropped). Defaults to `False`.

    Returns:
        A `SharpnessResult`; `per_batch` holds each batch's sharpness (with
        `m`, each batch's own ascent). Cost: `steps + 1` forward passes
        (`steps + 2` with `random_start`) and `steps` backward passes.

    Example:

    ```python
    result = bk.sharpness.worst_case(model, (x_test, y_test), rho=0.05, objective="zero_one")
    result.value  # the rise of the error rate in the ball, >= 0
    ```
    """
    rho = checks.positive_float("rho", rho)
    ball = checks.choice("ball", ball, balls.BALLS)
    adaptive = checks.boolean("adaptive", adaptive)
    eta = checks.non_negative_float("eta", eta)
    steps = checks.positive_int("steps", steps)
    step_size = 2.5 * rho / steps if step_size is None else step_size
    step_size = checks.positive_float("step_size", step_size)
    random_start = checks.boolean("random_start", random_start)
    m = checks.optional_positive_int("m", m)
    batch_size = checks.positive_int("batch_size", batch_size)
    training = checks.boolean("training", training)
    goal = objectives.get(objective, model)
    examples = data_lib.select(data, num_examples, seed)
    evaluator = evaluation.evaluator(model, objective, examples, training=training)

    batches = examples.batches(m if m is not None else batch_size)
    groups = [[b] for b in batches] if m is not None else [batches]
    shapes = [tuple(v.shape) for v in evaluator.variables]
    scale = balls.adaptive_scale(weights(model), eta) if adaptive else None
    rng = np.random.default_rng(seed)
    references, bests, gains = [], [], []
    for group in groups:
        start = None
        u = evaluator.zeros()
        if random_start:
            u = balls.random_point(shapes, ball, rho, rng)
            start = np.asarray([evaluator.values(evaluator.zeros(), x, y)[0] for x, y in group])
        reference, best = _ascend(evaluator, group, u, scale, ball, rho, step_size, steps, start)
        references.extend(reference)
        bests.extend(best)
        group_sizes = [len(y) for _, y in group]
        # >= 0 exactly: `best` was kept only where its mean is not below the reference's.
        gains.append(weighted_mean(best, group_sizes) - weighted_mean(reference, group_sizes))
    sizes = [len(y) for _, y in batches]
    group_weights = [sum(len(y) for _, y in g) / examples.num_examples for g in groups]
    per_batch = np.asarray(bests) - np.asarray(references)
    settings = {
        "rho": rho,
        "ball": ball,
        "adaptive": adaptive,
        "eta": eta,
        "steps": steps,
        "step_size": step_size,
        "random_start": random_start,
        "m": m,
        "objective": goal.name,
        **goal.config,
        "batch_size": batch_size,
        "num_examples": examples.num_examples,
        "seed": seed,
        "training": training,
    }
    return SharpnessResult(
        name="worst_case",
        value=float(np.dot(group_weights, gains)),
        standard_error=standard_error(per_batch),
        per_batch=tuple(float(v) for v in per_batch),
        per_sample=(),
        reference=float(weighted_mean(references, sizes)),
        settings=settings,
        forward_passes=steps + 1 + int(random_start),
        backward_passes=steps,
    )
