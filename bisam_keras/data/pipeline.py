"""From raw `(image, label)` sources to batched train/validation/test datasets.

```
train source -> enumerate -> 90/10 split by index (seeded) -> label noise (train only)
             -> decode -> cache (small images) -> [channel stats, once]
             -> shuffle(seed) -> augment -> normalize -> batch -> prefetch
validation, test -> decode -> cache -> normalize -> batch -> prefetch
```

With `drop_remainder=True` the training part drops the last, smaller batch of
each epoch (every batch then has `batch_size` examples, as mSAM needs); the
validation and test parts always keep every example.

The shuffle order and the augmentation seeds of the training part are
functions of `(seed, epoch)`: runs are reproducible from `seed`, crops differ
between epochs, and a resumed run (with `Splits.epoch_callback()`) sees the
same data as an uninterrupted one.
"""

import dataclasses
import numbers

import keras
import numpy as np
import tensorflow as tf

from bisam_keras.data.augment import (
    cifar_augment,
    imagenet_eval_preprocess,
    imagenet_train_preprocess,
)
from bisam_keras.data.augment import (
    cutout as cutout_fn,
)
from bisam_keras.data.errors import DataError
from bisam_keras.data.splitting import (
    VALIDATION_SPLITS,
    authors_validation_split,
    check_fraction,
    label_noise_offsets,
    train_validation_split,
)
from bisam_keras.data.stats import channel_stats, normalize

AUTOTUNE = tf.data.AUTOTUNE
CUTOUT_STREAM = 1
"""Folded into an example's augmentation seed to key its cutout draws."""
_STATS_CACHE = {}


@dataclasses.dataclass(frozen=True)
class Splits:
    """The three splits of a dataset and what a model needs to know about them.

    `train`, `validation` and `test` are batched, prefetched `tf.data.Dataset`s
    of `(image, label)`, images float32 normalized by the training part's
    per-channel `mean` and `std` (in the stored pixel units, e.g. 0-255).
    `noisy_label_fraction` is the exact fraction of training labels corrupted.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    class_names: tuple
    num_train: int
    num_validation: int
    num_test: int
    mean: tuple
    std: tuple
    name: str
    noisy_label_fraction: float
    epoch: tf.Variable = None

    def epoch_callback(self):
        """A Keras callback that makes epoch `k` of `fit` read data epoch `k`.

        With it, the shuffle order and augmentation of every epoch depend on
        `(seed, epoch)` only, so a run resumed by `BackupAndRestore` continues
        exactly as an uninterrupted one. Without it, each pass over `train`
        takes the next epoch number.
        """
        return EpochCallback(self.epoch)


class EpochCallback(keras.callbacks.Callback):
    """Sets a data epoch counter to the epoch `fit` is about to run."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch.assign(epoch)


def check_arguments(batch_size, validation_fraction, label_noise, subset, image_size):
    """Raises `ValueError` naming the first invalid argument."""

    def is_int(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
    check_fraction(validation_fraction, "validation_fraction", upper_inclusive=False)
    check_fraction(label_noise, "label_noise", upper_inclusive=True)
    if subset is not None and (not is_int(subset) or subset < 1):
        raise ValueError(f"`subset` must be None or an int >= 1. Received: subset={subset!r}")
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        raise ValueError(
            f"`image_size` must be None or an int >= 1. Received: image_size={image_size!r}"
        )


def check_subset(subset, available, name):
    """Raises `DataError` if `subset` asks for more than the `available` examples.

    `available` may be counted on `subset + 1` examples at most: any value
    above `subset` passes.
    """
    if available < subset:
        raise DataError(
            f"`subset`={subset} is larger than the training set of {name!r}, which holds "
            f"{available} examples: pass subset <= {available}, or none for all of them"
        )


STATS_FROM = ("train", "all")
"""Where `load(stats_from=...)` takes the normalization statistics from."""


def check_authors_options(validation_split, stats_from, cutout):
    """Raises `ValueError` naming the first invalid one of these `load` arguments."""
    if validation_split not in VALIDATION_SPLITS:
        raise ValueError(
            f"`validation_split` must be one of {list(VALIDATION_SPLITS)}. "
            f"Received: validation_split={validation_split!r}"
        )
    if stats_from not in STATS_FROM:
        raise ValueError(
            f"`stats_from` must be one of {list(STATS_FROM)}. Received: stats_from={stats_from!r}"
        )
    if not isinstance(cutout, bool):
        raise ValueError(f"`cutout` must be a bool. Received: cutout={cutout!r}")


def check_drop_remainder(drop_remainder):
    if not isinstance(drop_remainder, bool):
        raise ValueError(
            f"`drop_remainder` must be a bool. Received: drop_remainder={drop_remainder!r}"
        )


def count(dataset):
    """The number of elements of a finite dataset (its cardinality, else one pass)."""
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.map(lambda *_: tf.constant(1, tf.int64)).reduce(np.int64(0), tf.add))


def _shuffle(dataset, buffer, seed):
    """`dataset.shuffle` with a tensor `seed` alone deciding the order.

    The function graph is traced without a graph-level seed: with one, the
    order would also depend on `tf.random.set_seed`, and TensorFlow's seed
    logic compares a tensor seed as a Python bool when the global seed is 0.
    """
    graph = tf.compat.v1.get_default_graph()
    graph_seed = graph.seed
    graph.seed = None
    try:
        return dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
    finally:
        graph.seed = graph_seed


def _finish(dataset, batch_size, drop_remainder=False):
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def build_splits(
    train_source,
    test_source,
    *,
    name,
    num_classes,
    class_names,
    style="small",
    decode=None,
    batch_size=128,
    validation_fraction=0.1,
    seed=0,
    label_noise=0.0,
    subset=None,
    augment=True,
    image_size=None,
    mean=None,
    std=None,
    stats_key=None,
    drop_remainder=False,
    validation_split="seeded",
    stats_from="train",
    cutout=False,
):
    """Builds `Splits` from raw sources of `(image, label)` (see the module docstring).

    Args:
        train_source: `tf.data.Dataset` of the training set, in a fixed order.
        test_source: `tf.data.Dataset` of the test set.
        style: `"small"` (fixed size, cached, `cifar_augment`) or `"imagenet"`
            (any size, random-resized crop / center crop to `image_size`).
        decode: maps a raw source image to a uint8 image; `None` if already decoded.
        mean, std: per-channel statistics to use instead of computing them.
        stats_key: hashable identity of the training part, to compute its
            statistics once per process.
        drop_remainder: drop the last, smaller batch of each training epoch.
        validation_split, stats_from, cutout: see `load`.
        The other arguments are those of `load`.
    """
    check_arguments(batch_size, validation_fraction, label_noise, subset, image_size)
    check_drop_remainder(drop_remainder)
    check_authors_options(validation_split, stats_from, cutout)
    decode = decode or (lambda image: image)
    if subset is not None:
        check_subset(subset, count(train_source.take(subset + 1)), name)
        train_source, test_source = train_source.take(subset), test_source.take(subset // 5)
    num_examples, num_test = count(train_source), count(test_source)
    if validation_split == "authors":
        train_index, validation_index = authors_validation_split(num_examples, validation_fraction)
    else:
        train_index, validation_index = train_validation_split(
            num_examples, validation_fraction, seed
        )
    if drop_remainder and len(train_index) < batch_size:
        raise ValueError(
            f"`batch_size` must not exceed the {len(train_index)} training examples when "
            "`drop_remainder`=True (no full batch would be left). "
            f"Received: batch_size={batch_size}"
        )
    offsets = np.zeros(num_examples, np.int64)
    offsets[train_index] = label_noise_offsets(len(train_index), label_noise, num_classes, seed)
    is_validation = np.zeros(num_examples, bool)
    is_validation[validation_index] = True
    is_validation, offsets = tf.constant(is_validation), tf.constant(offsets)

    def part(flag):
        return train_source.enumerate().filter(lambda i, _: tf.equal(is_validation[i], flag))

    train = part(False).map(
        lambda i, example: (example[0], (example[1] + offsets[i]) % num_classes)
    )
    validation = part(True).map(lambda i, example: example)
    if style == "small":
        first = next(iter(train_source.take(1)))[0]
        input_shape = tuple(decode(first).shape)

        def decode_small(image, label):
            return tf.ensure_shape(decode(image), input_shape), label

        train, validation, test = (
            ds.map(decode_small, num_parallel_calls=AUTOTUNE).cache()
            for ds in (train, validation, test_source)
        )

        def preprocess_train(image, seed):
            return cifar_augment(image, seed) if augment else tf.cast(image, tf.float32)

        def preprocess_eval(image):
            return tf.cast(image, tf.float32)

    else:
        test = test_source
        input_shape = (image_size, image_size, 3)

        def preprocess_train(image, seed):
            if augment:
                return imagenet_train_preprocess(decode(image), image_size, seed)
            return imagenet_eval_preprocess(decode(image), image_size)

        def preprocess_eval(image):
            return imagenet_eval_preprocess(decode(image), image_size)

    if mean is None:
        key = None
        if stats_key is not None:
            split_key = (validation_split, validation_fraction)
            if validation_split == "seeded":
                split_key += (seed,)
            key = (stats_key, num_examples, stats_from) + (() if stats_from == "all" else split_key)
        stats = _STATS_CACHE.get(key)
        if stats is None:
            # "all": the whole training set, train and validation parts (the
            # paper's code); "train": the train part alone.
            images = train if stats_from == "train" else train.concatenate(validation)
            if style != "small":
                images = images.map(lambda image, label: decode(image))
            stats = channel_stats(images)
            if key is not None:
                _STATS_CACHE[key] = stats
        mean, std = stats
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    buffer = max(1, len(train_index) if style == "small" else min(len(train_index), 10_000))
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")
    cached_train = train

    def one_epoch(_):
        # The shuffle order and the augmentation of an epoch are functions of
        # (seed, epoch) alone, so a resumed run sees the data an uninterrupted
        # one would. Each new iterator takes the next epoch number, and
        # `EpochCallback` pins it to Keras' epoch index.
        index = epoch.assign_add(1) - 1
        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + index
        shuffled = _shuffle(cached_train, buffer, epoch_seed)
        return shuffled.enumerate().map(
            lambda i, example: (
                train_image(example[0], tf.stack([epoch_seed, i])),
                example[1],
            ),
            num_parallel_calls=AUTOTUNE,
        )

    def train_image(image, example_seed):
        image = normalize(preprocess_train(image, example_seed), mean, std)
        if cutout:
            # Its own stream, so that turning cutout on leaves crops and flips as they were.
            cutout_seed = tf.random.experimental.stateless_fold_in(example_seed, CUTOUT_STREAM)
            image = cutout_fn(image, cutout_seed)
        return image

    train = tf.data.Dataset.from_tensors(0).flat_map(one_epoch)
    train = train.apply(tf.data.experimental.assert_cardinality(len(train_index)))
    validation, test = (
        ds.map(
            lambda image, label: (normalize(preprocess_eval(image), mean, std), label),
            num_parallel_calls=AUTOTUNE,
        )
        for ds in (validation, test)
    )
    validation = validation.apply(tf.data.experimental.assert_cardinality(len(validation_index)))
    test = test.apply(tf.data.experimental.assert_cardinality(num_test))
    num_noisy = int(round(label_noise * len(train_index)))
    return Splits(
        train=_finish(train, batch_size, drop_remainder),
        validation=_finish(validation, batch_size),
        test=_finish(test, batch_size),
        num_classes=int(num_classes),
        input_shape=input_shape,
        class_names=tuple(class_names),
        num_train=len(train_index),
        num_validation=len(validation_index),
        num_test=num_test,
        mean=mean,
        std=std,
        name=name,
        noisy_label_fraction=num_noisy / max(len(train_index), 1),
        epoch=epoch,
    )
