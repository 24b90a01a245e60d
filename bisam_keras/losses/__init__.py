"""Lower bounds of the 0-1 loss used by BiSAM for the perturbation."""

from bisam_keras.losses.classification import LossKind, describe_loss
from bisam_keras.losses.losses import NegLogLowerBound, TanhLowerBound
from bisam_keras.losses.lower_bounds import (
    NEGLOG_GAMMA,
    lower_bound,
    neglog_lower_bound,
    phi_neglog,
    phi_tanh,
    tanh_lower_bound,
)

__all__ = [
    "NEGLOG_GAMMA",
    "LossKind",
    "NegLogLowerBound",
    "TanhLowerBound",
    "describe_loss",
    "lower_bound",
    "neglog_lower_bound",
    "phi_neglog",
    "phi_tanh",
    "tanh_lower_bound",
]
