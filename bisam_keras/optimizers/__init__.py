"""Sharpness-aware optimizer wrappers."""

from bisam_keras.optimizers.bisam import BiSAM
from bisam_keras.optimizers.sam import SAM
from bisam_keras.optimizers.sharpness_aware_optimizer import SharpnessAwareOptimizer

__all__ = ["BiSAM", "SAM", "SharpnessAwareOptimizer"]
