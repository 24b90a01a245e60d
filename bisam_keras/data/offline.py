"""The package's offline dataset format: a folder of TFRecord shards.

A folder holds

- `train-*.tfrecord` and `test-*.tfrecord`: shards, read in sorted file-name
  order (`write_tfrecord_folder` names them `{split}-00000-of-00004.tfrecord`, ...);
- `classes.txt`: one class name per line, line `i` naming label `i` (from 0),
  without blank lines between names or a name given twice.

Each record is a `tf.train.Example` with two features: `image`, the encoded
image as bytes (JPEG or PNG, any size, 1 or 3 channels) and `label`, an int64
in `[0, len(classes))`.
"""

import glob
import os

import numpy as np
import tensorflow as tf

from bisam_keras.data.errors import DataError
from bisam_keras.data.verify import check_level, verify_shards

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
SPLITS = ("train", "test")


def shard_paths(path, split):
    """Sorted shard files of `split` in the folder `path`; raises `ValueError` if none."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}. Received: split={split!r}")
    if not os.path.isdir(path):
        raise ValueError(f"`data_dir` must be an existing folder. Received: data_dir={path!r}")
    files = sorted(glob.glob(os.path.join(path, f"{split}-*.tfrecord")))
    if not files:
        raise ValueError(
            f"`data_dir` must hold `{split}-*.tfrecord` shards (see `bisam_keras.data` for "
            f"the offline format). Received: data_dir={path!r}"
        )
    return files


def read_class_names(path):
    """The class names listed in `classes.txt` of the folder `path`.

    Line `i` (from 1) names label `i - 1`, so a blank line between names, which
    would shift every name after it, raises `DataError` naming the file and the
    line; so does a name that repeats an earlier one. Blank lines at the end
    are ignored; each name loses its surrounding spaces.
    """
    file = os.path.join(path, "classes.txt")
    if not os.path.isfile(file):
        raise ValueError(f"`data_dir` must hold a `classes.txt`. Received: data_dir={path!r}")
    with open(file) as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    first_line = {}
    for line, name in enumerate(names, start=1):
        if not name:
            raise DataError(
                f"{file}: line {line} is blank, but each line names the next label (line 1 "
                "label 0), so every name after it would shift by one label: remove the "
                "line or name the class"
            )
        if name in first_line:
            raise DataError(
                f"{file}: line {line} repeats {name!r} of line {first_line[name]}: each "
                "label needs its own class name"
            )
        first_line[name] = line
    return tuple(names)


def _parse(record):
    example = tf.io.parse_single_example(record, FEATURES)
    return example["image"], example["label"]


def decode(encoded, channels=0):
    """Decodes JPEG or PNG bytes to a uint8 `(height, width, channels)` image."""
    return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def read_tfrecord_folder(path, split, decode_images=True, verify="records"):
    """Reads one split of an offline folder, in file order.

    Args:
        path: the folder (see the module docstring for the format).
        split: `"train"` or `"test"`.
        decode_images: decode the images to uint8 tensors; with `False` the
            dataset yields the encoded bytes (decode later with `decode`).
            Defaults to `True`.
        verify: scan every shard before returning: `"records"` checks each
            record's checksum, its `image` and `label` features, the label
            range (`[0, number of classes in classes.txt)`, or `>= 0` without
            a `classes.txt`) and that `image` starts like an encoded image;
            `"full"` also decodes every image (slower); `None` skips the scan.
            See `bisam_keras.data.verify`. Defaults to `"records"`.

    Returns:
        A `tf.data.Dataset` of `(image, label)` pairs, label int64.

    Raises:
        DataError: for a truncated or corrupted shard, a record without the
            two features or with a label out of range, an `image` that is not
            an image, or a split without records; one line naming the file
            and the record.
    """
    check_level(verify)
    files = shard_paths(path, split)
    if verify is not None:
        classes = os.path.join(path, "classes.txt")
        num_classes = len(read_class_names(path)) if os.path.isfile(classes) else None
        if sum(verify_shards(files, num_classes, verify)) == 0:
            raise DataError(f"{path}: the {split}-*.tfrecord shards hold no records")
    dataset = tf.data.TFRecordDataset(files).map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
    if decode_images:
        dataset = dataset.map(
            lambda image, label: (decode(image), label), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset


def _encode(image, image_format):
    if image_format == "png":
        return tf.io.encode_png(image).numpy()
    return tf.io.encode_jpeg(image, quality=95).numpy()


def write_tfrecord_folder(
    path, images, labels, class_names, split="train", shards=1, image_format="png"
):
    """Writes one split of an offline folder (and its `classes.txt`).

    Call it once per split. Examples are written in order, in contiguous
    chunks, so reading the folder gives them back in the same order.

    Args:
        path: the folder; created if missing.
        images: uint8 array `(n, height, width)` or `(n, height, width, channels)`,
            channels 1 or 3.
        labels: int array `(n,)` with values in `[0, len(class_names))`.
        class_names: the class names, index = label.
        split: `"train"` or `"test"`. Defaults to `"train"`.
        shards: number of files, `1 <= shards <= n`. Defaults to `1`.
        image_format: `"png"` (lossless) or `"jpeg"` (quality 95). Defaults to `"png"`.

    Returns:
        The list of shard paths written.

    Example:

    >>> write_tfrecord_folder("/tmp/toy", np.zeros((4, 8, 8, 3), "uint8"), [0, 1, 0, 1], ["a", "b"])
    ['/tmp/toy/train-00000-of-00001.tfrecord']
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "`images` must be uint8 with shape (n, height, width[, 1 or 3]). "
            f"Received: images.dtype={images.dtype}, images.shape={images.shape}"
        )
    class_names = [str(name) for name in class_names]
    if labels.shape != (len(images),) or not np.all((labels >= 0) & (labels < len(class_names))):
        raise ValueError(
            f"`labels` must be {len(images)} ints in [0, {len(class_names)}). "
            f"Received: labels with shape {labels.shape}, range "
            f"[{labels.min() if labels.size else None}, {labels.max() if labels.size else None}]"
        )
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}. Received: split={split!r}")
    if (
        isinstance(shards, bool)
        or not isinstance(shards, int)
        or not 1 <= shards <= max(len(images), 1)
    ):
        raise ValueError(
            f"`shards` must be an int in [1, len(images)]. Received: shards={shards!r}"
        )
    if image_format not in ("png", "jpeg"):
        raise ValueError(
            f"`image_format` must be 'png' or 'jpeg'. Received: image_format={image_format!r}"
        )
    os.makedirs(path, exist_ok=True)
    classes_file = os.path.join(path, "classes.txt")
    if os.path.isfile(classes_file) and list(read_class_names(path)) != class_names:
        raise ValueError(
            f"`class_names` must match the existing {classes_file}. "
            f"Received: class_names={class_names!r}"
        )
    with open(classes_file, "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    paths = []
    for index, chunk in enumerate(np.array_split(np.arange(len(images)), shards)):
        file = os.path.join(path, f"{split}-{index:05d}-of-{shards:05d}.tfrecord")
        with tf.io.TFRecordWriter(file) as writer:
            for i in chunk:
                feature = {
                    "image": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[_encode(images[i], image_format)])
                    ),
                    "label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(labels[i])])
                    ),
                }
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(feature=feature)
                    ).SerializeToString()
                )
        paths.append(file)
    return paths
