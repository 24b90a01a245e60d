"""The optimizer of each training method (the names: `method_names`)."""

from bisam_keras.experiments.method_names import (
    LABELS,
    METHODS,
    check_method,
    is_adaptive,
    is_efficient,
    is_sharpness_aware,
    lower_bound_of,
)
from bisam_keras.optimizers import SAM, BiSAM, TorchSGD

__all__ = [
    "LABELS",
    "METHODS",
    "check_method",
    "is_adaptive",
    "is_efficient",
    "is_sharpness_aware",
    "lower_bound_of",
    "make_optimizer",
]


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
