"""TensorFlow autodiff for `bisam_keras.sharpness` (see `autodiff`).

`tf.function` with a fixed input signature (the batch axis left `None`) traces
each function once, whatever the batch size, the grid point or the iteration.
Hessian-vector products differentiate the gradient (double backward), which
works through `tf.custom_gradient` functions such as the BiSAM lower bounds.
"""

import itertools

import tensorflow as tf

from bisam_keras.sharpness import autodiff

_ZERO = tf.UnconnectedGradients.ZERO
_NUMBERS = itertools.count()


def compile_function(fn, signature, name):
    """`fn` as a `tf.function` of `signature`, counting its traces under `name`."""

    def traced(*args):
        autodiff.count_trace(name)
        return fn(*args)

    # A code object of its own, named `<name>_<n>`: TensorFlow's retracing
    # warning counts the traces of all the functions whose code objects are
    # equal, so without it the one trace of each function of each model would
    # add up to a spurious "triggered tf.function retracing".
    unique = f"{name}_{next(_NUMBERS)}"
    traced.__code__ = traced.__code__.replace(co_name=unique)
    traced.__name__ = traced.__qualname__ = unique
    return tf.function(traced, input_signature=signature)


def value_and_gradient(fn):
    """`(params, *args) -> (value, aux, gradients)` for `fn(params, *args) -> (value, aux)`."""

    def wrapped(params, *args):
        with tf.GradientTape() as tape:
            tape.watch(params)
            value, aux = fn(params, *args)
        return value, aux, tape.gradient(value, params, unconnected_gradients=_ZERO)

    return wrapped


def hessian_vector_product(fn):
    """`(params, vectors, *args) -> H vectors` for the scalar `fn(params, *args)`."""

    def wrapped(params, vectors, *args):
        with tf.GradientTape() as outer:
            outer.watch(params)
            with tf.GradientTape() as inner:
                inner.watch(params)
                value = fn(params, *args)
            gradients = inner.gradient(value, params, unconnected_gradients=_ZERO)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(gradients, vectors)])
        return outer.gradient(dot, params, unconnected_gradients=_ZERO)

    return wrapped


def spec(shape, dtype):
    """The input-signature entry for a tensor of `shape` (`None`: any size) and `dtype`."""
    return tf.TensorSpec(shape, dtype)
