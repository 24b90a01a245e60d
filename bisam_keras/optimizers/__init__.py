"""Sharpness-aware optimizer wrappers, and the paper's base optimizer and schedule."""

from bisam_keras.optimizers.bisam import BiSAM
from bisam_keras.optimizers.sam import SAM
from bisam_keras.optimizers.schedules import EpochCosineDecay
from bisam_keras.optimizers.sharpness_aware_optimizer import SharpnessAwareOptimizer
from bisam_keras.optimizers.torch_sgd import TorchSGD

__all__ = ["BiSAM", "EpochCosineDecay", "SAM", "SharpnessAwareOptimizer", "TorchSGD"]
