"""A plain PyTorch SAM/BiSAM step: the reference that `vs_pytorch.py` times us against.

In the style of the widely used davda54/sam wrapper (Foret et al., 2021,
https://arxiv.org/abs/2010.01412), with BiSAM's ascent objective
("Improving SAM Requires Rethinking its Optimization Formulation"):

```
loss_asc = A(f(x; w), y)       # A = cross-entropy (SAM) or the lower bound Q (BiSAM)
e        = rho * g / ||g||_2   # first_step: w <- w + e
loss     = CE(f(x; w + e), y)  # BatchNorm running statistics frozen (momentum 0)
w        = base.step(grad)     # second_step: w <- w - e, then the base optimizer
```

BatchNorm statistics are updated only in the pass at `w`, as in bisam-keras.
The SAM wrapper, its BatchNorm switches and the -log bound are the shared
PyTorch reference (`bisam_keras.testing.torch_reference`); this file adds the
models and the step.
The models are the CIFAR ResNets of `bisam_keras/models/cifar_resnet.py`
(no conv bias, BatchNorm eps 1e-5 / momentum 0.1, 1x1 projection with BN when
the shape changes): ResNet-20 has 272,474 parameters, ResNet-56 855,770.

Needs PyTorch: `pip install -e ".[bench]"` (CPU: `pip install torch==2.13.0`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bisam_keras.testing.torch_reference import (
    SAM,
    disable_running_stats,
    enable_running_stats,
    neglog_lower_bound,
)

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


class BasicBlock(nn.Module):
    def __init__(self, in_filters, filters, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_filters, filters, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(filters, filters, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1)
        self.shortcut = nn.Identity()
        if stride != 1 or in_filters != filters:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_filters, filters, 1, stride, bias=False),
                nn.BatchNorm2d(filters, eps=1e-5, momentum=0.1),
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: stages of 16/32/64 filters, GAP, linear."""

    def __init__(self, name="resnet20", num_classes=10):
        super().__init__()
        blocks = DEPTHS[name]
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16, eps=1e-5, momentum=0.1),
            nn.ReLU(),
        )
        layers, in_filters = [], 16
        for stage, filters in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_filters, filters, stride))
                in_filters = filters
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_step(method, model, lr=0.01, momentum=0.9, rho=0.05, mu=1.5):
    """A `step(x, y)` closure for `method` in `("sgd", "sam", "bisam")`."""
    if method == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

        def sgd_step(x, y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss

        return sgd_step
    if method not in ("sam", "bisam"):
        raise ValueError(f"`method` must be sgd, sam or bisam. Received: method={method!r}")
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, momentum=momentum)

    def sam_step(x, y):
        enable_running_stats(model)  # pass 1 at w: BatchNorm statistics update here
        logits = model(x)
        ascent = (
            F.cross_entropy(logits, y) if method == "sam" else neglog_lower_bound(logits, y, mu)
        )
        ascent.backward()
        optimizer.first_step()
        disable_running_stats(model)  # pass 2 at w + e: statistics frozen
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.second_step()
        return loss

    return sam_step
