"""Loss landscapes: the loss and the error rate on a 1-D or 2-D grid of weights.

```
L(a)    = V(w + a d_1)                 1-D
L(a, b) = V(w + a d_1 + b d_2)         2-D
filter normalization (per filter j of each weight W):  d_j <- d_j * ||W_j|| / ||d_j||
```

Directions are filter-normalized Gaussian draws (Li et al.) or given, e.g.
`direction_between(sgd_model, bisam_model)`, the line from one solution to
another. A filter is one output unit: the slice `W[..., j]` of a Keras kernel
(Dense `(in, out)`, Conv `(h, w, in, out)`). One compiled function evaluates
every grid point on a batch (`keras.ops.map`), traced once.

Reference: H. Li, Z. Xu, G. Taylor, C. Studer, T. Goldstein, "Visualizing the
Loss Landscape of Neural Nets", NeurIPS 2018, https://arxiv.org/abs/1712.09913
"""

import numbers

import numpy as np

from bisam_keras.sharpness import checks, evaluation, objectives
from bisam_keras.sharpness import data as data_lib
from bisam_keras.sharpness.evaluation import measured_model, weighted_mean, weights
from bisam_keras.sharpness.results import LossLandscape

NORMALIZATIONS = ("filter", "layer", "none")
"""How a random direction is scaled to the weights: per filter, per weight, or not at all."""


def normalize_direction(direction, weight, normalization="filter", ignore_1d=True):
    """One weight's direction, scaled to the weight (Li et al., Section 4).

    Args:
        direction: an array shaped like `weight`.
        weight: the weight's value.
        normalization: `"filter"` (each `d[..., j]` gets the norm of
            `weight[..., j]`), `"layer"` (`d` gets the norm of `weight`) or
            `"none"`. Defaults to `"filter"`.
        ignore_1d: a 1-D weight (a bias, BatchNorm's scale and offset) gets a
            zero direction, as in Li et al.'s default; with `False` its
            direction is the weight itself, as in their code. Defaults to `True`.

    Returns:
        A float64 array shaped like `weight`.
    """
    direction = np.asarray(direction, np.float64)
    weight = np.asarray(weight, np.float64)
    if weight.ndim <= 1 and normalization != "none":
        return np.zeros_like(weight) if ignore_1d else weight.copy()
    if normalization == "none":
        return direction
    axes = tuple(range(weight.ndim - 1)) if normalization == "filter" else None
    norm_w = np.sqrt(np.sum(weight**2, axis=axes, keepdims=axes is not None))
    norm_d = np.sqrt(np.sum(direction**2, axis=axes, keepdims=axes is not None))
    return direction * np.divide(norm_w, norm_d, out=np.zeros_like(norm_w), where=norm_d > 0)


def random_directions(model, count=2, normalization="filter", ignore_1d=True, seed=0):
    """`count` normalized Gaussian directions in the space of `model`'s trainable weights.

    Args:
        model: a built `keras.Model` (a `bk.SharpnessAwareModel` is unwrapped).
        count: how many directions. Defaults to `2`.
        normalization: see `normalize_direction`. Defaults to `"filter"`.
        ignore_1d: see `normalize_direction`. Defaults to `True`.
        seed: seeds NumPy's generator: two models of the same architecture
            get the same draws. Defaults to `0`.

    Returns:
        A list of `count` directions, each a list of float32 arrays, one per
        trainable weight.
    """
    count = checks.positive_int("count", count)
    normalization = checks.choice("normalization", normalization, NORMALIZATIONS)
    ignore_1d = checks.boolean("ignore_1d", ignore_1d)
    seed = checks.non_negative_int("seed", seed)
    rng = np.random.default_rng(seed)
    current = weights(model)
    return [
        [
            normalize_direction(rng.standard_normal(w.shape), w, normalization, ignore_1d).astype(
                np.float32
            )
            for w in current
        ]
        for _ in range(count)
    ]


def direction_between(source, target):
    """The direction `w_target - w_source` between two models of one architecture.

    On the grid of `loss_landscape(source, ..., directions=[d])`, coordinate 0
    is `source` and coordinate 1 is `target`.
    """
    a, b = weights(source), weights(target)
    if [w.shape for w in a] != [w.shape for w in b]:
        raise ValueError(
            "`source` and `target` must have trainable weights of the same shapes. "
            f"Received: {[w.shape for w in a]} and {[w.shape for w in b]}"
        )
    return [(t - s).astype(np.float32) for s, t in zip(a, b)]


def _axis(span, resolution):
    if isinstance(span, numbers.Real) and not isinstance(span, bool):
        low, high = -checks.positive_float("span", span), float(span)
    elif isinstance(span, (tuple, list)) and len(span) == 2 and float(span[0]) < float(span[1]):
        low, high = float(span[0]), float(span[1])
    else:
        raise ValueError(
            f"`span` must be a number > 0 or a pair (low, high) with low < high. Received: "
            f"span={span!r}"
        )
    return tuple(float(c) for c in np.linspace(low, high, resolution))


def loss_landscape(
    model,
    data,
    directions=None,
    dims=2,
    span=1.0,
    resolution=21,
    normalization="filter",
    ignore_1d=True,
    objective=None,
    batch_size=128,
    num_examples=None,
    seed=0,
    training=False,
):
    """The objective and the error rate on a grid `w + a d_1 (+ b d_2)`.

    Args:
        model: a built `keras.Model` (a `bk.SharpnessAwareModel` is unwrapped).
        data: a `tf.data.Dataset` of `(x, y)` batches, or a pair `(x, y)` of arrays.
        directions: 1 or 2 directions (each a list of arrays, one per
            trainable weight), e.g. from `direction_between`; `None` draws
            `dims` from `random_directions`. Defaults to `None`.
        dims: the number of random directions, 1 or 2 (ignored when
            `directions` is given). Defaults to `2`.
        span: the grid runs over `[-span, span]` along each direction, or
            over `[low, high]` for a pair. Defaults to `1.0`.
        resolution: grid points per direction, `>= 2` (odd puts `w` itself
            on the grid for a symmetric span). Defaults to `21`.
        normalization: for random directions, see `normalize_direction`.
            Defaults to `"filter"`.
        ignore_1d: for random directions, see `normalize_direction`.
            Defaults to `True`.
        objective: as for `worst_case`. Defaults to `None` (the compiled loss).
        batch_size: examples per pass. Defaults to `128`.
        num_examples: measure a fixed subset of this many examples, drawn by
            `seed`; `None` measures all. Defaults to `None`.
        seed: seeds the subset and the directions. Defaults to `0`.
        training: run the model in training mode (BatchNorm on batch
            statistics; the updates are dropped). Defaults to `False`.

    Returns:
        A `LossLandscape`. Cost: one forward pass per grid point
        (`resolution ** dims`), no backward pass.
    """
    resolution = checks.positive_int("resolution", resolution)
    if resolution < 2:
        raise ValueError(f"`resolution` must be >= 2. Received: resolution={resolution}")
    batch_size = checks.positive_int("batch_size", batch_size)
    training = checks.boolean("training", training)
    if directions is None:
        if dims not in (1, 2):
            raise ValueError(f"`dims` must be 1 or 2. Received: dims={dims!r}")
        directions = random_directions(model, dims, normalization, ignore_1d, seed)
        given = False
    else:
        shapes = [tuple(v.shape) for v in measured_model(model).trainable_variables]
        directions = [[np.asarray(t, np.float32) for t in d] for d in directions]
        if len(directions) not in (1, 2) or any([t.shape for t in d] != shapes for d in directions):
            raise ValueError(
                "`directions` must hold 1 or 2 directions, each a list of arrays shaped "
                f"like the trainable weights {shapes}. Received: "
                f"{[[t.shape for t in d] for d in directions]}"
            )
        given = True
    axes = [_axis(span, resolution) for _ in directions]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))

    goal = objectives.get(objective, model)
    examples = data_lib.select(data, num_examples, seed)
    evaluator = evaluation.evaluator(model, objective, examples, training=training)
    batches = examples.batches(batch_size)
    values = [evaluator.grid(grid, directions, x, y) for x, y in batches]
    mean = weighted_mean(values, [len(y) for _, y in batches])
    shape = tuple(len(a) for a in axes)
    settings = {
        "directions": "given" if given else "random",
        "span": span,
        "resolution": resolution,
        "normalization": None if given else normalization,
        "ignore_1d": None if given else ignore_1d,
        "objective": goal.name,
        **goal.config,
        "batch_size": batch_size,
        "num_examples": examples.num_examples,
        "seed": seed,
        "training": training,
    }
    return LossLandscape(
        coordinates=tuple(axes),
        loss=mean[:, 0].reshape(shape),
        error=mean[:, 1].reshape(shape),
        settings=settings,
        forward_passes=len(grid),
        backward_passes=0,
    )
