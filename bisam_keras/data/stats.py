"""Per-channel statistics of a training set, and normalization by them.

`channel_stats` makes one pass in float64 over every pixel of the images:
`mean = E[x]`, `std = sqrt(E[x^2] - E[x]^2)`, per channel. Compute it on the
training part only and normalize train, validation and test with it.
"""

import numpy as np
import tensorflow as tf


def _image_only(*element):
    return element[0]


def _pixel_sums(image):
    image = tf.cast(image, tf.float64)
    pixels = tf.reshape(image, [-1, tf.shape(image)[-1]])
    count = tf.cast(tf.shape(pixels)[0], tf.float64)
    return tf.reduce_sum(pixels, 0), tf.reduce_sum(tf.square(pixels), 0), count


def channel_stats(data, batch_size=1024):
    """Per-channel mean and standard deviation of images, in one pass.

    Args:
        data: a NumPy array `(n, height, width, channels)`, or a
            `tf.data.Dataset` of unbatched images or `(image, label)` pairs
            (images may differ in size).
        batch_size: how many per-image sums to gather at a time. Defaults to `1024`.

    Returns:
        `(mean, std)`: float64 arrays of shape `(channels,)`, in the images' units.
    """
    if not isinstance(data, tf.data.Dataset):
        array = np.asarray(data, dtype=np.float64)
        if array.ndim != 4 or len(array) == 0:
            raise ValueError(
                "`data` must be a non-empty array (n, height, width, channels). "
                f"Received: data.shape={array.shape}"
            )
        pixels = array.reshape(-1, array.shape[-1])
        return pixels.mean(0), pixels.std(0)
    sums = data.map(_image_only).map(_pixel_sums, num_parallel_calls=tf.data.AUTOTUNE)
    total, total_sq, count = 0.0, 0.0, 0.0
    for s, sq, c in sums.batch(batch_size).prefetch(1):
        total, total_sq, count = (
            total + s.numpy().sum(0),
            total_sq + sq.numpy().sum(0),
            count + c.numpy().sum(),
        )
    if count == 0:
        raise ValueError("`data` must hold at least one image. Received: an empty dataset")
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


def normalize(image, mean, std):
    """Returns `(image - mean) / std` as float32, broadcasting over the channel axis.

    Args:
        image: an image or a batch of images, channels last.
        mean: per-channel means, same units as `image`.
        std: per-channel standard deviations, all `> 0`.
    """
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(np.maximum(np.asarray(std, np.float64), 1e-8), tf.float32)
    return (tf.cast(image, tf.float32) - mean) / std
