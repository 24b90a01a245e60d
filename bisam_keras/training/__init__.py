"""The sharpness-aware training step and its maths."""

from bisam_keras.training.sharpness_aware_mixin import SharpnessAwareMixin
from bisam_keras.training.sharpness_aware_model import SharpnessAwareModel

__all__ = ["SharpnessAwareMixin", "SharpnessAwareModel"]
