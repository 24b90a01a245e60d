"""`FusedBatchNormalization`: Keras' BatchNormalization on TensorFlow's fused kernel.

Keras 3 normalizes with separate ops (`moments`, then `(x - mean) * rsqrt(var
+ eps) * gamma + beta`), each a pass over the activations, forward and
backward. On CPU that is about 15% of a CIFAR ResNet-56 train step; the zoo's
models carry one BatchNorm per convolution. TensorFlow's `FusedBatchNormV3`
(oneDNN on CPU, cuDNN on GPU) does the same maths in one pass each way, as
PyTorch's BatchNorm does.

The layer is a `keras.layers.BatchNormalization` with the same variables,
configuration and moving-statistics update
(`moving = momentum * moving + (1 - momentum) * batch`, biased batch variance);
it takes the fused kernel for 4-D channels-last float inputs on the
TensorFlow backend, and falls back to Keras' own computation otherwise
(masks, `synchronized=True`, `renorm`, other ranks or axes).
"""

import keras
import tensorflow as tf

CUDNN_MIN_EPSILON = 1.001e-5
"""The smallest epsilon cuDNN's batch norm accepts (as in `tf.nn.fused_batch_norm`)."""


@keras.saving.register_keras_serializable(package="bisam_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel.

    Same arguments, weights and results as `keras.layers.BatchNormalization`
    (to float32 rounding), at about half its cost on CPU. The fused kernel
    needs `epsilon >= 1.001e-5` on GPU (cuDNN), so a smaller `epsilon` is
    raised to that in both training and inference, as
    `tf.nn.fused_batch_norm` does; the difference is below float32 resolution
    unless a channel's variance is itself about `1e-5`.

    Args:
        unbiased_moving_variance: whether the moving variance averages the
            Bessel-corrected batch variance (`n / (n - 1)` times the one it
            normalizes with, `n` the values per channel), as PyTorch's
            `BatchNorm2d` does, instead of Keras' biased one. Only the fused
            path honours it (Keras' fallback keeps the biased update).
            Defaults to `False`.
        **kwargs: the arguments of `keras.layers.BatchNormalization`.

    Example:

    >>> layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> y = layer(tf.random.normal([8, 4, 4, 3]), training=True)
    >>> tuple(y.shape)
    (8, 4, 4, 3)
    """

    def __init__(self, unbiased_moving_variance=False, **kwargs):
        super().__init__(**kwargs)
        self.unbiased_moving_variance = bool(unbiased_moving_variance)

    def get_config(self):
        return {**super().get_config(), "unbiased_moving_variance": self.unbiased_moving_variance}

    def _fusable(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.shape[-1] is not None
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras: statistics in float32
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        epsilon = max(float(self.epsilon), CUDNN_MIN_EPSILON)
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if training and self.trainable:
            y, mean, unbiased_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=tf.zeros([0]),
                variance=tf.zeros([0]),
                epsilon=epsilon,
                data_format="NHWC",
                is_training=True,
            )
            # The kernel returns the Bessel-corrected variance; Keras' moving
            # average uses the biased one (what it normalizes with), PyTorch's
            # the corrected one.
            variance = unbiased_variance
            if not self.unbiased_moving_variance:
                count = tf.cast(tf.size(x) // channels, tf.float32)
                variance = unbiased_variance * tf.math.divide_no_nan(count - 1.0, count)
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            y = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=epsilon,
                data_format="NHWC",
                is_training=False,
            )[0]
        return tf.cast(y, self.compute_dtype)
