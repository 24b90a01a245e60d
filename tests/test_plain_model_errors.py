"""A model without the sharpness-aware step, compiled with SAM/BiSAM, raises.

Before, `keras.Sequential(...).compile(optimizer=bk.BiSAM(SGD(...)))` trained
as plain SGD: Keras' own `train_step` hands the wrapper the gradients at `w`,
and the wrapper applied them with its inner optimizer. Now the first step
raises a `ValueError` that says how to fix it, for Sequential, Functional and
subclassed models, with and without XLA, and under `MirroredStrategy`; the
model's weights are left untouched. `rho=0` raises too: the model is wrong
whatever the radius (for a plain model, compile the inner optimizer itself).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import bisam_keras as bk
from bisam_keras.experiments import runner

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 5)).astype("float32")
Y = RNG.integers(0, 3, size=(16,))
OPTIMIZERS = {
    "sam": lambda **kw: bk.SAM(keras.optimizers.SGD(0.1), **kw),
    "bisam": lambda **kw: bk.BiSAM(keras.optimizers.SGD(0.1), **kw),
    "base": lambda **kw: bk.SharpnessAwareOptimizer(keras.optimizers.SGD(0.1), **kw),
}
FIX = r"SharpnessAwareModel\(model\).*SharpnessAwareMixin"


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(4, activation="relu")
        self.out = keras.layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


class MixedIn(bk.SharpnessAwareMixin, Subclassed):
    pass


def sequential():
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)]
    )


def functional():
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def subclassed():
    model = Subclassed()
    model(X[:1])
    return model


MODELS = {"sequential": sequential, "functional": functional, "subclassed": subclassed}


def compile_model(model, optimizer, jit_compile):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_plain_model_raises_at_the_first_step(make_model, make_optimizer, jit_compile):
    keras.utils.set_random_seed(0)
    model = compile_model(make_model(), make_optimizer(rho=0.05), jit_compile)
    before = weights(model)
    with pytest.raises(ValueError, match=FIX):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    for b, a in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)  # not one step of plain SGD
    with pytest.raises(ValueError, match=FIX):
        model.train_on_batch(X[:8], Y[:8])


@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
def test_rho_zero_raises_too(make_model):
    model = compile_model(make_model(), bk.BiSAM(keras.optimizers.SGD(0.1), rho=0.0), False)
    with pytest.raises(ValueError, match=FIX):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)


def test_plain_model_raises_under_mirrored_strategy():
    # The session's one MirroredStrategy (separate ones over the same devices collide).
    strategy = runner.make_strategy("mirrored")
    if strategy.num_replicas_in_sync != 2:
        pytest.skip("needs the two logical CPU devices that tests/conftest.py configures")
    with strategy.scope():
        model = compile_model(sequential(), OPTIMIZERS["bisam"](), False)
    with pytest.raises(ValueError, match=FIX):
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize("wrap", ["wrapper", "mixin"])
def test_correct_usage_trains_and_moves_away_from_plain_sgd(wrap, jit_compile=False):
    """The wrapper and the mixin still train; with rho > 0 the step differs from
    SGD's by more than float32 rounding (weights of order 1, lr 0.1: the
    perturbed gradient changes them by ~1e-3, far above ~1e-7 rounding).
    (XLA and tf.distribute runs of the correct usage: test_step_graph.py,
    test_keras_integration.py and test_distributed.py.)"""

    def build():
        keras.utils.set_random_seed(0)
        return bk.SharpnessAwareModel(subclassed()) if wrap == "wrapper" else MixedIn()

    model = build()
    model(X[:1])
    start = weights(model)
    compile_model(model, OPTIMIZERS["bisam"](rho=0.5), jit_compile)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    sam_weights = weights(model)

    plain = build()
    plain(X[:1])
    for v, s in zip(plain.weights, start):
        v.assign(s)
    compile_model(plain, OPTIMIZERS["bisam"](rho=0.0), jit_compile)
    plain.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    sgd_weights = weights(plain)
    assert max(np.max(np.abs(a - b)) for a, b in zip(sam_weights, start)) > 1e-3
    assert max(np.max(np.abs(a - b)) for a, b in zip(sam_weights, sgd_weights)) > 1e-5


def test_apply_outside_the_step_raises_and_inside_applies_the_inner_optimizer():
    sam = bk.SAM(keras.optimizers.SGD(0.5))
    variable = keras.Variable(np.ones(3, "float32"))
    gradient = tf.constant([1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match=FIX):
        sam.apply([gradient], [variable])
    with sam.descent_step():
        sam.apply([gradient], [variable])
    # 1 - 0.5 g: exact in float32 (powers of two).
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), [0.5, 0.0, -1.0])
    with pytest.raises(ValueError, match=FIX):
        sam.apply_gradients([(gradient, variable)])
