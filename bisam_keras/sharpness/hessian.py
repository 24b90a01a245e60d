"""The Hessian of the loss over the measured examples: top eigenvalues and trace.

```
H = d^2/dw^2 (1/n) sum_i A(f(x_i; w), y_i)      # A: the objective, at the current w
top-k eigenvalues:  power iteration or Lanczos on v -> H v   (see `krylov`)
trace (Hutchinson): tr(H) = E_z z^T H z,  z_j = +-1 with probability 1/2
```

Each product `H v` sums Hessian-vector products over the batches (one
compiled function, traced once), from the backend's autodiff (`autodiff`).
Random vectors come from NumPy's generator seeded by `seed`: the same on any
backend, and the same for two models of one architecture.

Reference: M. F. Hutchinson, "A Stochastic Estimator of the Trace of the
Influence Matrix for Laplacian Smoothing Splines", 1990; Z. Yao, A. Gholami,
K. Keutzer, M. Mahoney, "PyHessian: Neural Networks Through the Lens of the
Hessian", 2020, https://arxiv.org/abs/1912.07145
"""

import numpy as np

from bisam_keras.sharpness import checks, evaluation, krylov, objectives
from bisam_keras.sharpness import data as data_lib
from bisam_keras.sharpness.evaluation import Evaluator
from bisam_keras.sharpness.results import HessianEigenvalues, SharpnessResult, standard_error

METHODS = ("power", "lanczos")
"""The eigenvalue methods."""

_HVP_PASSES = 2
"""Forward and backward passes counted for one Hessian-vector product (see `results`)."""


def _setup(model, data, objective, batch_size, num_examples, seed, training):
    batch_size = checks.positive_int("batch_size", batch_size)
    training = checks.boolean("training", training)
    goal = objectives.get(objective, model)
    examples = data_lib.select(data, num_examples, seed)
    evaluator = evaluation.evaluator(model, objective, examples, training=training)
    batches = examples.batches(batch_size)
    total = examples.num_examples

    def matvec(flat):
        """`H v` over all the measured examples, on flat float64 vectors."""
        vectors = evaluator.unflatten(flat)
        product = None
        for x, y in batches:
            hv = Evaluator.flatten(evaluator.hvp(vectors, x, y)) * (len(y) / total)
            product = hv if product is None else product + hv
        return product

    size = sum(int(np.prod(v.shape)) for v in evaluator.variables)
    settings = {
        "objective": goal.name,
        **goal.config,
        "batch_size": batch_size,
        "num_examples": total,
        "seed": seed,
        "training": training,
    }
    return matvec, size, settings


def hessian_vector_product(
    model,
    data,
    vector,
    objective=None,
    batch_size=128,
    num_examples=None,
    seed=0,
    training=False,
):
    """The product `H v` of the Hessian of the loss over the measured examples with `vector`.

    Args:
        model: a built `keras.Model` (a `bk.SharpnessAwareModel` is unwrapped).
        data: a `tf.data.Dataset` of `(x, y)` batches, or a pair `(x, y)` of arrays.
        vector: one array per trainable weight, shaped like it.
        objective: as for `hessian_eigenvalues`. Defaults to `None`.
        batch_size: examples per pass. Defaults to `128`.
        num_examples: measure a fixed subset of this many examples, drawn by
            `seed`; `None` measures all. Defaults to `None`.
        seed: seeds the subset. Defaults to `0`.
        training: run the model in training mode. Defaults to `False`.

    Returns:
        A list of float64 arrays, one per trainable weight. Cost: 2 forward
        and 2 backward passes.
    """
    matvec, size, _ = _setup(model, data, objective, batch_size, num_examples, seed, training)
    shapes = [np.shape(t) for t in vector]
    flat = np.concatenate([np.asarray(t, np.float64).ravel() for t in vector])
    if flat.size != size:
        raise ValueError(
            f"`vector` must have one entry per trainable weight ({size} in all). "
            f"Received: {flat.size} entries in arrays of shapes {shapes}"
        )
    product = matvec(flat)
    pieces = np.split(product, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
    return [p.reshape(s) for p, s in zip(pieces, shapes)]


def hessian_eigenvalues(
    model,
    data,
    k=1,
    method="lanczos",
    iterations=20,
    objective=None,
    batch_size=128,
    num_examples=None,
    seed=0,
    training=False,
):
    """The top-`k` eigenvalues of the Hessian of the loss over the measured examples.

    Args:
        model: a built `keras.Model` (a `bk.SharpnessAwareModel` is unwrapped).
        data: a `tf.data.Dataset` of `(x, y)` batches, or a pair `(x, y)` of arrays.
        k: how many eigenvalues, `>= 1`. Defaults to `1`.
        method: `"lanczos"` (the `k` largest) or `"power"` (deflated power
            iteration: the `k` of largest magnitude, the same near a minimum,
            where `H` is positive semi-definite). Defaults to `"lanczos"`.
        iterations: Hessian-vector products: in all for Lanczos (`>= k`),
            per eigenvalue for power iteration. Defaults to `20`.
        objective: as for `worst_case` (not `"zero_one"`, whose Hessian is 0
            almost everywhere). Defaults to `None` (the compiled loss).
        batch_size: examples per pass. Defaults to `128`.
        num_examples: measure a fixed subset of this many examples, drawn by
            `seed`; `None` measures all. Defaults to `None`.
        seed: seeds the subset and the start vectors. Defaults to `0`.
        training: run the model in training mode (BatchNorm on batch
            statistics; the updates are dropped). Defaults to `False`.

    Returns:
        A `HessianEigenvalues`. Cost: `iterations` (Lanczos) or
        `k * iterations` (power) Hessian-vector products, 2 forward and 2
        backward passes each.
    """
    k = checks.positive_int("k", k)
    method = checks.choice("method", method, METHODS)
    iterations = checks.positive_int("iterations", iterations)
    if method == "lanczos" and iterations < k:
        raise ValueError(
            f"`iterations` must be >= k={k} for Lanczos. Received: iterations={iterations}"
        )
    if objective == "zero_one":
        raise ValueError(
            "`objective` must be differentiable twice; the 0-1 loss has a zero "
            f"Hessian almost everywhere. Received: objective={objective!r}"
        )
    matvec, size, settings = _setup(
        model, data, objective, batch_size, num_examples, seed, training
    )
    if method == "lanczos" and iterations > size:
        iterations = size  # the Krylov space cannot grow beyond the parameters
    rng = np.random.default_rng(seed)
    if method == "power":
        values, residuals = krylov.power_iteration(
            matvec, rng.standard_normal((k, size)), k, iterations
        )
        products = k * iterations
    else:
        values, residuals = krylov.lanczos(matvec, rng.standard_normal(size), k, iterations)
        products = iterations
    settings = {"k": k, "method": method, "iterations": iterations, **settings}
    return HessianEigenvalues(
        eigenvalues=tuple(values),
        residuals=tuple(float(r) for r in residuals),
        settings=settings,
        forward_passes=_HVP_PASSES * products,
        backward_passes=_HVP_PASSES * products,
    )


def hessian_trace(
    model,
    data,
    num_samples=10,
    objective=None,
    batch_size=128,
    num_examples=None,
    seed=0,
    training=False,
):
    """The trace of the Hessian of the loss, by Hutchinson's estimator with Rademacher probes.

    ```
    tr(H) ~ (1/S) sum_s z_s^T H z_s,   z_s in {-1, +1}^n uniformly
    ```

    Args:
        model: a built `keras.Model` (a `bk.SharpnessAwareModel` is unwrapped).
        data: a `tf.data.Dataset` of `(x, y)` batches, or a pair `(x, y)` of arrays.
        num_samples: probe vectors `S`, `>= 1`. Defaults to `10`.
        objective: as for `hessian_eigenvalues`. Defaults to `None`.
        batch_size: examples per pass. Defaults to `128`.
        num_examples: measure a fixed subset of this many examples, drawn by
            `seed`; `None` measures all. Defaults to `None`.
        seed: seeds the subset and the probes. Defaults to `0`.
        training: run the model in training mode. Defaults to `False`.

    Returns:
        A `SharpnessResult` named `"hessian_trace"`, with the standard error
        over the probes and each probe's `z^T H z` in `per_sample`. Cost:
        `num_samples` Hessian-vector products (2 forward and 2 backward passes each).
    """
    num_samples = checks.positive_int("num_samples", num_samples)
    matvec, size, settings = _setup(
        model, data, objective, batch_size, num_examples, seed, training
    )
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(num_samples):
        z = rng.choice(np.array([-1.0, 1.0]), size)
        samples.append(float(z @ matvec(z)))
    return SharpnessResult(
        name="hessian_trace",
        value=float(np.mean(samples)),
        standard_error=standard_error(samples),
        per_batch=(),
        per_sample=tuple(samples),
        reference=float("nan"),
        settings={"num_samples": num_samples, **settings},
        forward_passes=_HVP_PASSES * num_samples,
        backward_passes=_HVP_PASSES * num_samples,
    )
