"""The PyTorch reference: the authors' losses, CIFAR ResNets and SAM step.

One copy of each, imported by the PyTorch side of the tests and benchmarks
(`benchmarks/torch_sam.py`, `vs_pytorch.py`, `bisam_keras.testing.torch_train`):

- the losses of LIONS-EPFL/BiSAM `loss_fnc.py` (MIT license), without their
  in-place edit of the logits: `smooth_crossentropy` (true class `1 - s`,
  others `s / (K - 1)`), the ascent objectives `perturbation_loss_log` (BiSAM
  -log) and `perturbation_loss_tanh` (BiSAM tanh), per example;
- `neglog_lower_bound`: the -log bound `Q` of the paper (Eq. 18), averaged over
  the batch, from `perturbation_loss_log`;
- the two-step `SAM` wrapper of davda54/sam (which the authors' `train.py`
  uses) and its BatchNorm switches;
- `authors_resnet`: the authors' `model/resnet.py` (option-A zero-padding
  shortcuts, Kaiming-normal init), from `tests/authors_reference/resnet.py`.

Needs PyTorch: `pip install -e ".[bench]"` (CPU: `pip install torch==2.13.0`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from bisam_keras.testing import authors_module

AUTHORS_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
"""The CIFAR ResNets of the authors' `model/resnet.py` that `authors_resnet` builds."""


def smooth_crossentropy(pred, gold, smoothing=0.1):
    """Per-example cross-entropy against `1 - s` on the true class, `s / (K - 1)` elsewhere."""
    n_class = pred.size(1)
    one_hot = torch.full_like(pred, fill_value=smoothing / (n_class - 1))
    one_hot.scatter_(dim=1, index=gold.unsqueeze(1), value=1.0 - smoothing)
    log_prob = F.log_softmax(pred, dim=1)
    return F.kl_div(input=log_prob, target=one_hot, reduction="none").sum(-1)


def perturbation_loss_log(pred, targets, mu=1.0):
    """BiSAM (-log): `logsumexp_j(mu * (1 - log(1 + exp(log(e - 1) - (f_j - f_y)))))`."""
    margins = pred - pred.gather(1, targets[:, None])
    phi = 1.0 + F.softplus(margins - math.log(math.e - 1.0), beta=-1)
    return torch.logsumexp(mu * phi, 1)


def perturbation_loss_tanh(pred, targets, mu=10.0, alpha=0.1):
    """BiSAM (tanh): `logsumexp_j(mu * tanh(alpha * (f_j - f_y)))`."""
    margins = pred - pred.gather(1, targets[:, None])
    return torch.logsumexp(mu * torch.tanh(alpha * margins), 1)


def neglog_lower_bound(logits, labels, mu=1.5):
    """BiSAM's -log lower bound Q (Eq. 18), averaged over the batch.

    `phi(x) = 1 - log(1 + exp(gamma - x))`, `gamma = log(e - 1)`, so `phi(0) = 0`;
    `Q_i = (1/mu) * logsumexp_j(mu * phi(f_j - f_y)) - log(K)/mu`: the authors'
    `perturbation_loss_log`, scaled by `1/mu` and shifted by `-log(K)/mu`.
    """
    logits = logits.float()
    num_classes = logits.shape[1]
    q = perturbation_loss_log(logits, labels, mu) / mu - math.log(num_classes) / mu
    return q.mean()


def authors_resnet(name="resnet20", num_classes=10):
    """The authors' ResNet-(6n+2); ResNet-20 has 269,722 parameters (CIFAR-10)."""
    if name not in AUTHORS_RESNETS:
        raise ValueError(f"`name` must be one of {list(AUTHORS_RESNETS)}. Received: name={name!r}")
    return getattr(authors_module("resnet"), name)(num_classes)


def disable_running_stats(model):
    """Freezes BatchNorm running statistics (davda54's trick: momentum 0)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.backup_momentum = module.momentum
            module.momentum = 0


def enable_running_stats(model):
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and hasattr(
            module, "backup_momentum"
        ):
            module.momentum = module.backup_momentum


class SAM(torch.optim.Optimizer):
    """davda54/sam: the two-step wrapper around a base optimizer."""

    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        if rho < 0.0:
            raise ValueError(f"`rho` must be >= 0. Received: rho={rho}")
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale)  # climb to the local maximum "w + e(w)"
        self.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]  # get back to "w" from "w + e(w)"
        self.base_optimizer.step()  # the sharpness-aware update
        self.zero_grad()

    def _grad_norm(self):
        return torch.norm(
            torch.stack(
                [
                    p.grad.norm(p=2)
                    for g in self.param_groups
                    for p in g["params"]
                    if p.grad is not None
                ]
            ),
            p=2,
        )
