"""bk.callbacks.SharpnessMonitor: measures logged into History and TensorBoard during fit."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk
from bisam_keras import sharpness
from bisam_keras.callbacks import SharpnessMonitor

MEASURES = {
    "worst_case": {"measure": "worst_case", "rho": 0.05, "steps": 2},
    "zero_one": {"measure": "worst_case", "rho": 0.5, "steps": 2, "objective": "zero_one"},
    "top_eigenvalue": {"measure": "hessian_eigenvalues", "iterations": 3},
    "eigenvalue": {"measure": "hessian_eigenvalues", "k": 2, "iterations": 3},
}


def model_and_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((96, 4)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=bk.SAM(keras.optimizers.SGD(0.1), rho=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, x, y


def test_the_monitor_logs_into_history_and_tensorboard(tmp_path):
    model, x, y = model_and_data()
    monitor = SharpnessMonitor((x, y), every_n_epochs=2, measures=MEASURES, num_examples=64)
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[monitor, board])
    keys = {
        "sharpness/worst_case",
        "sharpness/zero_one",
        "sharpness/top_eigenvalue",
        "sharpness/eigenvalue_1",
        "sharpness/eigenvalue_2",
    }
    assert keys <= set(history.history)
    assert all(len(history.history[key]) == 2 for key in keys)  # epochs 2 and 4
    assert sorted(monitor.results) == [1, 3]
    # The last logged values are the measures of the trained model.
    again = sharpness.worst_case(model, monitor.examples, rho=0.05, steps=2)
    assert history.history["sharpness/worst_case"][-1] == again.value
    assert history.history["sharpness/zero_one"][-1] >= 0.0
    tags = set()
    for path in (tmp_path / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert "epoch_sharpness/worst_case" in tags and "epoch_sharpness/eigenvalue_2" in tags


def test_the_config_rebuilds_the_monitor():
    model, x, y = model_and_data()
    monitor = SharpnessMonitor((x, y), every_n_epochs=3, measures=MEASURES, num_examples=50)
    config = json.loads(json.dumps(monitor.get_config()))
    rebuilt = SharpnessMonitor((x, y), **config)
    assert rebuilt.get_config() == monitor.get_config()
    assert np.array_equal(rebuilt.examples.x, monitor.examples.x)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"measures": {"x": {"measure": "flatness"}}}, "measure"),
        ({"measures": {"x": {"measure": "worst_case", "seed": 1}}}, "measures"),
        ({"measures": {}}, "measures"),
    ],
)
def test_invalid_settings_raise_naming_them(kwargs, argument):
    _, x, y = model_and_data()
    with pytest.raises(ValueError, match=argument):
        SharpnessMonitor((x, y), **kwargs)
