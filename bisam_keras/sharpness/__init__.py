"""Measures of sharpness and flatness of a trained model: `bk.sharpness`.

```
worst-case:    max_{||u|| <= rho} V(w + T u) - V(w)        (l2 / l-inf, adaptive, m-sharpness)
average-case:  E_z V(w + sigma T z) - V(w),  z ~ N(0, I)
Hessian:       top-k eigenvalues (power iteration, Lanczos), trace (Hutchinson)
landscape:     V(w + a d_1 + b d_2) on a grid (Li et al., 2018)
```

`V` is any Keras loss, the cross-entropy, a BiSAM lower bound, or the 0-1
loss (`objective="zero_one"`: the ascent follows the -log bound of the 0-1
loss, the reported value is the measured error rate). Every measure takes a
model, data (a `tf.data.Dataset` of `(x, y)` batches or arrays) and its
settings, and returns a frozen result with the value, its spread, the
settings and the cost in forward and backward passes.

Conventions: BatchNorm in inference mode (`training=False`) unless
`training=True` (batch statistics, updates dropped); no augmentation (the data
are used as given); a fixed subset (`num_examples`, `seed`) and seeded NumPy
draws, so two models are measured on the same examples and perturbations. No
weight is ever written: the model is evaluated at `w + delta` by
`model.stateless_call`.

The names are loaded on first use (PEP 562), so that `bisam_keras.sharpness.runs`
(the `bisam-keras sharpness` command's flags) can be read without importing
TensorFlow.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and the API docs
    from bisam_keras.sharpness import objectives
    from bisam_keras.sharpness.average import average_case
    from bisam_keras.sharpness.data import Examples, select
    from bisam_keras.sharpness.hessian import (
        hessian_eigenvalues,
        hessian_trace,
        hessian_vector_product,
    )
    from bisam_keras.sharpness.landscape import (
        direction_between,
        loss_landscape,
        normalize_direction,
        random_directions,
    )
    from bisam_keras.sharpness.objectives import Objective
    from bisam_keras.sharpness.plots import plot_landscape
    from bisam_keras.sharpness.results import HessianEigenvalues, LossLandscape, SharpnessResult
    from bisam_keras.sharpness.worst import worst_case

__all__ = [
    "Examples",
    "HessianEigenvalues",
    "LossLandscape",
    "Objective",
    "SharpnessResult",
    "average_case",
    "direction_between",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_vector_product",
    "loss_landscape",
    "normalize_direction",
    "objectives",
    "plot_landscape",
    "random_directions",
    "select",
    "worst_case",
]

_LAZY = {
    "Examples": "data",
    "select": "data",
    "average_case": "average",
    "hessian_eigenvalues": "hessian",
    "hessian_trace": "hessian",
    "hessian_vector_product": "hessian",
    "direction_between": "landscape",
    "loss_landscape": "landscape",
    "normalize_direction": "landscape",
    "random_directions": "landscape",
    "Objective": "objectives",
    "plot_landscape": "plots",
    "HessianEigenvalues": "results",
    "LossLandscape": "results",
    "SharpnessResult": "results",
    "worst_case": "worst",
}


def __getattr__(name):
    if name == "objectives":
        return importlib.import_module("bisam_keras.sharpness.objectives")
    if name not in _LAZY:
        raise AttributeError(f"module 'bisam_keras.sharpness' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bisam_keras.sharpness.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
