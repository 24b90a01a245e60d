"""Learning-rate schedules of the paper's training script."""

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="bisam_keras")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay to 0 over `epochs`, constant within each epoch.

    ```
    epoch = floor(step / steps_per_epoch)
    lr    = initial_learning_rate * (1 + cos(pi * epoch / epochs)) / 2
    ```

    This is PyTorch's `CosineAnnealingLR(optimizer, T_max=epochs)` stepped
    once per epoch, as in the paper's `train.py`; Keras' `CosineDecay` decays
    every step instead.

    Args:
        initial_learning_rate: the rate of the first epoch, `>= 0`.
        epochs: the epochs of the decay (`T_max`), an int `>= 1`.
        steps_per_epoch: optimizer steps per epoch, an int `>= 1`.

    Example:

    >>> schedule = EpochCosineDecay(0.1, epochs=4, steps_per_epoch=10)
    >>> [round(float(schedule(step)), 4) for step in (0, 9, 10, 25)]
    [0.1, 0.1, 0.0854, 0.05]
    """

    def __init__(self, initial_learning_rate, epochs, steps_per_epoch):
        for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
        if not initial_learning_rate >= 0:
            raise ValueError(
                "`initial_learning_rate` must be >= 0. "
                f"Received: initial_learning_rate={initial_learning_rate!r}"
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        step = tf.cast(step, tf.int64)
        epoch = tf.cast(step // self.steps_per_epoch, tf.float64)
        cosine = tf.cos(math.pi * epoch / self.epochs)
        return tf.cast(0.5 * self.initial_learning_rate * (1.0 + cosine), tf.float32)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
        }


@keras.saving.register_keras_serializable(package="bisam_keras")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then linear decay to 0."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        up = self.peak * step / warmup
        down = self.peak * tf.maximum(0.0, 1.0 - (step - self.warmup_steps) / decay)
        return tf.where(step < self.warmup_steps, up, down)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }
