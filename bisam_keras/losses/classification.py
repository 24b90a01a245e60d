"""What a compiled Keras loss says about a model output: class scores or not.

BiSAM's lower bound needs class scores, and must know whether they are logits
or probabilities: `describe_loss(loss)` reads both from the loss the output is
compiled with, so that the bound follows the loss (a softmax output compiled
with `SparseCategoricalCrossentropy()` has probabilities, not logits).

- `"categorical"`: (Sparse)CategoricalCrossentropy, CategoricalFocalCrossentropy,
  CategoricalGeneralizedCrossEntropy, CategoricalHinge, KLDivergence and the BiSAM
  bounds; integer or one-hot labels, one per position.
- `"binary"`: BinaryCrossentropy, BinaryFocalCrossentropy, Hinge, SquaredHinge;
  0/1 (or -1/1) labels, one per score.
- `"regression"`: MeanSquaredError, MeanAbsoluteError, Huber, LogCosh,
  CosineSimilarity, Poisson, ...: no classes.
- `"unknown"`: any other loss or function: cannot tell.
"""

import collections

import keras

from bisam_keras.losses.losses import _LowerBoundLoss

LossKind = collections.namedtuple("LossKind", ["kind", "from_logits", "ignore_class"])
"""`kind` (see the module docstring); `from_logits`: `True`, `False`, or `None`
where the loss does not tell; `ignore_class`: an int or `None`."""

_L = keras.losses

# Classes whose `get_config()` holds `from_logits` (and `ignore_class`).
_CATEGORICAL_CONFIGURED = (
    _L.SparseCategoricalCrossentropy,
    _L.CategoricalCrossentropy,
    _L.CategoricalFocalCrossentropy,
    _LowerBoundLoss,
)
_BINARY_CONFIGURED = (_L.BinaryCrossentropy, _L.BinaryFocalCrossentropy)
# Fixed conventions: (kind, from_logits).
_FIXED = {
    _L.CategoricalHinge: ("categorical", True),
    _L.KLDivergence: ("categorical", False),
    _L.CategoricalGeneralizedCrossEntropy: ("categorical", False),
    _L.Hinge: ("binary", True),
    _L.SquaredHinge: ("binary", True),
}
_REGRESSION = (
    _L.MeanSquaredError,
    _L.MeanAbsoluteError,
    _L.MeanAbsolutePercentageError,
    _L.MeanSquaredLogarithmicError,
    _L.Huber,
    _L.LogCosh,
    _L.CosineSimilarity,
    _L.Poisson,
    _L.Dice,
    _L.Tversky,
    _L.CTC,
    _L.Circle,
)
# The loss functions, with their default arguments.
_FUNCTIONS = {
    _L.sparse_categorical_crossentropy: ("categorical", False),
    _L.categorical_crossentropy: ("categorical", False),
    _L.categorical_focal_crossentropy: ("categorical", False),
    _L.categorical_generalized_cross_entropy: ("categorical", False),
    _L.categorical_hinge: ("categorical", True),
    _L.kl_divergence: ("categorical", False),
    _L.binary_crossentropy: ("binary", False),
    _L.binary_focal_crossentropy: ("binary", False),
    _L.hinge: ("binary", True),
    _L.squared_hinge: ("binary", True),
}
_REGRESSION_FUNCTIONS = (
    _L.mean_squared_error,
    _L.mean_absolute_error,
    _L.mean_absolute_percentage_error,
    _L.mean_squared_logarithmic_error,
    _L.huber,
    _L.log_cosh,
    _L.cosine_similarity,
    _L.poisson,
    _L.dice,
    _L.tversky,
    _L.ctc,
    _L.circle,
)


def describe_loss(loss):
    """The `LossKind` of a loss as `compile` takes it (an object, function or name).

    Args:
        loss: a `keras.losses.Loss`, a loss function, or a name that
            `keras.losses.get` resolves (`"sparse_categorical_crossentropy"`).

    Returns:
        A `LossKind(kind, from_logits, ignore_class)`.
    """
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return LossKind("unknown", None, None)
    if isinstance(loss, _CATEGORICAL_CONFIGURED):
        config = loss.get_config()
        kind = "binary" if getattr(loss, "binary", False) else "categorical"
        return LossKind(kind, bool(config.get("from_logits")), config.get("ignore_class"))
    if isinstance(loss, _BINARY_CONFIGURED):
        return LossKind("binary", bool(loss.get_config().get("from_logits")), None)
    for cls, (kind, from_logits) in _FIXED.items():
        if isinstance(loss, cls):
            return LossKind(kind, from_logits, None)
    if isinstance(loss, _REGRESSION):
        return LossKind("regression", None, None)
    try:
        if loss in _FUNCTIONS:
            kind, from_logits = _FUNCTIONS[loss]
            return LossKind(kind, from_logits, None)
        if loss in _REGRESSION_FUNCTIONS:
            return LossKind("regression", None, None)
    except TypeError:  # an unhashable callable
        pass
    return LossKind("unknown", None, None)


def loss_name(loss):
    """A short name of `loss` for messages."""
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, keras.losses.Loss):
        return f"{type(loss).__name__}()"
    return getattr(loss, "__name__", repr(loss))
