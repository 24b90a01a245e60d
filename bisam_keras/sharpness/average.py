"""Average-case sharpness: the mean rise of the objective under Gaussian noise.

```
S_avg(w) = E_{z ~ N(0, I)} V(w + sigma T z) - V(w)
T = 1  (adaptive=False)   or   diag(|w|) + eta  (adaptive=True)
```

estimated from `num_samples` draws `z_s`, seeded by `seed` with NumPy's
generator, so that two models of the same architecture get the same draws on
any backend. For a quadratic `V(w) = 1/2 (w - w*)^T A (w - w*)`, `S_avg =
sigma^2 tr(T A T) / 2` at any `w`.
"""

import numpy as np

from bisam_keras.sharpness import balls, checks, evaluation, objectives
from bisam_keras.sharpness import data as data_lib
from bisam_keras.sharpness.evaluation import weighted_mean, weights
from bisam_keras.sharpness.results import SharpnessResult, standard_error


def gaussian_perturbation(shapes, sigma, scale, rng):
    """`sigma * T z` with `z ~ N(0, I)` drawn from `rng`, as float32 arrays."""
    noise = [rng.standard_normal(shape) for shape in shapes]
    if scale is not None:
        noise = [n * s for n, s in zip(noise, scale)]
    return [(sigma * n).astype(np.float32) for n in noise]


def average_case(
    model,
    data,
    sigma=0.01,
    num_samples=10,
    adaptive=False,
    eta=0.0,
    objective=None,
    batch_size=128,
    num_examples=None,
    seed=0,
    training=False,
):
    """Average-case sharpness `E_z V(w + sigma T z) - V(w)`, `z ~ N(0, I)`, by Monte Carlo.

    Args:
        model: a built `keras.Model` (a `bk.SharpnessAwareModel` is unwrapped).
        data: a `tf.data.Dataset` of `(x, y)` batches, or a pair `(x, y)` of arrays.
        sigma: the standard deviation of the noise, `> 0`. Defaults to `0.01`.
        num_samples: the number of draws, `>= 1`. Defaults to `10`.
        adaptive: scale the noise element-wise by `|w| + eta`. Defaults to `False`.
        eta: the offset of the adaptive scale, `>= 0`. Defaults to `0.0`.
        objective: as for `worst_case`; `"zero_one"` reports the rise of the
            error rate. Defaults to `None` (the compiled loss).
        batch_size: examples per forward pass. Defaults to `128`.
        num_examples: measure a fixed subset of this many examples, drawn by
            `seed`; `None` measures all. Defaults to `None`.
        seed: seeds the subset and the draws. Defaults to `0`.
        training: run the model in training mode (BatchNorm on batch
            statistics; the updates are dropped). Defaults to `False`.

    Returns:
        A `SharpnessResult` whose `standard_error` is the Monte Carlo error
        over the draws (`per_sample`); `per_batch` holds each batch's mean
        rise. Cost: `num_samples + 1` forward passes, no backward pass.
    """
    sigma = checks.positive_float("sigma", sigma)
    num_samples = checks.positive_int("num_samples", num_samples)
    adaptive = checks.boolean("adaptive", adaptive)
    eta = checks.non_negative_float("eta", eta)
    batch_size = checks.positive_int("batch_size", batch_size)
    training = checks.boolean("training", training)
    goal = objectives.get(objective, model)
    examples = data_lib.select(data, num_examples, seed)
    evaluator = evaluation.evaluator(model, objective, examples, training=training)
    batches = examples.batches(batch_size)
    sizes = [len(y) for _, y in batches]
    zeros = evaluator.zeros()
    reference = np.asarray([evaluator.values(zeros, x, y)[0] for x, y in batches])
    shapes = [tuple(v.shape) for v in evaluator.variables]
    scale = balls.adaptive_scale(weights(model), eta) if adaptive else None
    rng = np.random.default_rng(seed)
    rises = np.empty((num_samples, len(batches)))
    for s in range(num_samples):
        delta = gaussian_perturbation(shapes, sigma, scale, rng)
        rises[s] = [evaluator.values(delta, x, y)[0] for x, y in batches] - reference
    per_sample = weighted_mean(rises.T, sizes)
    settings = {
        "sigma": sigma,
        "num_samples": num_samples,
        "adaptive": adaptive,
        "eta": eta,
        "objective": goal.name,
        **goal.config,
        "batch_size": batch_size,
        "num_examples": examples.num_examples,
        "seed": seed,
        "training": training,
    }
    return SharpnessResult(
        name="average_case",
        value=float(np.mean(per_sample)),
        standard_error=standard_error(per_sample),
        per_batch=tuple(float(v) for v in rises.mean(axis=0)),
        per_sample=tuple(float(v) for v in per_sample),
        reference=float(weighted_mean(reference, sizes)),
        settings=settings,
        forward_passes=num_samples + 1,
        backward_passes=0,
    )
