"""Per-example image preprocessing, as pure functions of `(image, seed)`.

All functions take one image `(height, width, channels)` in its stored pixel
units (e.g. 0-255) and return float32 in the same units; normalization comes
after (`normalize`). Random ones use TensorFlow's stateless ops, so a given
`seed` (an int tensor of shape `(2,)`) always gives the same output.

- `cifar_augment`: zero-pad 4 pixels, random crop back to the input size,
  random horizontal flip (the paper's CIFAR augmentation).
- `imagenet_train_preprocess`: random-resized crop (8%-100% of the area,
  aspect ratio 3/4-4/3) resized to `image_size`, random horizontal flip.
- `imagenet_eval_preprocess`: resize the shorter side to
  `image_size / 0.875`, then a central `image_size` crop.
"""

import tensorflow as tf


def _seeds(seed, count):
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def cifar_augment(image, seed=None, padding=4):
    """Pads `padding` zeros on each side, crops back at random and flips at random.

    Args:
        image: a `(height, width, channels)` tensor.
        seed: an int tensor of shape `(2,)` for the stateless random ops; `None`
            draws one. Defaults to `None`.
        padding: pixels of zero padding per side. Defaults to `4`.

    Returns:
        A float32 tensor of the input shape: a window of the padded image
        shifted by at most `padding` pixels, mirrored with probability 1/2.
    """
    image = tf.cast(image, tf.float32)
    crop_seed, flip_seed = _seeds(seed, 2)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    size = image.shape if image.shape.is_fully_defined() else tf.shape(image)
    cropped = tf.image.stateless_random_crop(padded, size, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def imagenet_train_preprocess(image, image_size=224, seed=None):
    """Random-resized crop to `image_size` and random horizontal flip.

    Args:
        image: a `(height, width, channels)` tensor of any size.
        image_size: the side of the square output. Defaults to `224`.
        seed: an int tensor of shape `(2,)`; `None` draws one. Defaults to `None`.

    Returns:
        A float32 tensor `(image_size, image_size, channels)`.
    """
    crop_seed, flip_seed = _seeds(seed, 2)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
    )
    crop = tf.slice(image, begin, size)
    resized = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size])
    return tf.image.stateless_random_flip_left_right(resized, seed=flip_seed)


def imagenet_eval_preprocess(image, image_size=224, crop_fraction=0.875):
    """Resizes the shorter side to `image_size / crop_fraction`, then center-crops.

    Args:
        image: a `(height, width, channels)` tensor of any size.
        image_size: the side of the square output. Defaults to `224`.
        crop_fraction: the central fraction kept. Defaults to `0.875`.

    Returns:
        A float32 tensor `(image_size, image_size, channels)`.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(image_size / crop_fraction) / tf.reduce_min(shape)
    new_size = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    resized = tf.image.resize(tf.cast(image, tf.float32), new_size)
    top = (new_size[0] - image_size) // 2
    left = (new_size[1] - image_size) // 2
    return tf.image.crop_to_bounding_box(resized, top, left, image_size, image_size)
