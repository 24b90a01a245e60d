"""`Splits` from in-memory NumPy arrays, and the bundled digits data set."""

import numpy as np
import tensorflow as tf

from bisam_keras.data.pipeline import build_splits


def from_arrays(
    x,
    y,
    x_test=None,
    y_test=None,
    *,
    class_names=None,
    name="arrays",
    batch_size=128,
    validation_fraction=0.1,
    seed=0,
    label_noise=0.0,
    subset=None,
    augment=True,
    drop_remainder=False,
    validation_split="seeded",
    stats_from="train",
    cutout=False,
):
    """Builds `Splits` from image arrays, with the same pipeline as `load`.

    Args:
        x: training images `(n, height, width, channels)`, any numeric dtype.
        y: training labels `(n,)`, ints in `[0, num_classes)`.
        x_test: test images; `None` for an empty test split. Defaults to `None`.
        y_test: test labels, given with `x_test`. Defaults to `None`.
        class_names: the class names, index = label; `None` names them `"0"`,
            `"1"`, ... up to the largest label. Defaults to `None`.
        name: recorded in `Splits.name`. Defaults to `"arrays"`.
        batch_size: examples per batch, as in `load`. Defaults to `128`.
        validation_fraction: the fraction of `x` held out for validation, as
            in `load`. Defaults to `0.1`.
        seed: seeds the split, the label noise, the shuffling and the
            augmentation, as in `load`. Defaults to `0`.
        label_noise: the fraction of train labels replaced, as in `load`.
            Defaults to `0.0`.
        subset: keep only the first `subset` training examples, as in `load`.
            Defaults to `None`.
        augment: apply `cifar_augment` (pad 4, crop, flip) to the training
            part. Defaults to `True`.
        drop_remainder: drop the last, smaller training batch of each epoch,
            as in `load`. Defaults to `False`.
        validation_split: `"seeded"` or `"authors"`, as in `load`.
            Defaults to `"seeded"`.
        stats_from: `"train"` or `"all"`, as in `load`. Defaults to `"train"`.
        cutout: the paper's code's Cutout, as in `load`. Defaults to `False`.

    Returns:
        A `Splits`.

    Example:

    >>> splits = from_arrays(np.zeros((100, 8, 8, 1)), np.arange(100) % 10, augment=False)
    >>> splits.num_train, splits.num_validation
    (90, 10)
    """
    x = np.asarray(x)
    y = np.asarray(y).astype(np.int64)
    if x.ndim != 4 or len(x) != len(y) or y.ndim != 1 or len(x) == 0:
        raise ValueError(
            "`x` must be (n, height, width, channels) and `y` (n,), n >= 1. "
            f"Received: x.shape={x.shape}, y.shape={y.shape}"
        )
    if x_test is None:
        x_test, y_test = x[:0], y[:0]
    x_test, y_test = np.asarray(x_test), np.asarray(y_test).astype(np.int64)
    if x_test.shape[1:] != x.shape[1:] or y_test.shape != (len(x_test),):
        raise ValueError(
            "`x_test` must have the image shape of `x` and `y_test` one label per image. "
            f"Received: x_test.shape={x_test.shape}, y_test.shape={y_test.shape}"
        )
    labels = np.concatenate([y, y_test])
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(class_names) or len(class_names) < 2:
        raise ValueError(
            f"labels must lie in [0, {len(class_names)}) with >= 2 classes. "
            f"Received: labels in [{labels.min()}, {labels.max()}], class_names={class_names!r}"
        )
    return build_splits(
        tf.data.Dataset.from_tensor_slices((x, y)),
        tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        name=name,
        num_classes=len(class_names),
        class_names=class_names,
        batch_size=batch_size,
        validation_fraction=validation_fraction,
        seed=seed,
        label_noise=label_noise,
        subset=subset,
        augment=augment,
        drop_remainder=drop_remainder,
        validation_split=validation_split,
        stats_from=stats_from,
        cutout=cutout,
    )


def digits_arrays():
    """scikit-learn's 1,797 8x8 digits as `(x, y, x_test, y_test)`.

    Images are float32 `(8, 8, 1)` in `[0, 1]` (values / 16). Digits has no
    official test set: a fixed 20% (359 images, permutation with seed 0,
    independent of `load`'s `seed`) is held out as the test split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[: len(order) // 5], order[len(order) // 5 :]
    return images[train], labels[train], images[test], labels[test]
