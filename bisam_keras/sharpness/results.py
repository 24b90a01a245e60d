"""The result objects of `bisam_keras.sharpness`: small frozen dataclasses.

Every result keeps the settings it was measured with and what it cost, counted
in passes over the measured examples: one forward pass runs every example once
through the network; one backward pass back-propagates through it once. A
Hessian-vector product counts as 2 forward and 2 backward passes (it
differentiates the gradient's graph, which costs about as much as a second
gradient). `to_dict()` gives plain Python values for JSON.
"""

import dataclasses
import math

import numpy as np


def _plain(value):
    """`value` with NumPy scalars and arrays turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def standard_error(values):
    """The standard error of the mean of `values`: `std(ddof=1) / sqrt(n)`; 0 for one value."""
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return 0.0
    return float(np.std(values, ddof=1) / math.sqrt(values.size))


@dataclasses.dataclass(frozen=True)
class SharpnessResult:
    """One scalar measure: worst-case or average-case sharpness, or a Hessian trace.

    Attributes:
        name: the measure, e.g. `"worst_case"`.
        value: the measured value.
        standard_error: the standard error of `value` over its independent
            parts: the batches (worst-case sharpness), the perturbation draws
            (average-case sharpness) or the probe vectors (trace).
        per_batch: the value on each batch of the measured examples.
        per_sample: the value of each perturbation draw or probe vector;
            empty for worst-case sharpness.
        reference: the objective's value at `w` (the unperturbed weights);
            `nan` for the trace.
        settings: the arguments the measure ran with.
        forward_passes: forward passes over the measured examples.
        backward_passes: backward passes over the measured examples.
    """

    name: str
    value: float
    standard_error: float
    per_batch: tuple
    per_sample: tuple
    reference: float
    settings: dict
    forward_passes: int
    backward_passes: int

    def __repr__(self):
        return (
            f"SharpnessResult({self.name}={self.value:.6g} ± {self.standard_error:.2g}, "
            f"reference={self.reference:.6g}, batches={len(self.per_batch)}, "
            f"samples={len(self.per_sample)}, passes={self.forward_passes} forward + "
            f"{self.backward_passes} backward, settings={self.settings})"
        )

    def to_dict(self):
        """The result as plain Python values (JSON-serializable)."""
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class HessianEigenvalues:
    """The top-k eigenvalues of the Hessian of the loss.

    Attributes:
        eigenvalues: the eigenvalues found, largest first.
        residuals: `||H v - lambda v||` for each unit eigenvector estimate `v`
            (for Lanczos, the usual estimate `|beta_m s_mi|`): how far each
            estimate is from an exact eigenpair.
        settings: the arguments the measure ran with.
        forward_passes: forward passes over the measured examples.
        backward_passes: backward passes over the measured examples.
    """

    eigenvalues: tuple
    residuals: tuple
    settings: dict
    forward_passes: int
    backward_passes: int

    @property
    def top(self):
        """The largest eigenvalue found."""
        return self.eigenvalues[0]

    def __repr__(self):
        values = ", ".join(f"{v:.6g}" for v in self.eigenvalues)
        return (
            f"HessianEigenvalues([{values}], passes={self.forward_passes} forward + "
            f"{self.backward_passes} backward, settings={self.settings})"
        )

    def to_dict(self):
        """The result as plain Python values (JSON-serializable)."""
        return _plain(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class LossLandscape:
    """The loss and the error rate on a 1-D or 2-D grid around `w`.

    The grid point with coordinates `(a, b)` is `w + a d_1 + b d_2`.

    Attributes:
        coordinates: one tuple of coordinates per direction.
        loss: the objective's value, an array of shape
            `(len(coordinates[0]),)` or `(len(coordinates[0]), len(coordinates[1]))`.
        error: the error rate on the same grid (`nan` where the model is not
            a classifier with `K >= 2` outputs).
        settings: the arguments the measure ran with.
        forward_passes: forward passes over the measured examples.
        backward_passes: backward passes over the measured examples (0).
    """

    coordinates: tuple
    loss: np.ndarray
    error: np.ndarray
    settings: dict
    forward_passes: int
    backward_passes: int

    @property
    def dims(self):
        """The number of directions: 1 or 2."""
        return len(self.coordinates)

    def __repr__(self):
        shape = " x ".join(str(len(c)) for c in self.coordinates)
        return (
            f"LossLandscape({shape} grid, loss in [{np.min(self.loss):.4g}, "
            f"{np.max(self.loss):.4g}], passes={self.forward_passes} forward, "
            f"settings={self.settings})"
        )

    def to_dict(self):
        """The result as plain Python values (JSON-serializable; `nan` stays `nan`)."""
        return _plain(dataclasses.asdict(self))
