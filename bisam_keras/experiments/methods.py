"""The training methods of the paper's experiments, by their CLI names."""

from bisam_keras.optimizers import SAM, BiSAM, TorchSGD

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

    `weight_decay` is PyTorch's coupled decay at `w` (`weight_decay * w` added
    to the descent gradient, through momentum). `sgd` returns
    `inner_optimizer` itself; with a `weight_decay`, a `TorchSGD` inner
    optimizer is returned as a copy with that `coupled_weight_decay` (a plain
    model trains with it), any other as a `SAM` with `rho=0`, which adds the
    decay. The sharpness-aware methods pass it to the wrapper's
    `weight_decay`. The efficient methods use `swp_probability` and
    `sds_fraction` (the paper's `beta = gamma = 0.5`), the others ignore them.
    """
    if not is_sharpness_aware(method):
        if not weight_decay:
            return inner_optimizer
        if isinstance(inner_optimizer, TorchSGD):
            config = inner_optimizer.get_config()
            return TorchSGD.from_config({**config, "coupled_weight_decay": weight_decay})
        return SAM(inner_optimizer, rho=0.0, weight_decay=weight_decay, seed=seed)
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
