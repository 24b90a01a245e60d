"""What a measure differentiates (the ascent objective) and what it reports.

An `Objective` holds two functions of `(y_true, y_pred)`, each the mean over a
batch: `ascent`, which the gradient follows, and `value`, which the measure
reports. They are the same function except for the 0-1 loss, whose ascent
follows a BiSAM lower bound (the 0-1 loss has no useful gradient) while its
reported value is the measured error rate.
"""

import dataclasses
from collections.abc import Callable

import keras
from keras import ops

from bisam_keras.losses import lower_bounds
from bisam_keras.sharpness import checks

NAMES = ("cross_entropy", "neglog", "tanh", "zero_one")
"""The objectives that can be named by a string."""


@dataclasses.dataclass(frozen=True)
class Objective:
    """An ascent objective and a reported value, both `(y_true, y_pred) -> scalar`.

    Attributes:
        name: a short name, used in results and logs.
        ascent: the differentiable objective the ascent and the Hessian use.
        value: the reported objective (the error rate for `"zero_one"`).
        config: the settings that define it, for the results.
    """

    name: str
    ascent: Callable
    value: Callable
    config: dict


def labels(y_true, y_pred):
    """Integer labels from integer (`(batch,)`, `(batch, 1)`) or one-hot `y_true`."""
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] != 1:
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, (-1,)), "int32")


def is_classifier_output(y_pred):
    """Whether `y_pred` has the static shape `(batch, K)` with `K >= 2`."""
    return len(y_pred.shape) == 2 and y_pred.shape[-1] is not None and y_pred.shape[-1] >= 2


def error_rate(y_true, y_pred):
    """The fraction of examples whose `argmax_j y_pred_j` is not the label."""
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    wrong = ops.not_equal(predicted, labels(y_true, y_pred))
    return ops.mean(ops.cast(wrong, "float32"))


def cross_entropy(from_logits=True):
    """The categorical cross-entropy, for integer or one-hot labels."""

    def loss(y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        return ops.mean(
            ops.sparse_categorical_crossentropy(
                labels(y_true, y_pred), y_pred, from_logits=from_logits
            )
        )

    return Objective("cross_entropy", loss, loss, {"from_logits": from_logits})


def lower_bound(bound="neglog", mu=None, alpha=0.1):
    """The mean BiSAM lower bound `Q` of the 0-1 loss (Eq. 14), both ascended and reported."""
    bound = checks.choice("bound", bound, ("neglog", "tanh"))

    def q(y_true, y_pred):
        return ops.mean(
            lower_bounds.lower_bound(labels(y_true, y_pred), y_pred, bound, mu=mu, alpha=alpha)
        )

    return Objective(bound, q, q, {"bound": bound, "mu": mu, "alpha": alpha})


def zero_one(bound="neglog", mu=None, alpha=0.1):
    """The 0-1 loss: the ascent follows the lower bound `Q`; the error rate is reported."""
    q = lower_bound(bound, mu=mu, alpha=alpha)
    return Objective("zero_one", q.ascent, error_rate, dict(q.config))


def from_loss(loss):
    """An `Objective` from a `keras.losses.Loss`, a loss name, or `(y_true, y_pred) -> loss`."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if not callable(loss):
        raise ValueError(
            "`objective` must be a keras.losses.Loss, a loss name or a callable "
            f"`(y_true, y_pred) -> loss`. Received: objective={loss!r}"
        )

    def mean_loss(y_true, y_pred):
        return ops.mean(ops.cast(loss(y_true, y_pred), "float32"))

    name = getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)
    return Objective(str(name), mean_loss, mean_loss, {"loss": str(name)})


def get(objective, model):
    """The `Objective` for `objective`; `None` means the loss `model` was compiled with.

    Args:
        objective: `None`, one of `NAMES`, an `Objective`, a
            `keras.losses.Loss`, a Keras loss name, or a callable
            `(y_true, y_pred) -> loss`.
        model: the measured model, whose compiled loss `None` stands for.
    """
    if isinstance(objective, Objective):
        return objective
    if objective is None:
        loss = getattr(model, "loss", None)
        if loss is None or isinstance(loss, (dict, list, tuple)):
            raise ValueError(
                "`objective=None` measures the loss the model was compiled with, a "
                "single loss; compile the model or pass `objective`. Received: "
                f"model.loss={loss!r}"
            )
        return from_loss(loss)
    if isinstance(objective, str) and objective in NAMES:
        return {
            "cross_entropy": cross_entropy,
            "neglog": lambda: lower_bound("neglog"),
            "tanh": lambda: lower_bound("tanh"),
            "zero_one": zero_one,
        }[objective]()
    return from_loss(objective)
