"""Reading a dataset through TensorFlow Datasets, failing fast when it is missing.

`imagenet2012` cannot be downloaded by tfds: put `ILSVRC2012_img_train.tar`
and `ILSVRC2012_img_val.tar` (from https://image-net.org, after registering)
into `<tfds_dir>/downloads/manual/`; the first `load("imagenet2012", ...)`
then prepares the dataset (hours, about 300 GB of disk).
"""

import os

import tensorflow_datasets as tfds

IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither prepared locally nor downloadable here."""


def _manual_dir(tfds_dir):
    root = tfds_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return os.path.join(os.path.expanduser(root), "downloads", "manual")


def prepare(name, tfds_dir=None):
    """Returns a prepared `tfds` builder, or raises `DatasetUnavailableError` at once.

    No download is tried from Google Cloud Storage (`try_download_gcs=False`);
    a failing download (no network) ends in an error that suggests the offline
    `data_dir=` instead.
    """
    hint = (
        f"Pass `data_dir=` a folder in the offline TFRecord format (see "
        f"`bisam_keras.data`), or `tfds_dir=` a TFDS data dir where {name!r} is prepared."
    )
    try:
        builder = tfds.builder(name, data_dir=tfds_dir)
        if builder.is_prepared():
            return builder
    except Exception as error:
        raise DatasetUnavailableError(f"tfds cannot open {name!r}: {error}. {hint}") from error
    if name == "imagenet2012":
        manual = _manual_dir(tfds_dir)
        missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.isfile(os.path.join(manual, f))]
        if missing:
            raise DatasetUnavailableError(
                f"imagenet2012 needs a manual download: put {missing} (from "
                f"https://image-net.org) into {manual}. {hint}"
            )
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    except Exception as error:
        raise DatasetUnavailableError(
            f"tfds could not download and prepare {name!r} "
            f"({type(error).__name__}: {error}). {hint}"
        ) from error
    return builder


def load_tfds(name, train_split, test_split, tfds_dir=None, encoded=False):
    """Opens the train and test splits of a tfds dataset as `(image, label)` pairs.

    Args:
        name: the tfds name, e.g. `"cifar10"`.
        train_split: the tfds split used as the training set, e.g. `"train"`.
        test_split: the tfds split used as the test set.
        tfds_dir: the TFDS data dir; `None` for the TFDS default. Defaults to `None`.
        encoded: yield the encoded image bytes instead of decoded images
            (cheaper shuffle buffers for large images). Defaults to `False`.

    Returns:
        `(train, test, class_names, image_shape)`; the datasets are in file order.
    """
    builder = prepare(name, tfds_dir)
    decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None
    train, test = (
        tfds.load(
            name,
            split=split,
            data_dir=tfds_dir,
            as_supervised=True,
            shuffle_files=False,
            download=False,
            decoders=decoders,
        )
        for split in (train_split, test_split)
    )
    features = builder.info.features
    return train, test, tuple(features["label"].names), tuple(features["image"].shape)
