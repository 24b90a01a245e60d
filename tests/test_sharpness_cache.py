"""The compiled functions of `bk.sharpness` are cached per model: a second call traces nothing.

Each measure compiles its functions once per (model, objective, training mode,
example shapes); calling it again, or another measure on the same model, or
the `SharpnessMonitor` in every epoch, must reuse them. Traces are counted by
`bisam_keras.sharpness.autodiff.TRACES`.
"""

import io
import logging

import keras
import numpy as np
import tensorflow as tf

import bisam_keras as bk
from bisam_keras import sharpness
from bisam_keras.callbacks import SharpnessMonitor
from bisam_keras.sharpness import autodiff


def classifier(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((80, 4)).astype(np.float32)
    y = rng.integers(0, 3, 80)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, x, y


def measure_everything(model, data):
    sharpness.worst_case(model, data, steps=2, batch_size=32)
    sharpness.worst_case(model, data, steps=2, batch_size=32, objective="zero_one")
    sharpness.average_case(model, data, num_samples=2, batch_size=32)
    sharpness.hessian_eigenvalues(model, data, iterations=3, batch_size=32)
    sharpness.hessian_trace(model, data, num_samples=2, batch_size=32)
    sharpness.loss_landscape(model, data, resolution=3, batch_size=32)
    sharpness.loss_landscape(model, data, dims=1, resolution=3, batch_size=32)


def test_a_second_round_of_every_measure_traces_nothing():
    model, x, y = classifier()
    autodiff.TRACES.clear()
    measure_everything(model, (x, y))
    first = dict(autodiff.TRACES)
    # compiled loss and zero_one: two objectives, so two gradient and values functions
    assert first == {"gradient": 2, "values": 2, "hvp": 1, "grid2": 1, "grid1": 1}
    measure_everything(model, (x, y))
    measure_everything(model, (x[:50], y[:50]))  # another number of examples: same shapes
    assert dict(autodiff.TRACES) == first


def test_the_cache_follows_the_weights_and_is_per_model():
    model, x, y = classifier()
    first = sharpness.average_case(model, (x, y), num_samples=2).reference
    model.set_weights([2 * w for w in model.get_weights()])
    second = sharpness.average_case(model, (x, y), num_samples=2).reference
    fresh, _, _ = classifier()
    fresh.set_weights(model.get_weights())
    autodiff.TRACES.clear()
    third = sharpness.average_case(fresh, (x, y), num_samples=2).reference
    assert first != second and third == second
    assert dict(autodiff.TRACES) == {"values": 1}  # a new model traces its own functions


def test_the_monitor_traces_once_for_all_epochs():
    model, x, y = classifier()
    wrapped = bk.SharpnessAwareModel(model)
    wrapped.compile(
        optimizer=bk.SAM(keras.optimizers.SGD(0.1), rho=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    measures = {
        "worst_case": {"measure": "worst_case", "steps": 2},
        "eigenvalue": {"measure": "hessian_eigenvalues", "iterations": 3},
    }
    monitor = SharpnessMonitor((x, y), measures=measures, num_examples=64)
    autodiff.TRACES.clear()
    history = wrapped.fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[monitor])
    assert len(history.history["sharpness/worst_case"]) == 6
    assert dict(autodiff.TRACES) == {"gradient": 1, "values": 1, "hvp": 1}


def test_measuring_many_models_prints_no_retracing_warning():
    """TensorFlow warns when functions of equal code trace often; each model's
    functions trace once, so measuring six models must not warn."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    tf.get_logger().addHandler(handler)
    try:
        for seed in range(6):
            model, x, y = classifier(seed)
            sharpness.worst_case(model, (x, y), steps=2)
            sharpness.average_case(model, (x, y), num_samples=2)
            sharpness.hessian_trace(model, (x, y), num_samples=2)
    finally:
        tf.get_logger().removeHandler(handler)
    assert "retracing" not in stream.getvalue()
