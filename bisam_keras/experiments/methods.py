"""The training methods of the paper's experiments, by their CLI names."""

import keras

from bisam_keras.optimizers import SAM, BiSAM

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


def make_optimizer(
    method,
    inner_optimizer,
    rho=0.05,
    mu=None,
    alpha=0.1,
    eta=0.0,
    swp_probability=0.5,
    sds_fraction=0.5,
    micro_batch_size=None,
    sync_perturbation=False,
    seed=None,
    weight_decay=0.0,
):
    """The optimizer for `method`, wrapping `inner_optimizer`.

    `sgd` returns `inner_optimizer` itself, or with a coupled `weight_decay`
    a `SAM` with `rho=0` (the inner optimizer with `weight_decay * w` added to
    each gradient); the efficient methods use `swp_probability` and
    `sds_fraction` (the paper's `beta = gamma = 0.5`), the others ignore them.
    `weight_decay` is the wrappers' coupled decay at `w`.
    """
    if not is_sharpness_aware(method):
        if weight_decay:
            return SAM(inner_optimizer, rho=0.0, weight_decay=weight_decay, seed=seed)
        return inner_optimizer
    kwargs = dict(
        weight_decay=weight_decay,
        rho=rho,
        adaptive=is_adaptive(method),
        eta=eta,
        micro_batch_size=micro_batch_size,
        sync_perturbation=sync_perturbation,
        seed=seed,
    )
    if is_efficient(method):
        kwargs.update(swp_probability=swp_probability, sds_fraction=sds_fraction)
    bound = lower_bound_of(method)
    if bound is None:
        return SAM(inner_optimizer, **kwargs)
    return BiSAM(inner_optimizer, lower_bound=bound, mu=mu, alpha=alpha, **kwargs)


def inner_sgd(learning_rate, momentum=0.9, nesterov=False):
    """The paper's base optimizer: SGD with momentum (weight decay is added as
    coupled L2 on the weights, see `bisam_keras.experiments.runner`)."""
    return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
