"""mSAM on a batch that `micro_batch_size` does not divide: a clear error, never a silent result.

The usual way to hit it is `fit` on a dataset whose last batch is smaller
(`n % batch_size != 0`). Without XLA the step must raise the package's own
`InvalidArgumentError` before anything indexes the batch; with
`jit_compile=True`, where TensorFlow compiles assertions away, the step's loss
(and its gradients) must be NaN rather than a result computed on part of the
batch; with a static batch dimension (`drop_remainder=True`) the error comes at
trace time, as a `ValueError`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk

FEATURES, CLASSES = 5, 3


def make_model(micro_batch_size, jit_compile, kind="bisam"):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    cls = bk.BiSAM if kind == "bisam" else bk.SAM
    model = bk.SharpnessAwareModel(inner)
    model.compile(
        optimizer=cls(keras.optimizers.SGD(0.1), rho=0.05, micro_batch_size=micro_batch_size),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def make_dataset(n, batch_size, drop_remainder=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder)


@pytest.mark.parametrize("kind", ["bisam", "sam"])
@pytest.mark.parametrize(
    "n, last",
    [
        (20, 4),  # last batch smaller than one micro-batch: used to fail in GatherV2
        (28, 12),  # one whole micro-batch and a remainder
    ],
)
def test_partial_last_batch_raises_the_clear_error_without_xla(kind, n, last):
    # Batches of 16 (micro-batches of 8), then a last batch of `last` = n - 16.
    assert n - 16 == last and last % 8 != 0
    model = make_model(8, jit_compile=False, kind=kind)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model.fit(make_dataset(n, 16), epochs=1, verbose=0)
    message = str(info.value)
    assert "`micro_batch_size`=8 must divide the batch size" in message
    assert f"Received: batch size] [{last}]" in message.replace("\n", " ")
    assert "GatherV2" not in message and "is not in [0" not in message


def test_partial_last_batch_raises_the_clear_error_eagerly():
    model = make_model(8, jit_compile=False)
    model.run_eagerly = True
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"`micro_batch_size`=8 must divide.*batch size=4$"
    ):
        model.fit(make_dataset(20, 16), epochs=1, verbose=0)


def test_under_xla_a_partial_batch_makes_the_loss_nan_instead_of_a_silent_result():
    # Batches of 16 then 12 (micro-batches of 8), traced with an unknown batch
    # dimension. XLA drops the assertion, and the micro-batch loop would
    # otherwise train on the first 8 examples of the last batch alone.
    model = make_model(8, jit_compile=True)
    history = model.fit(make_dataset(28, 16), epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][0])
    assert np.isnan(history.history["perturbed_loss"][0])
    assert all(np.isnan(w).all() for w in model.get_weights())
    # Positive control: dividing batches give finite values under XLA.
    model = make_model(8, jit_compile=True)
    history = model.fit(make_dataset(32, 16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_static_batch_size_is_checked_when_the_step_is_traced(jit_compile):
    model = make_model(8, jit_compile=jit_compile)
    dataset = make_dataset(24, 12, drop_remainder=True)
    assert dataset.element_spec[0].shape[0] == 12
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"`micro_batch_size`=8 must divide.*batch size=12$"
    ):
        model.fit(dataset, epochs=1, verbose=0)
    before = model.get_weights()
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size=12"):
        model.train_on_batch(*next(iter(dataset)))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dividing_batches_train_as_before():
    # 32 examples in batches of 16: every batch divides into micro-batches of 8.
    model = make_model(8, jit_compile=False)
    history = model.fit(make_dataset(32, 16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations) == 2


def test_every_use_of_the_batch_waits_for_the_check():
    # Structural, hence deterministic: in the traced step, the assertion is an
    # ancestor (through data or control edges) of every op that gathers a
    # micro-batch and of the micro-batch loop. Without this ordering the
    # executor may run an out-of-range gather first (the GatherV2 error).
    model = make_model(8, jit_compile=False)
    model.build((None, FEATURES))
    model.optimizer.build(model.trainable_variables)
    step = tf.function(model.train_step)
    graph = step.get_concrete_function(
        (tf.TensorSpec((None, FEATURES), tf.float32), tf.TensorSpec((None,), tf.int64))
    ).graph

    def ancestors(op):
        seen, stack = set(), [op]
        while stack:
            current = stack.pop()
            for parent in [t.op for t in current.inputs] + list(current.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    stack.append(parent)
        return {graph.get_operation_by_name(name) for name in seen}

    asserts = [op for op in graph.get_operations() if op.type == "Assert"]
    assert asserts, "the step has no assertion on the batch size"
    users = [
        op for op in graph.get_operations() if op.type in ("GatherV2", "While", "StatelessWhile")
    ]
    assert any(op.type == "GatherV2" for op in users) and any("While" in op.type for op in users)
    for op in users:
        assert set(asserts) & ancestors(op), f"{op.type} {op.name} can run before the check"
