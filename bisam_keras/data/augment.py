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
- `cutout`: with probability `probability`, zero a `size x size` square whose
  top-left corner is uniform in `[-size // 2, side - size // 2)` per axis,
  clipped at the border (the paper's code, `utility/cutout.py`); applied
  after normalization, so the square holds the mean pixel.
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


def cutout_box(seed, height, width, size=16, probability=0.5):
    """The random draws of `cutout`: `(apply, top, left)` for one image.

    `apply` is a bool (true with probability `probability`), `top` and `left`
    int32 corners uniform in `[-(size // 2), height - size // 2)` and
    `[-(size // 2), width - size // 2)`, as `torch.randint` draws them in the
    paper's `Cutout`.

    Args:
        seed: an int tensor of shape `(2,)`.
        height, width: the image's size.
        size: the side of the square. Defaults to `16`.
        probability: the probability of a square. Defaults to `0.5`.
    """
    coin_seed, top_seed, left_seed = _seeds(seed, 3)
    half = size // 2
    coin = tf.random.stateless_uniform([], coin_seed)
    top = tf.random.stateless_uniform(
        [], top_seed, minval=-half, maxval=height - half, dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        [], left_seed, minval=-half, maxval=width - half, dtype=tf.int32
    )
    # torch: `if rand() > p: return image`, so a square with probability p.
    return coin <= probability, top, left


def cutout(image, seed=None, size=16, probability=0.5):
    """Cutout (DeVries & Taylor, 2017) as in the paper's code.

    With probability `probability`, sets to 0 (every channel) the pixels of a
    `size x size` square whose top-left corner `(top, left)` is drawn
    uniformly from `[-(size // 2), height - size // 2) x
    [-(size // 2), width - size // 2)`; the part outside the image is
    dropped. Apply it to normalized images: the square then holds the mean.

    Args:
        image: a `(height, width, channels)` tensor (static height and width).
        seed: an int tensor of shape `(2,)`; `None` draws one. Defaults to `None`.
        size: the side of the square, an int `>= 1`. Defaults to `16`.
        probability: the probability of a square, in `[0, 1]`. Defaults to `0.5`.

    Returns:
        A tensor like `image`.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be an int >= 1. Received: size={size!r}")
    if isinstance(probability, bool) or not 0.0 <= probability <= 1.0:
        raise ValueError(
            f"`probability` must be a number in [0, 1]. Received: probability={probability!r}"
        )
    height, width = image.shape[0], image.shape[1]
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    apply, top, left = cutout_box(seed, height, width, size, probability)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    mask = tf.logical_and(inside, apply)[:, :, None]
    return tf.where(mask, tf.zeros_like(image), image)
