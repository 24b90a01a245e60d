"""The authors' training script (LIONS-EPFL/BiSAM `train.py`) as options, each against NumPy.

Every expected value here is computed in NumPy (float64) from the authors'
code as written (`loss_fnc.py`, `utility/sam.py`, `utility/cutout.py`,
`utility/cifar.py`, PyTorch's `SGD` and `CosineAnnealingLR`), never with the
code under test. Where PyTorch is installed, the NumPy re-implementations are
also checked against PyTorch itself (and, where the authors' checkout is
present, against their `Cutout`).

Tolerances: the package computes in float32. One step of the two-layer MLP
below involves sums of at most a few dozen terms of size <= ~10, so float32
round-off (eps = 6e-8) stays well below `RTOL = 1e-5, ATOL = 1e-6`, the bounds
that `tests/test_algorithm.py` uses for the same model; schedule values are
one float32 rounding of a float64 value (relative 6e-8 < 1e-6).
"""

import importlib.util
import json
import math
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk
from bisam_keras import cli
from bisam_keras.data import augment, splitting
from bisam_keras.experiments import presets, runner
from bisam_keras.optimizers import EpochCosineDecay, TorchSGD

sys.path.insert(0, os.path.dirname(__file__))
import numpy_reference as ref  # noqa: E402
from paths import AUTHORS_REFERENCE  # noqa: E402

IN, HIDDEN, K, B = 5, 7, 4, 12
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _fresh_session():
    keras.backend.clear_session()
    yield


# --------------------------------------------------------------------------- #
# NumPy: the authors' code, transcribed.
# --------------------------------------------------------------------------- #


def authors_targets(y, num_classes, smoothing):
    """`smooth_crossentropy`'s target: `1 - s` on the label, `s / (K - 1)` elsewhere."""
    t = np.full((len(y), num_classes), smoothing / (num_classes - 1))
    t[np.arange(len(y)), y] = 1.0 - smoothing
    return t


def authors_smooth_ce(f, y, smoothing):
    """Per-example `kl_div(log_softmax(f), t).sum(-1)` and its gradient `softmax(f) - t`."""
    t = authors_targets(y, f.shape[1], smoothing)
    logp = f - ref._logsumexp(f)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_log_t = np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0)
    return (t_log_t - t * logp).sum(1), ref._softmax(f) - t


def numpy_cutout(image, apply, top, left, size=16):
    """`utility/cutout.py` on an HWC image, given its draws (`left` there is our `top`)."""
    out = np.array(image, copy=True)
    if apply:
        h, w = out.shape[:2]
        out[max(0, top) : min(h, top + size), max(0, left) : min(w, left + size)] = 0
    return out


def authors_step(params, x, y, cfg, state):
    """One step of `train.py` (SAM/BiSAM `first_step`, `second_step`, torch SGD).

    `cfg`: method (`"sgd"`, `"sam"`, `"neglog"`, `"tanh"`), smoothing, rho, mu,
    alpha, wd, momentum, lr. `state["buf"]` holds PyTorch's momentum buffers.
    Variants that the package must *not* match (to show the test can fail):
    `cfg["momentum_form"] = "keras"`, `cfg["decay_at"] = "w+e"`.
    """
    w = [np.asarray(p, np.float64) for p in params]
    s = cfg["smoothing"]
    b = len(y)
    if cfg["method"] == "sgd":
        f, cache = ref.forward(w, x)
        point, grads = w, ref.backward(w, cache, authors_smooth_ce(f, y, s)[1] / b)
    else:
        f, cache = ref.forward(w, x)
        if cfg["method"] == "sam":
            d_ascent = authors_smooth_ce(f, y, s)[1]
        else:
            # perturbation_loss_log / _tanh: logsumexp(mu * phi(F)), no 1/mu, no log K.
            _, dq = ref.lower_bound(f, y, cfg["method"], cfg["mu"], cfg["alpha"])
            d_ascent = cfg["mu"] * dq
        ascent = ref.backward(w, cache, d_ascent / b)
        norm = math.sqrt(sum(float((g * g).sum()) for g in ascent))
        point = [p + cfg["rho"] / (norm + 1e-12) * g for p, g in zip(w, ascent)]
        f2, cache2 = ref.forward(point, x)
        grads = ref.backward(point, cache2, authors_smooth_ce(f2, y, s)[1] / b)
    decay_point = point if cfg.get("decay_at") == "w+e" else w
    d = [g + cfg["wd"] * p for g, p in zip(grads, decay_point)]
    m, lr = cfg["momentum"], cfg["lr"]
    if cfg.get("momentum_form") == "keras":
        state["v"] = [m * v - lr * g for v, g in zip(state.get("v", [0.0] * 4), d)]
        return [p + v for p, v in zip(w, state["v"])]
    state["buf"] = [m * bf + g for bf, g in zip(state.get("buf", [0.0] * 4), d)]
    return [p - lr * bf for p, bf in zip(w, state["buf"])]


def make_params(seed=0):
    rs = np.random.RandomState(seed)
    return [
        (0.6 * rs.randn(IN, HIDDEN)).astype(np.float32),
        (0.2 * rs.randn(HIDDEN)).astype(np.float32),
        (0.6 * rs.randn(HIDDEN, K)).astype(np.float32),
        (0.2 * rs.randn(K)).astype(np.float32),
    ]


def make_data(seed=1):
    rs = np.random.RandomState(seed)
    return rs.randn(B, IN).astype(np.float32), rs.randint(0, K, size=B)


def build_mlp(params):
    inner = keras.Sequential(
        [
            keras.Input((IN,)),
            keras.layers.Dense(HIDDEN, activation="tanh"),
            keras.layers.Dense(K),
        ]
    )
    inner.set_weights([p.copy() for p in params])
    return inner


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - v))) for u, v in zip(a, b))


# --------------------------------------------------------------------------- #
# 1. Label smoothing convention.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("num_classes", [2, 10, 100])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_authors_smoothing_is_keras_smoothing_times_k_over_k_minus_1(num_classes, smoothing):
    ls = runner.keras_label_smoothing(smoothing, num_classes, "authors")
    # Algebra: Keras' targets y (1 - ls) + ls / K with ls = s K / (K - 1) give
    # 1 - ls + ls / K = 1 - s on the label and ls / K = s / (K - 1) elsewhere.
    assert ls == pytest.approx(smoothing * num_classes / (num_classes - 1), rel=1e-15)
    y = np.arange(7) % num_classes
    keras_targets = np.eye(num_classes)[y] * (1 - ls) + ls / num_classes
    np.testing.assert_allclose(
        keras_targets, authors_targets(y, num_classes, smoothing), rtol=0, atol=1e-15
    )
    assert runner.keras_label_smoothing(smoothing, num_classes, "keras") == smoothing


def test_keras_loss_with_authors_smoothing_has_the_authors_gradient():
    rs = np.random.RandomState(3)
    f = rs.randn(9, 10) * 3
    y = rs.randint(0, 10, size=9)
    loss = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=runner.keras_label_smoothing(0.1, 10, "authors")
    )
    logits = tf.Variable(f.astype(np.float32))
    with tf.GradientTape() as tape:
        value = loss(tf.one_hot(y, 10), logits)
    grad = tape.gradient(value, logits).numpy()
    kl, d_kl = authors_smooth_ce(f, y, 0.1)
    np.testing.assert_allclose(grad, d_kl / 9, rtol=RTOL, atol=ATOL)
    # The values differ by the targets' entropy, a constant (the authors log KL).
    t = authors_targets(y, 10, 0.1)
    entropy = -(t * np.log(t)).sum(1).mean()
    np.testing.assert_allclose(float(value), kl.mean() + entropy, rtol=RTOL)
    # Keras' own convention at 0.1 gives another gradient: the option matters.
    plain = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    with tf.GradientTape() as tape:
        value = plain(tf.one_hot(y, 10), logits)
    assert np.abs(tape.gradient(value, logits).numpy() - d_kl / 9).max() > 100 * ATOL


def test_label_smoothing_convention_is_checked():
    with pytest.raises(ValueError, match="label_smoothing_convention='pytorch'"):
        runner.keras_label_smoothing(0.1, 10, "pytorch")
    with pytest.raises(ValueError, match="label_smoothing_convention='x'"):
        runner.RunConfig(label_smoothing_convention="x").validate()


# --------------------------------------------------------------------------- #
# 2. Weight decay at w (the wrapper's coupled decay).
# --------------------------------------------------------------------------- #


def test_wrapper_weight_decay_adds_wd_w_before_the_inner_optimizer():
    w0 = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    b0 = np.array([0.3, -0.7], np.float32)
    g = [np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32), np.array([0.05, -0.5], np.float32)]
    variables = [keras.Variable(w0), keras.Variable(b0)]
    sam = bk.SAM(TorchSGD(0.5, momentum=0.9), rho=0.05, weight_decay=0.1, seed=0)
    with sam.descent_step():  # as SharpnessAwareMixin.train_step applies it
        sam.apply([tf.constant(v) for v in g], variables)
        sam.apply([tf.constant(v) for v in g], variables)
    # NumPy: torch SGD(momentum=0.9, weight_decay=0.1), twice; every variable decayed.
    expected = []
    for p, gp in zip((w0, b0), g):
        p = p.astype(np.float64)
        buf = np.zeros_like(p)
        for _ in range(2):
            buf = 0.9 * buf + gp + 0.1 * p
            p = p - 0.5 * buf
        expected.append(p)
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=RTOL, atol=ATOL)


def test_wrapper_weight_decay_respects_exclusions_and_loss_scaling():
    w0 = np.array([1.0, -2.0], np.float32)
    b0 = np.array([0.5, 0.5], np.float32)
    g = np.array([0.25, 0.5], np.float32)
    w, b = keras.Variable(w0, name="kernel"), keras.Variable(b0, name="bias")
    sam = bk.SAM(keras.optimizers.SGD(0.1), weight_decay=0.2, seed=0)
    sam.exclude_from_weight_decay(var_names=["bias"])
    with sam.descent_step():
        sam.apply([tf.constant(g), tf.constant(g)], [w, b])
    np.testing.assert_allclose(w.numpy(), w0 - 0.1 * (g + 0.2 * w0), rtol=RTOL)
    np.testing.assert_allclose(b.numpy(), b0 - 0.1 * g, rtol=RTOL)
    # With a loss-scaled inner optimizer the gradients arrive scaled.
    v = keras.Variable(w0)
    scaled = bk.SAM(
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=1024.0),
        weight_decay=0.2,
        seed=0,
    )
    with scaled.descent_step():
        scaled.apply([tf.constant(g * 1024.0)], [v])
    np.testing.assert_allclose(v.numpy(), w0 - 0.1 * (g + 0.2 * w0), rtol=RTOL)


def test_wrapper_weight_decay_serializes_and_is_checked():
    sam = bk.BiSAM(TorchSGD(0.1, momentum=0.9), rho=0.05, weight_decay=5e-4, seed=1)
    clone = bk.BiSAM.from_config(sam.get_config())
    assert clone.weight_decay == 5e-4 and isinstance(clone.inner_optimizer, TorchSGD)
    assert clone.get_config() == sam.get_config()
    with pytest.raises(ValueError, match="weight_decay=-1"):
        bk.SAM(keras.optimizers.SGD(0.1), weight_decay=-1)


# --------------------------------------------------------------------------- #
# 3. Cutout.
# --------------------------------------------------------------------------- #


def test_cutout_matches_numpy_given_its_draws():
    rs = np.random.RandomState(0)
    image = rs.randn(32, 32, 3).astype(np.float32)
    applied = 0
    for k in range(60):
        seed = tf.constant([k, 17], tf.int64)
        apply, top, left = augment.cutout_box(seed, 32, 32)
        got = augment.cutout(tf.constant(image), seed).numpy()
        expected = numpy_cutout(image, bool(apply), int(top), int(left))
        np.testing.assert_array_equal(got, expected)
        applied += bool(apply)
    assert 0 < applied < 60


def test_numpy_cutout_is_the_authors_cutout():
    torch = pytest.importorskip("torch")
    path = os.path.join(AUTHORS_REFERENCE, "cutout.py")  # vendored, verbatim
    spec = importlib.util.spec_from_file_location("authors_cutout", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = np.random.RandomState(1).randn(32, 32, 3).astype(np.float32)
    for k in range(40):
        # The authors' draws, in their order: rand, randint (dim 1 = rows), randint.
        torch.manual_seed(k)
        coin = torch.rand([1]).item()
        top = torch.randint(-8, 32 - 8, [1]).item()
        left = torch.randint(-8, 32 - 8, [1]).item()
        torch.manual_seed(k)
        theirs = module.Cutout()(torch.tensor(image.transpose(2, 0, 1).copy()))
        expected = numpy_cutout(image, coin <= 0.5, top, left)
        np.testing.assert_array_equal(theirs.numpy().transpose(1, 2, 0), expected)


def test_cutout_draws_have_the_authors_distribution():
    n = 4000
    seeds = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), n)
    draws = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: augment.cutout_box(s, 32, 32))
    apply, top, left = next(iter(draws.batch(n)))
    apply = apply.numpy()
    corners = np.stack([top.numpy(), left.numpy()], axis=1)
    # Coin: Binomial(n, 0.5), std sqrt(n)/2 = 32; 5 sigma.
    assert abs(apply.sum() - n / 2) < 5 * math.sqrt(n) / 2
    for axis in range(2):
        values = corners[:, axis]
        assert values.min() == -8 and values.max() == 23  # torch.randint(-8, 24)
        counts = np.bincount(values + 8, minlength=32)
        # Chi-square with 31 degrees of freedom: mean 31, std 7.9; 5 sigma below 71.
        expected = n / 32
        assert ((counts - expected) ** 2 / expected).sum() < 71


def test_load_with_cutout_zeroes_a_square_of_the_same_augmented_images():
    x = np.random.RandomState(0).randint(0, 256, (40, 32, 32, 3)).astype(np.uint8)
    y = np.arange(40) % 10
    options = dict(batch_size=40, seed=5, validation_fraction=0.1)
    plain = bk.data.from_arrays(x, y, **options)
    cut = bk.data.from_arrays(x, y, cutout=True, **options)
    a = next(iter(plain.train))[0].numpy()
    c = next(iter(cut.train))[0].numpy()
    # Epoch 0 of seed 5: example i's seed is (5 * 1_000_003 + 0, i), cutout's its fold-in 1.
    for i in range(len(a)):
        example_seed = tf.constant([5 * 1_000_003, i], tf.int64)
        cutout_seed = tf.random.experimental.stateless_fold_in(example_seed, 1)
        apply, top, left = augment.cutout_box(cutout_seed, 32, 32)
        np.testing.assert_array_equal(c[i], numpy_cutout(a[i], bool(apply), int(top), int(left)))
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="cutout='yes'"):
        bk.data.from_arrays(x, y, cutout="yes")


# --------------------------------------------------------------------------- #
# 4. The learning-rate schedule.
# --------------------------------------------------------------------------- #


def test_epoch_cosine_matches_closed_form_and_torch():
    epochs, spe, lr0 = 7, 5, 0.1
    schedule = EpochCosineDecay(lr0, epochs, spe)
    steps = np.arange(epochs * spe)
    got = np.array([float(schedule(s)) for s in steps])
    expected = 0.5 * lr0 * (1 + np.cos(np.pi * (steps // spe) / epochs))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    theirs = []
    for _ in range(epochs):
        theirs += [opt.param_groups[0]["lr"]] * spe
        opt.step()
        scheduler.step()
    np.testing.assert_allclose(got, theirs, rtol=1e-6, atol=1e-9)
    # Keras' CosineDecay decays within the epoch: a different schedule.
    per_step = keras.optimizers.schedules.CosineDecay(lr0, epochs * spe)
    assert abs(float(per_step(1)) - got[1]) > 1e-5


def test_epoch_cosine_serializes_and_is_checked():
    schedule = EpochCosineDecay(0.2, 90, 2503)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert clone.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        EpochCosineDecay(0.1, 10, 0)
    config = runner.RunConfig(schedule="cosine-epoch", epochs=3).validate()
    lr = runner.learning_rate_schedule(config, total_steps=30, steps_per_epoch=10)
    assert isinstance(lr, EpochCosineDecay) and (lr.epochs, lr.steps_per_epoch) == (3, 10)


# --------------------------------------------------------------------------- #
# 5. The validation split, the statistics and PyTorch's momentum.
# --------------------------------------------------------------------------- #


def test_authors_split_is_their_seed_42_shuffle():
    saved = np.random.get_state()
    try:
        # utility/cifar.py, verbatim.
        num_train = 50_000
        indices = list(range(num_train))
        split = int(np.floor(0.1 * num_train))
        np.random.seed(42)
        np.random.shuffle(indices)
        train_idx, valid_idx = indices[split:], indices[:split]
    finally:
        np.random.set_state(saved)
    state_before = np.random.get_state()[1].copy()
    train, validation = splitting.authors_validation_split(50_000, 0.1)
    np.testing.assert_array_equal(validation, np.sort(valid_idx))
    np.testing.assert_array_equal(train, np.sort(train_idx))
    np.testing.assert_array_equal(np.random.get_state()[1], state_before)  # global state untouched


def test_authors_split_and_full_statistics_do_not_depend_on_the_seed():
    rs = np.random.RandomState(0)
    x = rs.randint(0, 256, (50, 4, 4, 3)).astype(np.uint8)
    y = np.arange(50) % 5
    _, val_index = splitting.authors_validation_split(50, 0.1)
    for seed in (0, 1):
        splits = bk.data.from_arrays(
            x, y, seed=seed, validation_split="authors", stats_from="all", augment=False
        )
        images = np.concatenate([b[0].numpy() for b in splits.validation])
        mean, std = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)
        np.testing.assert_allclose(splits.mean, mean, rtol=1e-9)
        np.testing.assert_allclose(splits.std, std, rtol=1e-9)
        np.testing.assert_allclose(images, (x[val_index] - mean) / std, rtol=1e-5, atol=1e-5)
    seeded = [bk.data.from_arrays(x, y, seed=seed, augment=False).validation for seed in (0, 1)]
    first, second = (np.concatenate([b[0].numpy() for b in v]) for v in seeded)
    assert not np.array_equal(first, second)  # the default split follows the seed


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_matches_numpy_and_torch_when_the_rate_changes(nesterov):
    lrs = [0.1, 0.1, 0.05, 0.02, 0.02]
    rs = np.random.RandomState(2)
    w0 = rs.randn(3, 2)
    grads = [rs.randn(3, 2) for _ in lrs]

    class Steps(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.gather(tf.constant(lrs, tf.float32), step)

    v = keras.Variable(w0.astype(np.float32))
    opt = TorchSGD(Steps(), momentum=0.9, nesterov=nesterov)
    for g in grads:
        opt.apply([tf.constant(g, tf.float32)], [v])
    w, buf = w0.copy(), np.zeros_like(w0)
    for lr, g in zip(lrs, grads):
        buf = 0.9 * buf + g
        w = w - lr * ((g + 0.9 * buf) if nesterov else buf)
    np.testing.assert_allclose(v.numpy(), w, rtol=RTOL, atol=ATOL)
    keras_sgd = keras.Variable(w0.astype(np.float32))
    other = keras.optimizers.SGD(Steps(), momentum=0.9, nesterov=nesterov)
    for g in grads:
        other.apply([tf.constant(g, tf.float32)], [keras_sgd])
    assert np.abs(keras_sgd.numpy() - w).max() > 100 * ATOL  # the conventions differ
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.tensor(w0))
    topt = torch.optim.SGD([p], lr=lrs[0], momentum=0.9, nesterov=nesterov)
    for lr, g in zip(lrs, grads):
        topt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-12)


def test_torch_sgd_serializes_and_is_checked():
    opt = TorchSGD(EpochCosineDecay(0.1, 4, 3), momentum=0.9, nesterov=True)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, TorchSGD) and clone.get_config() == opt.get_config()
    with pytest.raises(ValueError, match="momentum=1.5"):
        TorchSGD(0.1, momentum=1.5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_coupled_weight_decay_is_torch_sgd_weight_decay(nesterov):
    """`TorchSGD(coupled_weight_decay=wd)` is PyTorch's `SGD(weight_decay=wd)`
    (NumPy, and torch where installed), and bitwise the step of the wrappers'
    `weight_decay` around a `TorchSGD` without it: both add `fl32(wd) * w` to
    the float32 gradient before momentum, in the same order."""
    w0 = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    b0 = np.array([0.3, -0.7], np.float32)
    g = [np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32), np.array([0.05, -0.5], np.float32)]
    variables = [keras.Variable(w0), keras.Variable(b0)]
    opt = TorchSGD(0.5, momentum=0.9, nesterov=nesterov, coupled_weight_decay=0.1)
    wrapped = [keras.Variable(w0), keras.Variable(b0)]
    sam = bk.SAM(TorchSGD(0.5, momentum=0.9, nesterov=nesterov), rho=0.05, weight_decay=0.1)
    for _ in range(3):
        opt.apply([tf.constant(v) for v in g], variables)
        with sam.descent_step():
            sam.apply([tf.constant(v) for v in g], wrapped)
    expected = []
    for p, gp in zip((w0, b0), g):
        p, buf = p.astype(np.float64), np.zeros(p.shape)
        for _ in range(3):
            d = gp + 0.1 * p
            buf = 0.9 * buf + d
            p = p - 0.5 * ((d + 0.9 * buf) if nesterov else buf)
        expected.append(p)
    for v, u, e in zip(variables, wrapped, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(v.numpy(), u.numpy())
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in (w0, b0)]
    topt = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1, nesterov=nesterov)
    for _ in range(3):
        for p, gp in zip(params, g):
            p.grad = torch.tensor(gp, dtype=torch.float64)
        topt.step()
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-12)


def test_torch_sgd_coupled_weight_decay_respects_exclusions_and_is_checked():
    kept, excluded = keras.Variable(np.ones(2, np.float32)), keras.Variable(np.ones(2, np.float32))
    opt = TorchSGD(0.5, coupled_weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=[excluded])
    opt.apply([tf.zeros(2), tf.zeros(2)], [kept, excluded])
    np.testing.assert_allclose(kept.numpy(), 1.0 - 0.5 * 0.1 * 1.0, rtol=1e-7)
    np.testing.assert_array_equal(excluded.numpy(), np.ones(2, np.float32))
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert clone.coupled_weight_decay == 0.1 and clone.get_config() == opt.get_config()
    for bad in (-1, math.inf, True, "0.1"):
        with pytest.raises(ValueError, match="`coupled_weight_decay` must be"):
            TorchSGD(0.1, coupled_weight_decay=bad)


def test_the_sgd_method_is_a_plain_model_with_torch_sgd():
    config = _preset_config("sgd")
    optimizer = runner.build_optimizer(config, total_steps=4, steps_per_epoch=2)
    assert type(optimizer) is TorchSGD and optimizer.coupled_weight_decay == 5e-4
    assert optimizer.weight_decay is None  # Keras' decoupled decay stays off
    inner = build_mlp(make_params())
    assert runner.training_model(inner, optimizer) is inner
    keras_momentum = _preset_config("sgd", momentum_convention="keras")
    wrapper = runner.build_optimizer(keras_momentum, total_steps=4, steps_per_epoch=2)
    assert isinstance(wrapper, bk.SAM) and wrapper.rho == 0.0  # Keras' SGD has no coupled decay


# --------------------------------------------------------------------------- #
# The presets and the whole step.
# --------------------------------------------------------------------------- #


def test_paper_presets_default_to_the_authors_training():
    for name in ("paper-cifar", "paper-imagenet"):
        p = presets.PRESETS[name]
        assert p["label_smoothing_convention"] == "authors"
        assert p["weight_decay_mode"] == "at-w"
        assert p["momentum_convention"] == "torch"
        assert p["schedule"] == "cosine-epoch"
        assert p["model_variant"] == "authors"
    cifar = presets.PRESETS["paper-cifar"]
    assert (cifar["cutout"], cifar["validation_split"], cifar["stats_from"]) == (
        True,
        "authors",
        "all",
    )
    args = cli.build_parser().parse_args(["train", "--preset", "paper-cifar", "--method", "sam"])
    (config,) = cli.make_configs(args)
    assert (config.cutout, config.validation_split, config.model_variant) == (
        True,
        "authors",
        "authors",
    )
    # Keras' behaviour is one flag away.
    flags = [
        "--no-cutout",
        "--validation-split=seeded",
        "--stats-from=train",
        "--label-smoothing-convention=keras",
        "--weight-decay-mode=l2",
        "--momentum-convention=keras",
        "--schedule=cosine",
        "--model-variant=keras",
    ]
    args = cli.build_parser().parse_args(["train", "--preset", "paper-cifar", *flags])
    (config,) = cli.make_configs(args)
    default = runner.RunConfig()
    for name in (*runner.TRAINING_OPTIONS, "cutout", "schedule"):
        assert getattr(config, name) == getattr(default, name), name


def test_model_variant_is_passed_only_when_not_keras():
    assert runner.model_build_options(runner.RunConfig()) == {}
    config = runner.RunConfig(model_variant="authors")
    assert runner.model_build_options(config) == {"variant": "authors"}


def _preset_config(method, **overrides):
    args = cli.build_parser().parse_args(
        ["train", "--preset", "paper-cifar", "--method", method, "--model-variant", "keras"]
    )
    (config,) = cli.make_configs(args)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config.validate()


@pytest.mark.parametrize(
    "method, jit",
    [
        ("sgd", False),
        ("sam", False),
        ("bisam-neglog", False),
        ("bisam-tanh", False),
        ("sgd", True),
        ("bisam-neglog", True),
    ],
)
def test_preset_steps_equal_the_authors_steps_in_float64(method, jit):
    """Three steps of the paper-cifar preset's training step against NumPy.

    The preset's loss, optimizer, schedule and momentum come from the
    runner's own helpers (`build_optimizer`, `build_loss`). Its weight decay
    5e-4 and rho 0.05 are raised to 0.05 and 0.5 so that decaying at w + e
    instead of w moves the weights by far more than the tolerance (the
    mechanism is the same). Two steps per epoch over two epochs: the rate
    goes 0.1, 0.1, 0.05, so PyTorch's and Keras' momentum differ at step 3.
    """
    config = _preset_config(method, weight_decay=0.05, rho=0.5)
    params = make_params()
    x, y = make_data()
    inner = build_mlp(params)
    optimizer = runner.build_optimizer(config, total_steps=4, steps_per_epoch=2)
    model = runner.training_model(inner, optimizer)
    model.compile(optimizer=optimizer, loss=runner.build_loss(config, K), jit_compile=jit)
    bound = {"sam": "sam", "sgd": "sgd"}.get(method, method.removeprefix("bisam-"))
    cfg = {
        "method": bound,
        "smoothing": config.label_smoothing,
        "rho": config.rho,
        "mu": config.mu,
        "alpha": config.alpha,
        "wd": config.weight_decay,
        "momentum": config.momentum,
    }
    expected = [p.astype(np.float64) for p in params]
    wrong = {"keras momentum": {}, "decay at w+e": {}, "keras smoothing": {}}
    wrong_params = {k: [p.astype(np.float64) for p in params] for k in wrong}
    state = {}
    for step, lr in enumerate([0.1, 0.1, 0.05]):
        model.train_on_batch(x, np.eye(K)[y])
        expected = authors_step(expected, x, y, {**cfg, "lr": lr}, state)
        np.testing.assert_allclose(
            [float(v) for v in np.concatenate([w.ravel() for w in inner.get_weights()])],
            np.concatenate([e.ravel() for e in expected]),
            rtol=RTOL,
            atol=ATOL,
            err_msg=f"{method} jit={jit} step {step + 1}",
        )
        variants = {
            "keras momentum": {"momentum_form": "keras"},
            "decay at w+e": {"decay_at": "w+e"},
            "keras smoothing": {"smoothing": config.label_smoothing * (K - 1) / K},
        }
        for name, change in variants.items():
            wrong_params[name] = authors_step(
                wrong_params[name], x, y, {**cfg, "lr": lr, **change}, wrong[name]
            )
    # Each of the authors' choices is visible: the variants end far from the package.
    for name, params_ in wrong_params.items():
        if method == "sgd" and name == "decay at w+e":
            continue  # no perturbation: the two are the same for SGD
        assert max_diff(inner.get_weights(), params_) > 20 * (ATOL + RTOL), name


@pytest.mark.slow
def test_cli_run_with_the_authors_options(tmp_path):
    out = str(tmp_path / "runs")
    flags = [
        "--dataset=digits",
        "--subset=200",
        "--batch-size=64",
        "--epochs=1",
        "--models=resnet20",
        "--verbose=0",
        "--schedule=cosine-epoch",
        "--label-smoothing-convention=authors",
        "--weight-decay-mode=at-w",
        "--momentum-convention=torch",
        "--cutout",
        "--validation-split=authors",
        "--stats-from=all",
        f"--output={out}",
    ]
    assert cli.main(["compare", "--methods", "sgd", "sam", *flags]) == 0
    for method in ("sgd", "sam"):
        run_dir = os.path.join(out, "digits", "resnet20", method, "seed0")
        config = runner.RunConfig(**json.load(open(f"{run_dir}/config.json")))
        assert (config.weight_decay_mode, config.cutout, config.stats_from) == ("at-w", True, "all")
        model = keras.models.load_model(os.path.join(run_dir, "best.keras"))
        optimizer = model.optimizer
        if method == "sgd":  # a plain model: PyTorch's SGD(weight_decay) is TorchSGD's
            assert not isinstance(model, bk.SharpnessAwareModel)
            assert type(optimizer) is TorchSGD and optimizer.coupled_weight_decay == 5e-4
            sgd = optimizer
        else:
            assert isinstance(optimizer, bk.SAM) and optimizer.weight_decay == 5e-4
            assert optimizer.rho == 0.05
            sgd = optimizer.inner_optimizer
            assert type(sgd) is TorchSGD and sgd.coupled_weight_decay == 0.0
        assert sgd.get_config()["learning_rate"]["class_name"] == "EpochCosineDecay"
        assert not model.losses  # no L2 term in the loss: the decay is at w
