"""An up-front scan of TFRecord shards, so that bad data fails before training.

`verify_shards(files, num_classes, level)` reads every record of every shard
once and raises `DataError` (one line naming the file and the record) for

- a truncated shard (the file ends inside a record) or a corrupted one (a
  record's CRC-32C checksum does not match: flipped bytes);
- a record that is not a `tf.train.Example` with an `image` (bytes) and a
  `label` (int64) feature, or that lacks one of them;
- a label outside `[0, num_classes)`;
- an `image` that is not an encoded image: its first bytes are not a JPEG,
  PNG, GIF, BMP or WebP signature (`level="records"`), or it does not decode
  (`level="full"`, which decodes every image and costs far more).

The scan also notes each image's shape, `(height, width, channels)`: from the
header of a PNG or a JPEG (`level="records"`: a JPEG whose frame header lies
beyond its first 4 KiB, and the other formats, go unchecked) or from the
decoded image (`level="full"`). `check_image_shapes` then raises `DataError`
for the first image whose shape differs from the others, for the datasets
that use images at their stored size.

Levels (`verify=` of `load` and `read_tfrecord_folder`):

| level | checks | CIFAR-10 (60,000 images), 2-core AMD EPYC |
| --- | --- | --- |
| `"records"` (default) | checksums, features, labels, image signatures | 0.7-1.6 s |
| `"full"` | the same, and decodes every image | 10-20 s |
| `None` | nothing | 0 |

A file passes a level once per process (keyed by path, size and
modification time), so loading the same folder again does not rescan it.
"""

import os
import re

import numpy as np
import tensorflow as tf

from bisam_keras.data.errors import DataError

LEVELS = ("records", "full", None)
_BATCH = 1024
_NO_LABEL = np.iinfo(np.int64).min
# The signatures `tf.io.decode_image` recognizes (its own format sniffing).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")
_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=_NO_LABEL),
}
_HEADER_BYTES = 4096  # read of each image at level "records": signature and size
_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF markers (not DHT, JPG, DAC)
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # by colour type; a palette's (3) depends on tRNS
_VERIFIED = {}  # key -> number of records
_SHAPES = {}  # (path, size, mtime, level) -> {shape: index of its first record}


def check_level(verify):
    """Raises `ValueError` naming `verify` unless it is one of `LEVELS`."""
    if not (verify is None or isinstance(verify, str)) or verify not in LEVELS:
        raise ValueError(f"`verify` must be one of {list(LEVELS)}. Received: verify={verify!r}")


def tf_reason(error):
    """The last, informative part of a TensorFlow error message, on one line.

    Drops the `{{function_node ...}}` and `Error in user-defined function ...
    Iterator::...:` prefixes that tf.data puts before the op's own message.
    """
    message = " ".join(str(getattr(error, "message", error)).split())
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = message.split("transformation with iterator: ")[-1]
    message = re.sub(r"^(\w*Iterator::\S+: )", "", message)
    message = re.sub(r"\s*\[Op:\w+\].*$", "", message)
    return message[:200]


def _is_image(head):
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _jpeg_shape(data):
    """`(height, width, channels)` from a JPEG's frame header, or `None` if not in `data`."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_FRAMES:
            height, width = (int.from_bytes(data[j : j + 2], "big") for j in (i + 5, i + 7))
            return height, width, data[i + 9]
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def header_shape(head):
    """`(height, width, channels)` of a PNG or JPEG from its first bytes, else `None`.

    A palette PNG's channel count (3, or 4 with transparency) is `-1`, unknown.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 26:
        width, height = (int.from_bytes(head[j : j + 4], "big") for j in (16, 20))
        return height, width, _PNG_CHANNELS.get(head[25], -1)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_shape(head)
    return None


def _record_starts(file, stop):
    """Byte offsets of the records of `file` that start before byte `stop`.

    Reads only the 12-byte headers (length, length checksum) of the TFRecord
    framing `length | crc(length) | data | crc(data)`.
    """
    starts, offset, size = [], 0, os.path.getsize(file)
    with open(file, "rb") as f:
        while offset < min(stop, size):
            starts.append(offset)
            f.seek(offset)
            header = f.read(8)
            if len(header) < 8:
                break
            offset += 16 + int.from_bytes(header, "little")
    return starts


def _record_at(file, byte):
    """`'record N (byte B)'` for the record at `byte` of a TensorFlow error.

    TensorFlow reports a bad header at the record's first byte and bad data
    at its first data byte, 12 bytes (length and its checksum) later.
    """
    starts = _record_starts(file, byte + 1)
    for start in (byte, byte - 12):
        if start in starts:
            return f"record {starts.index(start)} (byte {start})"
    return f"the record at byte {byte}"


def _read_error(file, error):
    """A one-line `DataError` for a `DataLossError` of TFRecord reading."""
    message = str(error)
    found = re.search(r"record at (\d+)", message)
    where = _record_at(file, int(found.group(1))) if found else "a record"
    size = os.path.getsize(file)
    if "truncated" in message:
        return DataError(
            f"{file}: {where} is truncated: the file ends at byte {size} inside it "
            "(an incomplete copy or download?)"
        )
    if "corrupted" in message:
        return DataError(
            f"{file}: {where} is corrupted: its CRC-32C checksum does not match "
            "(damaged bytes; copy the file again)"
        )
    first = message.strip().splitlines()[-1] if message.strip() else type(error).__name__
    return DataError(f"{file}: cannot be read as TFRecord: {first}")


def _parse_error(file, first_index, records):
    """A `DataError` for the first record of `records` that does not parse."""
    for offset, record in enumerate(records):
        try:
            tf.io.parse_single_example(record, _SPEC)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            reason = str(error).strip().splitlines()[0][:200]
            return DataError(
                f"{file}: record {first_index + offset} is not a tf.train.Example with "
                f"features `image` (bytes) and `label` (int64): {reason}"
            )
    return DataError(f"{file}: records {first_index}-{first_index + len(records) - 1} do not parse")


def _check_batch(file, first, heads, labels, num_classes):
    """Raises `DataError` for the first bad record of one parsed batch."""
    bad_label = labels == _NO_LABEL
    if bad_label.any():
        index = first + int(np.argmax(bad_label))
        raise DataError(f"{file}: record {index} lacks the feature `label`")
    empty = np.array([len(h) == 0 for h in heads])
    if empty.any():
        index = first + int(np.argmax(empty))
        raise DataError(f"{file}: record {index} lacks the feature `image` (or it is empty)")
    high = np.inf if num_classes is None else num_classes
    out = (labels < 0) | (labels >= high)
    if out.any():
        i = int(np.argmax(out))
        bound = "" if num_classes is None else f", {num_classes}"
        known = "" if num_classes is None else f" ({num_classes} classes in classes.txt)"
        raise DataError(
            f"{file}: record {first + i} has label {int(labels[i])}, outside [0{bound}){known}"
        )
    for i, head in enumerate(heads):
        if not _is_image(head):
            raise DataError(
                f"{file}: record {first + i}: `image` is not an encoded image (JPEG, PNG, "
                f"GIF, BMP or WebP); it starts with {head[:8]!r}"
            )


def _decoded_shapes(file):
    """`(indices, shapes)` of the records of `file` whose image decodes, in order."""

    def decoded(index, record):
        image = tf.io.parse_single_example(record, _SPEC)["image"]
        shape = tf.shape(tf.io.decode_image(image, expand_animations=False))
        return index, shape

    ok = (
        tf.data.TFRecordDataset(file)
        .enumerate()
        .map(decoded, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(_BATCH)
    )
    indices, shapes = [np.zeros(0, np.int64)], [np.zeros((0, 3), np.int32)]
    for index, shape in ok:
        indices.append(index.numpy())
        shapes.append(shape.numpy())
    return np.concatenate(indices), np.concatenate(shapes)


def _first_of_each(shapes, first_index=0):
    """`{shape: index}`: each shape of the rows of `shapes` (`None` rows skipped) and the
    index of its first row, counted from `first_index`."""
    found = {}
    for index, shape in enumerate(shapes, start=first_index):
        if shape is not None:
            found.setdefault(tuple(int(n) for n in shape), index)
    return found


def verify_shard(file, num_classes=None, level="records"):
    """Scans one TFRecord shard; returns its number of records.

    Args:
        file: the path of the shard.
        num_classes: labels must lie in `[0, num_classes)`; `None` only
            requires them `>= 0`. Defaults to `None`.
        level: `"records"` or `"full"` (see the module docstring). Defaults
            to `"records"`.

    Returns:
        The number of records in `file`.

    Raises:
        DataError: for the first bad record, naming `file` and the record.
    """
    check_level(level)
    if level is None:
        return None
    stat = os.stat(file)
    key = (os.path.abspath(file), stat.st_size, stat.st_mtime_ns, num_classes, level)
    for known in (key, key[:-1] + ("full",)):  # a "full" pass covers "records"
        if known in _VERIFIED:
            return _VERIFIED[known]

    def parse(records):
        example = tf.io.parse_example(records, _SPEC)
        return tf.strings.substr(example["image"], 0, _HEADER_BYTES), example["label"]

    raw = tf.data.TFRecordDataset(file).batch(_BATCH)
    count, shapes = 0, {}
    iterator = iter(raw)
    while True:
        try:
            records = next(iterator)
        except StopIteration:
            break
        except tf.errors.DataLossError as error:
            raise _read_error(file, error) from None
        try:
            heads, labels = parse(records)
        except tf.errors.InvalidArgumentError:
            raise _parse_error(file, count, records.numpy()) from None
        heads = heads.numpy().tolist()
        _check_batch(file, count, heads, labels.numpy(), num_classes)
        for shape, index in _first_of_each(map(header_shape, heads), count).items():
            shapes.setdefault(shape, index)
        count += len(labels)
    if level == "full":
        indices, decoded = _decoded_shapes(file)
        failures = np.setdiff1d(np.arange(count), indices)
        if failures.size:
            record = raw.unbatch().skip(int(failures[0])).take(1).get_single_element()
            image = tf.io.parse_single_example(record, _SPEC)["image"]
            try:
                tf.io.decode_image(image, expand_animations=False)
                reason = "it failed to decode"
            except tf.errors.InvalidArgumentError as error:
                reason = tf_reason(error)
            raise DataError(f"{file}: record {int(failures[0])}: `image` does not decode: {reason}")
        shapes = {shape: int(indices[i]) for shape, i in _first_of_each(decoded).items()}
    _VERIFIED[key] = count
    _SHAPES[key[:3] + (level,)] = shapes
    return count


def verify_shards(files, num_classes=None, level="records"):
    """Scans TFRecord shards with `verify_shard`; returns their record counts.

    Raises:
        DataError: for the first bad record, naming its file and index.
    """
    return [verify_shard(file, num_classes, level) for file in files]


def _shapes_of(file, level):
    """`{shape: first record}` of `file` at `level` (a `"full"` scan covers `"records"`)."""
    stat = os.stat(file)
    key = (os.path.abspath(file), stat.st_size, stat.st_mtime_ns)
    for known in (key + (level,), key + ("full",)):
        if known in _SHAPES:
            return _SHAPES[known]
    verify_shard(file, None, level)
    return _SHAPES[key + (level,)]


def _shape_text(shape):
    return "x".join("?" if n < 0 else str(n) for n in shape)


def _compatible(a, b):
    return all(x == y or x < 0 or y < 0 for x, y in zip(a, b))


def check_image_shapes(files, dataset, level="records"):
    """Raises `DataError` unless every image of `files` has one shape.

    For the datasets whose images are used at their stored size (CIFAR), an
    image of another height, width or channel count than the others would
    stop the run at the first batch or evaluation that holds it. The shapes
    are those `verify_shard` notes at `level` (see the module docstring).

    Args:
        files: the shards of every split, in order.
        dataset: the dataset's name, for the message.
        level: `"records"` or `"full"`; `None` checks nothing. Defaults to
            `"records"`.

    Raises:
        DataError: naming the first image of another shape (its file and
            record) and the image it differs from.
    """
    check_level(level)
    if level is None:
        return
    seen = []
    for file in files:
        shapes = _shapes_of(file, level)
        seen += sorted((index, file, shape) for shape, index in shapes.items())
    known = [entry for entry in seen if min(entry[2]) >= 0]
    if not known:
        return
    ref_index, ref_file, ref_shape = known[0]
    for index, file, shape in seen:
        if not _compatible(shape, ref_shape):
            raise DataError(
                f"{file}: record {index} is a {_shape_text(shape)} image, but {ref_file} record "
                f"{ref_index} is {_shape_text(ref_shape)}: {dataset} uses images at their stored "
                "size, so every image of the train and test shards needs the same height, "
                "width and channels"
            )
