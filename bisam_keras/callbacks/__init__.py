"""Keras callbacks of bisam-keras: `SharpnessMonitor`."""

from bisam_keras.callbacks.sharpness_monitor import SharpnessMonitor

__all__ = ["SharpnessMonitor"]
