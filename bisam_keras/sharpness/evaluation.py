"""The model's objective at `w + delta`, compiled once, without writing a weight.

An `Evaluator` runs `model.stateless_call` with the trainable weights
`w + delta` and the current non-trainable state: no variable is written, and in
`training=True` mode (BatchNorm on batch statistics) the state updates the call
returns are dropped. Its compiled functions take the batch with its first axis
left open and the perturbation as arguments, so nothing retraces per batch,
grid point or iteration; `w` is read from the variables at each call, so an
evaluator follows the weights during `fit`.

`evaluator(model, objective, examples)` keeps one `Evaluator` per (model,
objective, training mode, example and weight shapes) on the model itself, so
that the measures called again on one model (by `SharpnessMonitor` every
epoch, or one measure after another) reuse its compiled functions instead of
tracing them anew.
"""

import inspect

import keras
import numpy as np
from keras import ops

from bisam_keras.sharpness import autodiff, objectives
from bisam_keras.training import SharpnessAwareModel


def measured_model(model):
    """The model whose weights are measured: the wrapped one for a `SharpnessAwareModel`."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    inner = model.inner_model if isinstance(model, SharpnessAwareModel) else model
    if not inner.built or not inner.trainable_variables:
        raise ValueError(
            "`model` must be built and have trainable weights (call it on a batch "
            f"first). Received: model={model.name!r}"
        )
    return inner


def weights(model):
    """The trainable weights of `measured_model(model)` as float64 NumPy arrays."""
    return [np.asarray(v, np.float64) for v in measured_model(model).trainable_variables]


_CACHE_ATTRIBUTE = "_bisam_keras_sharpness_evaluators"
"""The attribute of a measured model that holds its cached evaluators."""


def _objective_key(objective):
    """A hashable key for `objective` as a measure receives it (a name, or the object)."""
    if objective is None or isinstance(objective, str):
        return ("name", objective)
    return ("object", id(objective))


def evaluator(model, objective, examples, training=False):
    """The cached `Evaluator` of `model` for `objective`, `examples`' shapes and `training`.

    Args:
        model: the measured `keras.Model` (a `SharpnessAwareModel` is unwrapped).
        objective: what the measure received as `objective` (see `objectives.get`).
        examples: the `data.Examples` whose shapes (all but the batch axis) and
            dtypes fix the compiled signature.
        training: the model's mode. Defaults to `False`.

    Returns:
        An `Evaluator`, built on the first call and reused by every later call
        with the same key (the key of `objective=None` includes the compiled
        loss, so recompiling the model with another loss builds a new one).
    """
    inner = measured_model(model)
    if objective is None:
        anchor = getattr(model, "loss", None)
        key = ("compiled", id(anchor))
    else:
        anchor = objective
        key = _objective_key(objective)
    key += (
        bool(training),
        tuple(examples.x.shape[1:]),
        str(examples.x.dtype),
        tuple(examples.y.shape[1:]),
        str(examples.y.dtype),
        tuple(id(v) for v in inner.trainable_variables),
    )
    # Set past Keras' attribute tracking: the cache is not part of the model's state.
    cache = inner.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        object.__setattr__(inner, _CACHE_ATTRIBUTE, cache)
    if key not in cache:
        # `anchor` keeps the object alive, so its id is not reused while cached.
        goal = objectives.get(objective, model)
        cache[key] = (anchor, Evaluator(model, goal, examples, training=training))
    return cache[key][1]


class Evaluator:
    """Compiled evaluations of one model and objective on batches shaped like `examples`.

    Args:
        model: the measured `keras.Model` (a `SharpnessAwareModel` is unwrapped).
        objective: an `objectives.Objective`.
        examples: the `data.Examples` that fix the signature (all but the batch axis).
        training: run the model in training mode (BatchNorm on batch
            statistics, updates dropped). Defaults to `False`.
    """

    def __init__(self, model, objective, examples, training=False):
        self.model = measured_model(model)
        self.variables = list(self.model.trainable_variables)
        self.objective = objective
        self.training = training
        self._takes_training = "training" in inspect.signature(self.model.call).parameters
        self._backend = autodiff.backend_module()
        spec = self._backend.spec
        self._deltas = [spec(v.shape, v.dtype) for v in self.variables]
        self._data = [
            spec((None,) + examples.x.shape[1:], examples.x.dtype),
            spec((None,) + examples.y.shape[1:], examples.y.dtype),
        ]
        self._compiled = {}

    # -------------------------------------------------------------- the maths
    def _outputs(self, deltas, x):
        params = [v.value + ops.cast(d, v.dtype) for v, d in zip(self.variables, deltas)]
        state = [v.value for v in self.model.non_trainable_variables]
        kwargs = {"training": self.training} if self._takes_training else {}
        y_pred, _ = self.model.stateless_call(params, state, x, **kwargs)
        return y_pred

    def _reported(self, y, y_pred):
        """`[value, error rate]` (the error rate is NaN for a non-classifier)."""
        value = ops.cast(self.objective.value(y, y_pred), "float32")
        if objectives.is_classifier_output(y_pred):
            error = objectives.error_rate(y, y_pred)
        else:
            error = ops.convert_to_tensor(float("nan"), "float32")
        return ops.stack([value, error])

    def _ascent(self, deltas, x, y):
        y_pred = self._outputs(deltas, x)
        return ops.cast(self.objective.ascent(y, y_pred), "float32"), self._reported(y, y_pred)

    def _ascent_value(self, deltas, x, y):
        return self._ascent(deltas, x, y)[0]

    def _values(self, deltas, x, y):
        return self._reported(y, self._outputs(deltas, x))

    def _grid(self, coefficients, directions, x, y):
        def at(point):
            deltas = [
                sum(point[i] * directions[i][j] for i in range(len(directions)))
                for j in range(len(self.variables))
            ]
            return self._values(deltas, x, y)

        return ops.map(at, coefficients)

    def _hvp(self, vectors, x, y):
        zeros = [ops.zeros(v.shape, v.dtype) for v in self.variables]
        product = self._backend.hessian_vector_product(self._ascent_value)
        return product(zeros, vectors, x, y)

    # ------------------------------------------------------ compiled, cached
    def _function(self, name, fn, signature):
        if name not in self._compiled:
            self._compiled[name] = self._backend.compile_function(fn, signature, name)
        return self._compiled[name]

    def gradient(self, deltas, x, y):
        """`(ascent value, [value, error], gradient of the ascent objective)` at `w + deltas`."""
        fn = self._function(
            "gradient",
            self._backend.value_and_gradient(self._ascent),
            [self._deltas, *self._data],
        )
        value, reported, grads = fn(deltas, x, y)
        return float(value), np.asarray(reported, np.float64), grads

    def values(self, deltas, x, y):
        """`[value, error rate]` at `w + deltas`: one forward pass."""
        fn = self._function("values", self._values, [self._deltas, *self._data])
        return np.asarray(fn(deltas, x, y), np.float64)

    def grid(self, coefficients, directions, x, y):
        """`[value, error rate]` at `w + sum_i c_i d_i` for each row `c` of `coefficients`."""
        spec = self._backend.spec
        signature = [
            spec((None, len(directions)), "float32"),
            [self._deltas for _ in directions],
            *self._data,
        ]
        fn = self._function(f"grid{len(directions)}", self._grid, signature)
        return np.asarray(fn(np.asarray(coefficients, np.float32), directions, x, y), np.float64)

    def hvp(self, vectors, x, y):
        """The Hessian of the ascent objective at `w` times `vectors` (one per variable)."""
        fn = self._function("hvp", self._hvp, [self._deltas, *self._data])
        return fn(vectors, x, y)

    # ------------------------------------------------------------- plumbing
    def zeros(self):
        """A zero perturbation, one float32 array per variable."""
        return [np.zeros(v.shape, np.float32) for v in self.variables]

    def unflatten(self, flat):
        """A flat vector as one float32 array per variable."""
        pieces, start = [], 0
        for v in self.variables:
            size = int(np.prod(v.shape))
            pieces.append(np.asarray(flat[start : start + size], np.float32).reshape(v.shape))
            start += size
        return pieces

    @staticmethod
    def flatten(tensors):
        """Tensors (one per variable) as one flat float64 vector."""
        return np.concatenate([np.asarray(t, np.float64).ravel() for t in tensors])


def weighted_mean(values, sizes):
    """The mean of per-batch means `values`, weighted by the batch sizes: the mean over examples."""
    sizes = np.asarray(sizes, np.float64)
    return np.tensordot(sizes / sizes.sum(), np.asarray(values, np.float64), axes=1)
