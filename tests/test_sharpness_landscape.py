"""bk.sharpness landscapes and plots: the centre is `model.evaluate`, the filter
normalization is its definition, the line between two models ends at each.

Tolerances are float32 error bounds (tests/tolerances.py).
"""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bisam_keras import sharpness  # noqa: E402
from tests.tolerances import FUNC_ULPS, U32, assert_within, gamma  # noqa: E402


def softmax_regression(seed=0, num=150, dim=4, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num, dim)).astype(np.float32)
    y = rng.integers(0, classes, num)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((dim,)), keras.layers.Dense(classes)])
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model, x, y


def cross_entropy_bound(model, x, y, weight_error=0.0):
    """Float32 error bound of the mean cross-entropy of a softmax regression.

    The logits carry `gamma(d + 1) (|x| |W| + |b|)` plus `|x| weight_error`
    (an error in the weights themselves); the cross-entropy is 2-Lipschitz in
    the max-norm of the logits and adds its own exp/log/sum rounding; the mean
    over `n` examples adds `gamma(n)`. Two float32 computations (the grid's and
    `evaluate`'s) may each be off by this much.
    """
    w, b = (np.asarray(v, np.float64) for v in model.trainable_variables)
    x = np.asarray(x, np.float64)
    z = x @ w + b
    e_z = gamma(x.shape[1] + 1) * (np.abs(x) @ np.abs(w) + np.abs(b))
    e_z += np.abs(x) @ np.broadcast_to(weight_error, w.shape).max(axis=1, keepdims=True)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    ce = lse - z[np.arange(len(y)), y]
    e_ce = 2 * e_z.max(axis=1) + (gamma(z.shape[1] + 2) + 2 * FUNC_ULPS * U32) * (
        np.abs(lse) + np.abs(z).max(axis=1)
    )
    return 2 * (e_ce.mean() + gamma(len(y)) * np.abs(ce).mean()), z


def test_the_centre_of_the_landscape_is_model_evaluate():
    model, x, y = softmax_regression()
    landscape = sharpness.loss_landscape(model, (x, y), resolution=5, batch_size=64)
    loss, accuracy = model.evaluate(x, y, batch_size=64, verbose=0)
    bound, logits = cross_entropy_bound(model, x, y)
    assert_within(landscape.loss[2, 2], loss, bound, "centre loss")
    top_two = np.sort(logits, axis=1)[:, -2:]
    assert np.min(top_two[:, 1] - top_two[:, 0]) > 1e-4  # no near-tie that rounding could flip
    # Both are means of 150 zeros and ones: exact up to one rounding each.
    assert_within(landscape.error[2, 2], 1.0 - accuracy, 2 * U32, "centre error rate")
    assert landscape.forward_passes == 25 and landscape.backward_passes == 0
    assert landscape.loss.shape == landscape.error.shape == (5, 5)


def test_filter_normalization_follows_its_definition():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    weights = [np.asarray(v, np.float64) for v in model.trainable_variables]
    for normalization in ("filter", "layer"):
        (direction,) = sharpness.random_directions(model, 1, normalization=normalization)
        for d, w in zip(direction, weights):
            if w.ndim == 1:
                assert not np.any(d)  # biases and BatchNorm's scale and offset: ignored
                continue
            axes = tuple(range(w.ndim - 1)) if normalization == "filter" else None
            norm_d = np.sqrt(np.sum(np.asarray(d, np.float64) ** 2, axis=axes))
            norm_w = np.sqrt(np.sum(w**2, axis=axes))
            # The direction was scaled in float64 and rounded to float32 (one
            # rounding per entry); the norms are taken here in float64.
            assert_within(norm_d, norm_w, U32 * norm_w, f"{normalization} norms")
    (kept,) = sharpness.random_directions(model, 1, ignore_1d=False)
    one_d = [(d, w) for d, w in zip(kept, weights) if w.ndim == 1]
    assert all(np.array_equal(d, w.astype(np.float32)) for d, w in one_d)
    first = sharpness.random_directions(model, 2, seed=5)
    again = sharpness.random_directions(model, 2, seed=5)
    assert all(np.array_equal(a, b) for da, db in zip(first, again) for a, b in zip(da, db))
    assert not np.array_equal(first[0][0], first[1][0])


def test_the_line_between_two_models_ends_at_each():
    source, x, y = softmax_regression(seed=0)
    target, _, _ = softmax_regression(seed=1)
    direction = sharpness.direction_between(source, target)
    line = sharpness.loss_landscape(
        source, (x, y), directions=[direction], span=(0.0, 1.0), resolution=3
    )
    assert line.dims == 1 and line.coordinates[0] == (0.0, 0.5, 1.0)
    # At coordinate 1 the weights are w_s + (w_t - w_s), off from w_t by two
    # roundings: u (|w_t - w_s| + |w_t|) per entry.
    w_s, w_t = (np.asarray(source.layers[0].kernel), np.asarray(target.layers[0].kernel))
    weight_error = U32 * (np.abs(w_t - w_s) + np.abs(w_t)).astype(np.float64)
    for model, index, extra in ((source, 0, 0.0), (target, 2, weight_error)):
        bound, _ = cross_entropy_bound(model, x, y, extra)
        bias_error = U32 * np.max(np.abs(np.asarray(target.layers[0].bias)))
        expected = model.evaluate(x, y, verbose=0)[0]
        assert_within(line.loss[index], expected, bound + 4 * bias_error, f"end {index}")


@pytest.mark.parametrize("kind, dims", [("line", 1), ("contour", 2), ("surface", 2)])
def test_plots_return_a_figure_and_save_a_png(kind, dims, tmp_path):
    model, x, y = softmax_regression(num=40)
    landscape = sharpness.loss_landscape(model, (x, y), dims=dims, resolution=4)
    path = tmp_path / f"{kind}.png"
    figure = sharpness.plot_landscape(landscape, quantity="error", kind=kind, path=path)
    assert isinstance(figure, matplotlib.figure.Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="`kind`"):
        sharpness.plot_landscape(landscape, kind="contour" if dims == 1 else "line")


def test_given_directions_are_checked_against_the_weights():
    model, x, y = softmax_regression(num=20)
    with pytest.raises(ValueError, match="`directions`"):
        sharpness.loss_landscape(model, (x, y), directions=[[np.zeros((4, 3))]])
