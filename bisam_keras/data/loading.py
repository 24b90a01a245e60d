"""`load`: one call from a dataset name to normalized, batched splits."""

import os

import tensorflow as tf

from bisam_keras.data.arrays import digits_arrays, from_arrays
from bisam_keras.data.catalog import DATASETS, DEFAULT_IMAGE_SIZE, names
from bisam_keras.data.errors import DataError
from bisam_keras.data.offline import decode, read_class_names, read_tfrecord_folder, shard_paths
from bisam_keras.data.pipeline import (
    build_splits,
    check_arguments,
    check_authors_options,
    check_drop_remainder,
)
from bisam_keras.data.tfds_source import load_tfds
from bisam_keras.data.verify import check_image_shapes, check_level, tf_reason


def _folder_key(data_dir):
    files = shard_paths(data_dir, "train")
    return ("folder", os.path.abspath(data_dir), tuple((f, os.path.getmtime(f)) for f in files))


def _naming_undecodable_images(data_dir, build):
    """Wraps `build` so that an image that fails to decode raises `DataError`.

    `verify="records"` checks each image's signature, not its whole content:
    an image with a valid header and broken data fails when the pipeline
    first decodes it (the statistics pass over the training part); so does,
    with `verify=None`, an image of another shape.
    """

    def wrapped(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except tf.errors.InvalidArgumentError as error:
            reason = tf_reason(error)
            what = "does not decode"
            if "is not compatible with expected shape" in reason:
                what = "has another shape than the first training image"
            raise DataError(
                f"{data_dir}: an image {what} ({reason}); "
                "`bisam_keras.data.load(..., verify='full')` (`bisam-keras --verify full`) "
                "names its file and record"
            ) from None

    return wrapped


def load(
    name,
    data_dir=None,
    batch_size=128,
    validation_fraction=0.1,
    seed=0,
    label_noise=0.0,
    subset=None,
    augment=True,
    image_size=None,
    tfds_dir=None,
    drop_remainder=False,
    verify="records",
    validation_split="seeded",
    stats_from="train",
    cutout=False,
):
    """Loads a dataset as normalized, batched train/validation/test splits.

    The training set is split 90/10 (by default) into train and validation with
    a fixed seed; label noise touches the train part only; every split is
    normalized with the train part's per-channel mean and std; only the train
    part is shuffled and augmented.

    Args:
        name: one of `names()`: `"digits"` (scikit-learn's 8x8 digits, always
            offline), `"cifar10"`, `"cifar100"`, `"oxford_flowers102"`,
            `"oxford_iiit_pet"`, `"imagenet2012"`.
        data_dir: a folder in the offline TFRecord format (see
            `bisam_keras.data`); `None` reads `name` through tfds. Defaults to `None`.
        batch_size: examples per batch. Defaults to `128`.
        validation_fraction: the fraction of the training set held out for
            validation, in `[0, 1)`. Defaults to `0.1`.
        seed: seeds the split, the label noise, the shuffling and the
            augmentation. Defaults to `0`.
        label_noise: the fraction of train labels replaced by a different label
            drawn uniformly, in `[0, 1]`. Defaults to `0.0`.
        subset: keep only the first `subset` training examples (before the
            split) and the first `subset // 5` test examples. Defaults to `None`.
        augment: augment the train part (pad-crop-flip for 32x32 images,
            random-resized crop and flip for ImageNet-style datasets; digits
            is never augmented). Defaults to `True`.
        image_size: output side for ImageNet-style datasets (`224` when
            `None`); must be `None` for digits and CIFAR. Defaults to `None`.
        tfds_dir: the TFDS data dir. Defaults to `None` (the TFDS default).
        drop_remainder: drop the last, smaller batch of each training epoch,
            so that every training batch holds `batch_size` examples (mSAM's
            `micro_batch_size` must divide every batch). The validation and
            test splits keep every example. Defaults to `False`.
        verify: with `data_dir`, scan every shard before building the
            pipeline (see `read_tfrecord_folder`): `"records"` (checksums,
            features, label range, image signatures; 1-2 s for CIFAR-10
            on 2 cores), `"full"` (also decodes every image; 10-20 s)
            or `None`. Defaults to `"records"`.
        validation_split: `"seeded"`: a permutation drawn from `seed`, the
            first `round(validation_fraction * n)` indices held out;
            `"authors"`: the paper's code's split, the same for every `seed`
            (`np.random.seed(42)` shuffle, the first
            `floor(validation_fraction * n)` indices held out; see
            `authors_validation_split`). Defaults to `"seeded"`.
        stats_from: the normalization statistics come from the `"train"`
            part, or from `"all"` the training set, validation part included
            (the paper's code). Ignored where the dataset has fixed statistics
            (ImageNet). Defaults to `"train"`.
        cutout: after normalization, with probability 0.5 zero a 16x16
            square of each training image, its corner uniform in
            `[-8, side - 8)` per axis, clipped at the border (the paper's
            code's `Cutout`; see `bisam_keras.data.augment.cutout`); keyed by
            `(seed, epoch, example)` like the other augmentations.
            Defaults to `False`.

    Returns:
        A `Splits`.

    Raises:
        ValueError: for an invalid argument, naming it.
        DataError: for unusable data, in one line naming the file (and the
            record): a truncated or corrupted shard, a record that lacks a
            feature or is not an image, a label outside `[0, num_classes)` in
            any split, a `classes.txt` with a blank or repeated line, images
            of more than one shape where the dataset does not resize them
            (CIFAR; checked with `verify`), or a `subset` larger than the
            training set.
        DatasetUnavailableError: when tfds has neither the prepared dataset nor
            a way to download it (pass `data_dir=` instead).

    Example:

    >>> splits = load("digits", batch_size=64)
    >>> splits.num_classes, splits.input_shape
    (10, (8, 8, 1))
    """
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {names()}. Received: name={name!r}")
    spec = DATASETS[name]
    check_arguments(batch_size, validation_fraction, label_noise, subset, image_size)
    check_drop_remainder(drop_remainder)
    check_level(verify)
    check_authors_options(validation_split, stats_from, cutout)
    if spec.style == "small" and image_size is not None:
        raise ValueError(
            f"`image_size` only applies to ImageNet-style datasets, not {name!r}. "
            f"Received: image_size={image_size!r}"
        )
    if spec.style == "imagenet" and image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
    options = dict(
        batch_size=batch_size,
        validation_fraction=validation_fraction,
        seed=seed,
        label_noise=label_noise,
        subset=subset,
        augment=augment and spec.augment,
        drop_remainder=drop_remainder,
        validation_split=validation_split,
        stats_from=stats_from,
        cutout=cutout,
    )
    if data_dir is None and name == "digits":
        return from_arrays(*digits_arrays(), name=name, **options)
    channels = 3 if spec.style == "imagenet" else 0
    if data_dir is not None:
        train = read_tfrecord_folder(data_dir, "train", decode_images=False, verify=verify)
        test = read_tfrecord_folder(data_dir, "test", decode_images=False, verify=verify)
        if spec.style == "small":
            files = shard_paths(data_dir, "train") + shard_paths(data_dir, "test")
            check_image_shapes(files, name, verify)
        class_names, key = read_class_names(data_dir), _folder_key(data_dir)
        decode_fn = lambda image: decode(image, channels)  # noqa: E731
    else:
        encoded = spec.style == "imagenet"
        train, test, class_names, _ = load_tfds(
            name, spec.train_split, spec.test_split, tfds_dir, encoded=encoded
        )
        key = ("tfds", name, tfds_dir)
        decode_fn = (lambda image: decode(image, 3)) if encoded else None
    build = build_splits if data_dir is None else _naming_undecodable_images(data_dir, build_splits)
    return build(
        train,
        test,
        name=name,
        num_classes=len(class_names),
        class_names=class_names,
        style=spec.style,
        decode=decode_fn,
        image_size=image_size,
        mean=spec.mean,
        std=spec.std,
        stats_key=key,
        **options,
    )
