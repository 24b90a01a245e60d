"""Unusable data raises `bk.data.DataError`: one line naming the file and the record.

Every case writes a real damaged copy of real CIFAR-10 records (from
../shared/data/cifar10) into `tmp_path`: a truncated shard, flipped bytes,
a record whose `image` is not an image or that lacks a feature, and labels
outside `[0, 10)` in the train part, the validation part and the test split.
The expected record index is found independently, by walking the TFRecord
framing (`length: uint64 | crc: uint32 | data | crc: uint32`) with `struct`.
"""

import os
import shutil
import struct

import pytest
import tensorflow as tf
from paths import CIFAR10_DIR  # noqa: E402

from bisam_keras import data
from bisam_keras.data.splitting import train_validation_split

CIFAR_DIR = CIFAR10_DIR
SHARD = os.path.join(CIFAR_DIR, "train-00000-of-00005.tfrecord")
NUM_TRAIN, NUM_TEST = 40, 10


@pytest.fixture(scope="module")
def real_records():
    """The first records of the real train and test shards, serialized."""
    train = [r.numpy() for r in tf.data.TFRecordDataset(SHARD).take(NUM_TRAIN)]
    test_file = os.path.join(CIFAR_DIR, "test-00000-of-00001.tfrecord")
    test = [r.numpy() for r in tf.data.TFRecordDataset(test_file).take(NUM_TEST)]
    return train, test


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _folder(tmp_path, train, test):
    """An offline folder with one train and one test shard of the given records."""
    shutil.copy(os.path.join(CIFAR_DIR, "classes.txt"), tmp_path / "classes.txt")
    train_file = _write(tmp_path / "train-00000-of-00001.tfrecord", train)
    test_file = _write(tmp_path / "test-00000-of-00001.tfrecord", test)
    return str(tmp_path), train_file, test_file


def _example(image=None, label=None):
    """A serialized `tf.train.Example`; a feature that is `None` is left out."""
    feature = {}
    if image is not None:
        feature["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    if label is not None:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _fields(record):
    example = tf.train.Example.FromString(record).features.feature
    return example["image"].bytes_list.value[0], example["label"].int64_list.value[0]


def _record_starts(file):
    """Byte offsets of the records of a TFRecord file, by its framing alone."""
    with open(file, "rb") as f:
        content = f.read()
    starts, offset = [], 0
    while offset + 8 <= len(content):
        starts.append(offset)
        (length,) = struct.unpack_from("<Q", content, offset)
        offset += 8 + 4 + length + 4
    return starts, len(content)


def _raises(match_file, call, *args, **kwargs):
    with pytest.raises(data.DataError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert match_file in message, message
    assert "\n" not in message, "a DataError is one line"
    return message


def _load(folder, **kwargs):
    return data.load("cifar10", data_dir=folder, batch_size=8, **kwargs)


# --------------------------------------------------------------- damaged shards


def test_truncated_shard_names_the_file_and_the_record(tmp_path, real_records):
    """`truncate -s 1M` of a real 9.7 MB shard: the record cut by the end of the file."""
    folder, _, _ = _folder(tmp_path, *real_records)
    file = str(tmp_path / "train-00000-of-00001.tfrecord")
    shutil.copy(SHARD, file)
    os.chmod(file, 0o644)
    os.truncate(file, 1 << 20)
    starts, size = _record_starts(file)
    cut = starts[-1]  # the last record that starts before the end ...
    (length,) = struct.unpack_from("<Q", open(file, "rb").read(), cut)
    assert cut + 16 + length > size  # ... does not fit in the file
    message = _raises(file, _load, folder)
    assert "truncated" in message and f"record {len(starts) - 1} (byte {cut})" in message
    _raises(file, data.read_tfrecord_folder, folder, "train")


@pytest.mark.parametrize("where", ["data", "header"])
def test_flipped_bytes_name_the_file_and_the_record(tmp_path, real_records, where):
    """Bytes flipped inside record 17's data or its length field: a CRC mismatch."""
    folder, train_file, _ = _folder(tmp_path, *real_records)
    starts, _ = _record_starts(train_file)
    offset = starts[17] + (12 + 300 if where == "data" else 2)
    with open(train_file, "r+b") as f:
        f.seek(offset)
        chunk = f.read(4)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in chunk))
    message = _raises(train_file, _load, folder)
    assert "corrupted" in message and f"record 17 (byte {starts[17]})" in message


def test_corrupted_test_shard_is_found_before_training(tmp_path, real_records):
    folder, _, test_file = _folder(tmp_path, *real_records)
    os.truncate(test_file, os.path.getsize(test_file) - 100)
    assert "truncated" in _raises(test_file, _load, folder)


# --------------------------------------------------------------- bad records


def test_record_whose_image_is_not_an_image(tmp_path, real_records):
    train, test = real_records
    _, label = _fields(train[5])
    train = train[:5] + [_example(b"this is not an image" * 5, label)] + train[6:]
    folder, train_file, _ = _folder(tmp_path, train, test)
    message = _raises(train_file, _load, folder)
    assert "record 5" in message and "not an encoded image" in message
    _raises(train_file, data.read_tfrecord_folder, folder, "train", decode_images=False)


@pytest.mark.parametrize("missing", ["image", "label"])
def test_record_that_lacks_a_feature(tmp_path, real_records, missing):
    train, test = real_records
    image, label = _fields(train[9])
    broken = _example(None, label) if missing == "image" else _example(image, None)
    folder, train_file, _ = _folder(tmp_path, train[:9] + [broken] + train[10:], test)
    message = _raises(train_file, _load, folder)
    assert f"record 9 lacks the feature `{missing}`" in message


def test_record_with_a_wrongly_typed_feature(tmp_path, real_records):
    train, test = real_records
    image, _ = _fields(train[3])
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"cat"])),
    }
    broken = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    folder, train_file, _ = _folder(tmp_path, train[:3] + [broken] + train[4:], test)
    assert "record 3 is not a tf.train.Example" in _raises(train_file, _load, folder)


def test_image_with_a_valid_header_that_does_not_decode(tmp_path, real_records):
    """A JPEG signature followed by garbage passes `verify="records"` but fails
    as a `DataError` when the pipeline decodes it; `verify="full"` names the record."""
    train, test = real_records
    image, label = _fields(train[7])
    garbage = image[:3] + bytes(range(256)) * 2
    train = train[:7] + [_example(garbage, label)] + train[8:]
    folder, train_file, _ = _folder(tmp_path, train, test)
    message = _raises(folder, _load, folder, validation_fraction=0.0)
    assert "does not decode (jpeg::Uncompress failed" in message, message
    assert "function_node" not in message and "Iterator::" not in message
    message = _raises(train_file, _load, folder, verify="full")
    assert "record 7: `image` does not decode: jpeg::Uncompress failed" in message, message


def test_cli_verify_flag_reaches_the_scan(tmp_path, real_records, capsys):
    """`bisam-keras train --verify full` names the record that does not decode,
    before any training; `--verify records` finds it only when decoding."""
    from bisam_keras import cli

    train, test = real_records
    image, label = _fields(train[7])
    train = train[:7] + [_example(image[:3] + bytes(range(256)) * 2, label)] + train[8:]
    (tmp_path / "data").mkdir()
    folder, train_file, _ = _folder(tmp_path / "data", train, test)
    errors = {}
    for level in ("full", "records"):
        output = tmp_path / f"runs-{level}"
        # The statistics of all training images: `load` decodes every one of them.
        args = ["train", "--dataset", "cifar10", "--data-dir", folder, "--stats-from", "all"]
        with pytest.raises(SystemExit) as info:
            cli.main([*args, "--verify", level, "--output", str(output), "--verbose", "0"])
        assert info.value.code == 1, "unusable data: exit status 1"
        errors[level] = capsys.readouterr().err
        assert "Traceback" not in errors[level]
        assert not list(output.rglob("history.csv")), "it failed before training"
    assert f"{train_file}: record 7: `image` does not decode" in errors["full"], errors["full"]
    assert f"{folder}: an image does not decode" in errors["records"], errors["records"]
    assert "`bisam-keras --verify full`" in errors["records"], errors["records"]


# --------------------------------------------------------------- labels


def _split_index(split):
    """A train-file record index that lands in the train or the validation part."""
    train_index, validation_index = train_validation_split(NUM_TRAIN, 0.1, seed=0)
    return int((train_index if split == "train" else validation_index)[0])


@pytest.mark.parametrize("label", [10, -1])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_label_outside_the_classes_in_every_split(tmp_path, real_records, split, label):
    """Before, train labels were folded in by `(label + offset) % 10` and test
    labels evaluated as they were."""
    train, test = (list(r) for r in real_records)
    records = test if split == "test" else train
    index = 4 if split == "test" else _split_index(split)
    image, _ = _fields(records[index])
    records[index] = _example(image, label)
    folder, train_file, test_file = _folder(tmp_path, train, test)
    file = test_file if split == "test" else train_file
    message = _raises(file, _load, folder)
    assert f"record {index} has label {label}, outside [0, 10)" in message
    _raises(file, data.read_tfrecord_folder, folder, "test" if split == "test" else "train")


def test_verify_none_skips_the_scan_and_bad_levels_are_refused(tmp_path, real_records):
    train, test = (list(r) for r in real_records)
    image, _ = _fields(test[2])
    test[2] = _example(image, 10)
    folder, _, _ = _folder(tmp_path, train, test)
    labels = [int(y) for _, y in data.read_tfrecord_folder(folder, "test", verify=None)]
    assert labels[2] == 10
    for bad in ("fast", True, 1):
        with pytest.raises(ValueError, match="`verify` must be one of"):
            _load(folder, verify=bad)


def test_clean_folder_passes_and_keeps_every_record(tmp_path, real_records):
    folder, _, _ = _folder(tmp_path, *real_records)
    for verify in ("records", "full"):
        splits = _load(folder, verify=verify)
        assert splits.num_train + splits.num_validation == NUM_TRAIN
        assert splits.num_test == NUM_TEST
    expected = [_fields(r)[1] for r in real_records[0]]
    assert [int(y) for _, y in data.read_tfrecord_folder(folder, "train")] == expected


def test_empty_train_split(tmp_path, real_records):
    folder, _, _ = _folder(tmp_path, [], real_records[1])
    assert "hold no records" in _raises(folder, _load, folder)


# --------------------------------------------------------------- subset


def test_subset_larger_than_the_training_set():
    """digits: 1,797 images, 359 held out as test: 1,438 training examples."""
    train_size = 1797 - 1797 // 5
    with pytest.raises(data.DataError, match=f"holds {train_size} examples"):
        data.load("digits", subset=100_000)
    with pytest.raises(data.DataError, match=f"holds {train_size} examples"):
        data.load("digits", subset=train_size + 1)
    splits = data.load("digits", subset=train_size)
    assert splits.num_train + splits.num_validation == train_size


def test_subset_larger_than_an_offline_folder(tmp_path, real_records):
    folder, _, _ = _folder(tmp_path, *real_records)
    with pytest.raises(data.DataError, match=f"holds {NUM_TRAIN} examples"):
        _load(folder, subset=NUM_TRAIN + 1)


@pytest.mark.parametrize("subset", [0, -5, 2.5, True])
def test_bad_subset_values_name_subset(subset):
    with pytest.raises(ValueError, match="`subset` must be None or an int >= 1") as info:
        data.load("digits", subset=subset)
    assert not isinstance(info.value, data.DataError)


# ------------------------------------------------------- the command line's view


@pytest.mark.parametrize("damage", ["truncated", "label"])
def test_command_line_reports_a_damaged_shard_in_one_line(tmp_path, real_records, capsys, damage):
    """`bisam-keras train` on a damaged real shard: one line naming the file, exit 1."""
    from bisam_keras import cli

    train, test = real_records
    if damage == "label":
        train = list(train)
        train[3] = _example(image=_fields(train[3])[0], label=10)
    (tmp_path / "data").mkdir()
    folder, train_file, _ = _folder(tmp_path / "data", train, test)
    if damage == "truncated":
        os.truncate(train_file, os.path.getsize(train_file) - 100)
    output = tmp_path / "runs"
    argv = ["train", "--dataset", "cifar10", "--data-dir", folder, "--output", str(output)]
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--epochs", "1", "--verbose", "0"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("bisam-keras train: error: ") and train_file in err, err
    assert not output.exists()  # nothing to --resume was left behind


# --------------------------------------------------------------- classes.txt


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda names: names[:3] + [""] + names[3:], "line 4 is blank"),
        (lambda names: names[:3] + ["  "] + names[3:], "line 4 is blank"),
        (lambda names: names[:5] + [names[1]] + names[6:], "line 6 repeats 'automobile' of line 2"),
    ],
)
def test_classes_txt_with_a_blank_or_repeated_line(tmp_path, real_records, edit, expected):
    """A blank line would shift every class name after it by one label."""
    folder, _, _ = _folder(tmp_path, *real_records)
    classes = tmp_path / "classes.txt"
    names = classes.read_text().splitlines()
    classes.write_text("\n".join(edit(names)) + "\n")
    message = _raises(str(classes), _load, folder)
    assert expected in message, message


def test_classes_txt_may_end_with_blank_lines(tmp_path, real_records):
    folder, _, _ = _folder(tmp_path, *real_records)
    classes = tmp_path / "classes.txt"
    names = classes.read_text().splitlines()
    classes.write_text("\r\n".join(names) + "\r\n\n  \n")
    assert _load(folder).class_names == tuple(names)


# --------------------------------------------------------------- image sizes


def _png_example(height, width, channels, label=0):
    image = tf.zeros([height, width, channels], tf.uint8) + 100
    return _example(tf.io.encode_png(image).numpy(), label)


def _jpeg_example(record, channels):
    """`record`'s image decoded and re-encoded as a JPEG with `channels` channels."""
    image, label = _fields(record)
    pixels = tf.io.decode_jpeg(image, channels=channels)
    return _example(tf.io.encode_jpeg(pixels).numpy(), label)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("gray-jpeg", "is a 32x32x1 image, but"),
        ("small-png", "is a 28x28x3 image, but"),
    ],
)
def test_test_images_of_another_shape_are_found_before_training(
    tmp_path, real_records, kind, expected
):
    """CIFAR-10 is not resized: a test image of another size or channel count
    than the training images fails before training, naming the file and record."""
    train, test = (list(r) for r in real_records)
    test[4] = _jpeg_example(test[4], 1) if kind == "gray-jpeg" else _png_example(28, 28, 3)
    folder, train_file, test_file = _folder(tmp_path, train, test)
    for verify in ("records", "full"):
        message = _raises(f"{test_file}: record 4 ", _load, folder, verify=verify)
        assert expected in message and f"{train_file} record 0 is 32x32x3" in message, message


@pytest.mark.parametrize("verify", ["records", "full"])
def test_mixed_image_sizes_in_the_training_split_name_the_record(tmp_path, real_records, verify):
    train, test = (list(r) for r in real_records)
    train[9] = _png_example(30, 32, 3)
    folder, train_file, _ = _folder(tmp_path, train, test)
    message = _raises(f"{train_file}: record 9 is a 30x32x3 image, but", _load, folder,
                      verify=verify)  # fmt: skip
    assert "does not decode" not in message


def test_command_line_refuses_mixed_shapes_before_training(tmp_path, real_records, capsys):
    from bisam_keras import cli

    train, test = (list(r) for r in real_records)
    test[0] = _jpeg_example(test[0], 1)
    (tmp_path / "data").mkdir()
    folder, _, test_file = _folder(tmp_path / "data", train, test)
    output = tmp_path / "runs"
    argv = ["train", "--dataset", "cifar10", "--data-dir", folder, "--output", str(output)]
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--epochs", "1", "--batch-size", "16", "--verbose", "0"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"bisam-keras train: error: {test_file}: record 0 is a 32x32x1 image")
    assert not output.exists()  # nothing to --resume was left behind
