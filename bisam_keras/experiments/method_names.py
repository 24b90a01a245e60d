"""The training methods of the paper's experiments, by their CLI names.

Plain data and predicates, without TensorFlow: the command line reads them
before it imports TensorFlow; `methods.make_optimizer` builds the optimizers.
"""

METHODS = (
    "sgd",
    "sam",
    "bisam-neglog",
    "bisam-tanh",
    "asam",
    "a-bisam-neglog",
    "a-bisam-tanh",
    "esam",
    "e-bisam-neglog",
    "e-bisam-tanh",
)
"""Every method name `bisam-keras --method` accepts."""

LABELS = {
    "sgd": "SGD",
    "sam": "SAM",
    "bisam-neglog": "BiSAM (-log)",
    "bisam-tanh": "BiSAM (tanh)",
    "asam": "ASAM",
    "a-bisam-neglog": "A-BiSAM (-log)",
    "a-bisam-tanh": "A-BiSAM (tanh)",
    "esam": "ESAM",
    "e-bisam-neglog": "E-BiSAM (-log)",
    "e-bisam-tanh": "E-BiSAM (tanh)",
}
"""The paper's column names for each method."""


def check_method(method):
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}. Received: method={method!r}")
    return method


def is_sharpness_aware(method):
    return check_method(method) != "sgd"


def is_adaptive(method):
    return check_method(method) in ("asam", "a-bisam-neglog", "a-bisam-tanh")


def is_efficient(method):
    return check_method(method) in ("esam", "e-bisam-neglog", "e-bisam-tanh")


def lower_bound_of(method):
    """`"neglog"`, `"tanh"`, or `None` for the cross-entropy methods."""
    check_method(method)
    for bound in ("neglog", "tanh"):
        if method.endswith(bound):
            return bound
    return None
