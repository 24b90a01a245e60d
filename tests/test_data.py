"""Tests of `bisam_keras.data` against independent NumPy computations."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from paths import CIFAR10_DIR  # noqa: E402

from bisam_keras import data

CIFAR_DIR = CIFAR10_DIR
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _unbatch(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def _index_images(n, shape=(4, 4, 3)):
    """Images whose every pixel holds the example's index (recoverable after normalization)."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, *shape)).copy()


# ---------------------------------------------------------------- augmentation


def test_cifar_augment_is_a_shift_of_the_padded_image_and_flips_half_the_time():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    padded = np.pad(image.astype(np.float32), [(4, 4), (4, 4), (0, 0)])
    windows = {
        (dy, dx, flip): (
            padded[dy : dy + 32, dx : dx + 32][:, ::-1]
            if flip
            else padded[dy : dy + 32, dx : dx + 32]
        )
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
    }
    seeds = tf.data.Dataset.random(seed=1).batch(2).take(400)
    outputs = [x.numpy() for x in seeds.map(lambda s: data.cifar_augment(image, s))]
    found = []
    for out in outputs:
        assert out.shape == (32, 32, 3)
        matches = [k for k, w in windows.items() if np.array_equal(out, w)]
        assert matches, "augmented image is not a +-4 px shift (or its mirror) of the padded image"
        found.append(matches[0])
    flips = np.mean([k[2] for k in found])
    assert 0.43 < flips < 0.57  # 400 Bernoulli(1/2): 3.5 sigma
    assert {k[0] for k in found} == set(range(9)) and {k[1] for k in found} == set(range(9))
    seed = tf.constant([3, 4], tf.int64)
    np.testing.assert_array_equal(data.cifar_augment(image, seed), data.cifar_augment(image, seed))


def test_imagenet_preprocess_shapes_and_center_crop():
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3)).astype(np.uint8)
    train = data.imagenet_train_preprocess(image, 64, seed=tf.constant([1, 2]))
    assert train.shape == (64, 64, 3) and train.dtype == tf.float32
    # Shorter side 100 -> round(64 / 0.875) = 73: the center crop keeps the middle.
    gradient = np.tile(np.arange(200, dtype=np.float32)[None, :, None], (100, 1, 3))
    out = data.imagenet_eval_preprocess(gradient, 64).numpy()
    assert out.shape == (64, 64, 3)
    assert abs(out[:, 31:33].mean() - 99.5) < 2.0  # middle column maps back to x ~ 100
    np.testing.assert_allclose(out[:, :, 0], out[:, :, 0][:1].repeat(64, 0))


# ------------------------------------------------------------ normalization


def test_channel_stats_matches_numpy_for_arrays_and_datasets():
    x = np.random.default_rng(0).normal([10.0, 20.0, 30.0], [1.0, 2.0, 3.0], (50, 6, 5, 3))
    expected_mean, expected_std = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)
    for stats in (
        data.channel_stats(x),
        data.channel_stats(tf.data.Dataset.from_tensor_slices((x, np.zeros(50)))),
    ):
        # channel_stats accumulates in float64 (gamma_64(n) ~ 1e-11 for these n): rtol 1e-9;
        # the std of a float32 dataset is taken in float32 once: 1e-6 (a few roundings + sqrt).
        np.testing.assert_allclose(stats[0], expected_mean, rtol=1e-9)
        np.testing.assert_allclose(stats[1], expected_std, rtol=1e-6)


def test_every_split_is_normalized_with_the_train_part_statistics():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 8, 8, 3)).astype(np.uint8)
    x_test = (rng.integers(0, 256, (40, 8, 8, 3)) // 2).astype(np.uint8)
    y, y_test = rng.integers(0, 10, 200), rng.integers(0, 10, 40)
    splits = data.from_arrays(x, y, x_test, y_test, batch_size=32, augment=False, seed=3)
    train_index, _ = data.train_validation_split(200, 0.1, seed=3)
    pixels = x[train_index].reshape(-1, 3).astype(np.float64)
    mean, std = pixels.mean(0), pixels.std(0)
    # Statistics accumulated in float64 (see above): rtol 1e-9.
    np.testing.assert_allclose(splits.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(splits.std, std, rtol=1e-9)
    train_images, _ = _unbatch(splits.train)
    # float32 images, (x - mean) / std with 2 roundings (|x_hat| <= ~4), then NumPy's pairwise
    # float32 mean: gamma(16 + log2 n) of mean|x_hat| (< 1e-5); std likewise: atol 1e-4.
    np.testing.assert_allclose(train_images.reshape(-1, 3).mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train_images.reshape(-1, 3).std(0), 1.0, atol=1e-4)
    test_images, test_labels = _unbatch(splits.test)
    # Two float32 roundings of |x - mean| / std <= ~1e2 (uint8 pixels): 2 u * 1e2 = 1.2e-5
    # at most, which rtol 1e-5 of |x_hat| ~ 1e2 covers; atol 1e-5 where x ~ mean.
    np.testing.assert_allclose(test_images, (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(test_labels, y_test)


# ---------------------------------------------------------------- splitting


def test_train_validation_split_is_90_10_disjoint_complete_and_seeded():
    train, val = data.train_validation_split(50_000, 0.1, seed=0)
    assert (len(train), len(val)) == (45_000, 5_000)
    assert not np.intersect1d(train, val).size
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(50_000))
    again = data.train_validation_split(50_000, 0.1, seed=0)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(data.train_validation_split(50_000, 0.1, seed=1)[1], val)


def test_corrupt_labels_exact_fraction_different_labels_uniform_and_seeded():
    labels = np.random.default_rng(0).integers(0, 10, 20_000)
    noisy, corrupted = data.corrupt_labels(labels, 0.4, 10, seed=7)
    assert corrupted.sum() == 8_000
    assert np.all(noisy[corrupted] != labels[corrupted])
    np.testing.assert_array_equal(noisy[~corrupted], labels[~corrupted])
    # Uniform over the other classes <=> the shift new - old is uniform on 1..9.
    shift = (noisy[corrupted] - labels[corrupted]) % 10
    counts = np.bincount(shift, minlength=10)
    assert counts[0] == 0
    # Multinomial counts, n = 8000, p = 1/9: sd = sqrt(n p (1 - p)) = 28 = 3.2% of 889;
    # 0.12 is 3.8 sd (a fixed seed: not a float tolerance).
    np.testing.assert_allclose(counts[1:], 8_000 / 9, rtol=0.12)
    np.testing.assert_array_equal(data.corrupt_labels(labels, 0.4, 10, seed=7)[0], noisy)
    assert not np.array_equal(data.corrupt_labels(labels, 0.4, 10, seed=8)[0], noisy)


def test_pipeline_label_noise_touches_only_the_train_part():
    n, n_test, num_classes, seed = 300, 60, 5, 11
    y = np.arange(n) % num_classes
    y_test = np.arange(n_test) % num_classes
    splits = data.from_arrays(
        _index_images(n), y, _index_images(n_test) + n, y_test,
        label_noise=0.3, seed=seed, augment=False, batch_size=64,
    )  # fmt: skip

    def labels_by_index(dataset):
        images, labels = _unbatch(dataset)
        index = np.rint(images[:, 0, 0, 0] * splits.std[0] + splits.mean[0]).astype(int)
        order = np.argsort(index)
        return index[order], labels[order]

    train_index, train_labels = labels_by_index(splits.train)
    val_index, val_labels = labels_by_index(splits.validation)
    expected_train, expected_val = data.train_validation_split(n, 0.1, seed)
    np.testing.assert_array_equal(train_index, expected_train)
    np.testing.assert_array_equal(val_index, expected_val)
    changed = train_labels != y[train_index]
    assert (
        changed.sum()
        == round(0.3 * len(train_index))
        == round(splits.noisy_label_fraction * splits.num_train)
    )
    np.testing.assert_array_equal(
        train_labels, data.corrupt_labels(y[train_index], 0.3, num_classes, seed)[0]
    )
    np.testing.assert_array_equal(val_labels, y[val_index])
    test_index, test_labels = labels_by_index(splits.test)
    np.testing.assert_array_equal(test_labels, y_test[test_index - n])
    # Same seed, same noisy labels; new batches are reshuffled but hold the same examples.
    again = data.from_arrays(_index_images(n), y, label_noise=0.3, seed=seed, augment=False)
    np.testing.assert_array_equal(labels_by_index(again.train)[1], train_labels)


def test_drop_remainder_drops_the_last_train_batch_only():
    # 100 images: a 90/10 split, then 90 train examples in batches of 16 is
    # 5 full batches (80 examples) and a remainder of 10.
    n, n_test = 100, 20
    kwargs = dict(batch_size=16, augment=False, seed=5)
    y, y_test = np.arange(n) % 4, np.arange(n_test) % 4
    arrays = (_index_images(n), y, _index_images(n_test) + n, y_test)
    splits = data.from_arrays(*arrays, drop_remainder=True, **kwargs)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (90, 10, 20)
    assert int(splits.train.cardinality()) == 5
    assert splits.train.element_spec[0].shape[0] == 16  # static: mSAM checks it when tracing

    def indices(dataset):
        images = np.concatenate([x.numpy() for x, _ in dataset])
        return np.rint(images[:, 0, 0, 0] * splits.std[0] + splits.mean[0]).astype(int)

    expected_train, expected_val = data.train_validation_split(n, 0.1, seed=5)
    epochs = []
    for _ in range(4):
        sizes = [int(x.shape[0]) for x, _ in splits.train]
        assert sizes == [16] * 5
        epoch = indices(splits.train)
        assert len(set(epoch)) == 80 and set(epoch) <= set(expected_train)
        epochs.append(set(epoch))
    # Each epoch drops a different remainder (the shuffle depends on the epoch).
    assert len(set.union(*epochs)) > 80
    # Validation and test keep every example, last partial batch included.
    assert [int(x.shape[0]) for x, _ in splits.validation] == [10]
    assert [int(x.shape[0]) for x, _ in splits.test] == [16, 4]
    np.testing.assert_array_equal(np.sort(indices(splits.validation)), expected_val)
    np.testing.assert_array_equal(np.sort(indices(splits.test)), np.arange(n, n + n_test))
    # The default keeps the remainder of the training split too.
    kept = data.from_arrays(*arrays, **kwargs)
    assert [int(x.shape[0]) for x, _ in kept.train] == [16] * 5 + [10]


def test_load_passes_drop_remainder_to_the_train_split():
    # Digits: 1797 images, 359 (= 1797 // 5) held out as test; the 1438 left
    # split into 144 (= round(143.8)) validation and 1294 train examples:
    # 10 full batches of 128 and a remainder of 14.
    splits = data.load("digits", batch_size=128, drop_remainder=True)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (1294, 144, 359)
    assert [int(x.shape[0]) for x, _ in splits.train] == [128] * 10
    assert sum(int(x.shape[0]) for x, _ in splits.validation) == 144
    assert sum(int(x.shape[0]) for x, _ in splits.test) == 359
    assert [int(x.shape[0]) for x, _ in data.load("digits", batch_size=128).train][-1] == 14


def test_drop_remainder_needs_one_full_batch_and_a_bool():
    with pytest.raises(ValueError, match=r"`batch_size`.*1294 training.*Received: batch_size=2000"):
        data.load("digits", batch_size=2000, drop_remainder=True)
    with pytest.raises(ValueError, match=r"`drop_remainder`.*Received: drop_remainder='yes'"):
        data.load("digits", drop_remainder="yes")


# ---------------------------------------------------------------- sources


def test_offline_folder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 12, 12, 3)).astype(np.uint8), rng.integers(0, 3, 60)
    x_test, y_test = rng.integers(0, 256, (15, 12, 12, 3)).astype(np.uint8), rng.integers(0, 3, 15)
    names = ["cat", "dog", "owl"]
    data.write_tfrecord_folder(tmp_path, x, y, names, split="train", shards=3)
    data.write_tfrecord_folder(tmp_path, x_test, y_test, names, split="test")
    images, labels = zip(
        *[(a.numpy(), b.numpy()) for a, b in data.read_tfrecord_folder(tmp_path, "train")]
    )
    np.testing.assert_array_equal(np.stack(images), x)
    np.testing.assert_array_equal(labels, y)
    splits = data.load("cifar10", data_dir=str(tmp_path), batch_size=8, subset=50)
    assert splits.class_names == tuple(names) and splits.num_classes == 3
    assert (splits.num_train, splits.num_validation, splits.num_test) == (45, 5, 10)
    assert splits.input_shape == (12, 12, 3)
    test_images, test_labels = _unbatch(splits.test)
    # Undoing a float32 normalization: 4 roundings of values <= 255: 4 u * 255 = 6e-5.
    np.testing.assert_allclose(
        test_images * splits.std + np.array(splits.mean), x_test[:10], atol=1e-3
    )
    np.testing.assert_array_equal(test_labels, y_test[:10])
    assert next(iter(splits.train))[0].shape == (8, 12, 12, 3)


@pytest.mark.skipif(
    not os.path.isdir(CIFAR_DIR), reason=f"real CIFAR-10 folder {CIFAR_DIR} is missing"
)
def test_real_cifar10_folder_loads():
    splits = data.load("cifar10", data_dir=CIFAR_DIR, subset=1000, batch_size=100, label_noise=0.1)
    assert splits.num_classes == 10 and splits.class_names == CIFAR_CLASSES
    assert (splits.num_train, splits.num_validation, splits.num_test) == (900, 100, 200)
    assert splits.input_shape == (32, 32, 3) and splits.noisy_label_fraction == 0.1
    assert all(90 < m < 140 for m in splits.mean) and all(50 < s < 80 for s in splits.std)
    images, labels = next(iter(splits.train))
    assert images.shape == (100, 32, 32, 3) and images.dtype == tf.float32
    assert set(np.unique(labels)) <= set(range(10))


def test_digits_is_the_offline_default():
    splits = data.load("digits", batch_size=256, augment=True)
    assert splits.input_shape == (8, 8, 1) and splits.num_classes == 10
    assert splits.num_train + splits.num_validation + splits.num_test == 1797
    images, _ = _unbatch(splits.train)
    # Float32 normalization and NumPy's pairwise mean, as above: < 1e-5 off; not augmented.
    assert abs(images.mean()) < 1e-4 and abs(images.std() - 1) < 1e-4


@pytest.mark.parametrize("name, kwargs, shape", [
    ("cifar10", {}, (32, 32, 3)),
    ("oxford_flowers102", {"image_size": 48}, (48, 48, 3)),
])  # fmt: skip
def test_tfds_with_mock_data(name, kwargs, shape):
    with tfds.testing.mock_data(num_examples=40):
        splits = data.load(name, batch_size=8, **kwargs)
        assert (splits.num_train, splits.num_validation, splits.num_test) == (36, 4, 40)
        assert splits.input_shape == shape
        for dataset in (splits.train, splits.test):
            images, labels = next(iter(dataset))
            assert images.shape == (8, *shape) and labels.shape == (8,)


def test_missing_imagenet_fails_fast_with_instructions(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="downloads/manual"):
        data.load("imagenet2012", tfds_dir=str(tmp_path))


# ---------------------------------------------------------------- bad input


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match=r"`name`.*digits.*cifar10.*Received: name='mnist'"):
        data.load("mnist")
    assert "digits" in data.names() and "imagenet2012" in data.names()


def test_bad_data_dir(tmp_path):
    with pytest.raises(ValueError, match="`data_dir`.*Received: data_dir="):
        data.load("cifar10", data_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="`data_dir`.*shards"):
        data.load("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize("kwargs, arg", [
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"validation_fraction": -0.1}, "validation_fraction"),
    ({"label_noise": 1.5}, "label_noise"),
    ({"label_noise": -0.5}, "label_noise"),
    ({"batch_size": 0}, "batch_size"),
    ({"subset": 0}, "subset"),
    ({"image_size": 64}, "image_size"),
])  # fmt: skip
def test_bad_arguments_name_the_argument(kwargs, arg):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=f"`{arg}`.*Received: {arg}={value}"):
        data.load("digits", **kwargs)
