"""The authors' PyTorch training loop (LIONS-EPFL/BiSAM `train.py`), end to end.

The reference side of `benchmarks/parity.py`: it trains the authors' CIFAR
ResNet with their loop on exactly the images, split and noisy labels of a
bisam-keras run, and writes its per-epoch history as JSON:

- model: the authors' `model/resnet.py` (option-A zero-padding shortcuts,
  Kaiming-normal init), copied below with its attribution;
- data: the Keras runner's own train/validation/test split, subset and noisy
  labels (`bisam_keras.data.load` with the run's settings, augmentation off,
  read back to uint8: see `keras_run_arrays`), normalized with the statistics
  the Keras run uses;
- train transform: `RandomCrop(32, padding=4)` -> `RandomHorizontalFlip` ->
  normalize -> `Cutout(size=16, p=0.5)` (their `utility/cutout.py`);
- loss: their `smooth_crossentropy` (true class `1 - s`, others `s / (K - 1)`);
  ascent objective: the same (SAM) or their `perturbation_loss_log` /
  `perturbation_loss_tanh` (BiSAM);
- step: their SAM (`first_step` / `second_step`, the davda54 form in
  `benchmarks/torch_sam.py`) around `torch.optim.SGD(lr, momentum,
  weight_decay)`, BatchNorm statistics updated in the pass at `w` only; SGD:
  one pass, one `torch.optim.SGD` step;
- schedule: `CosineAnnealingLR(T_max=epochs)` stepped once per epoch.

```
python benchmarks/torch_train.py --data-dir ../shared/data/cifar10 --method sam \
    --subset 10000 --label-noise 0.4 --epochs 3 --seed 0 --output runs/torch
```

The history JSON has the Keras runner's metric names: `loss` (the smoothed
cross-entropy at `w` of the training batches, as the authors log it) and
`loss_l2` (plus `weight_decay / 2 * ||w||^2`, the convention of a coupled L2
regularizer), `accuracy` (training batches, at `w`), `val_loss`,
`val_accuracy`, `test_loss`, `test_accuracy`, `lr` and `seconds`.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_sam import SAM, disable_running_stats, enable_running_stats

from bisam_keras.experiments.study import METHODS
from bisam_keras.experiments.study_runs import load_kwargs, read_split

# ---------------------------------------------------------------------------
# The authors' losses (LIONS-EPFL/BiSAM `loss_fnc.py`, MIT license), without
# their in-place edit of the logits.


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


# ---------------------------------------------------------------------------
# The authors' CIFAR ResNet: LIONS-EPFL/BiSAM `model/resnet.py` (MIT license),
# itself from Yerlan Idelbayev's "Proper ResNet implementation for CIFAR10/
# CIFAR100 in PyTorch" (https://github.com/akamaster/pytorch_resnet_cifar10,
# BSD-2-Clause). Copied unchanged but for style: option-A shortcuts,
# `kaiming_normal_` on every Conv2d and Linear weight, PyTorch's default biases.


def _weights_init(m):
    if isinstance(m, nn.Linear | nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # Option A: subsample, then zero-pad the new channels (no parameters).
            self.shortcut = LambdaLayer(
                lambda x: F.pad(
                    x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0
                )
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    def __init__(self, num_blocks, num_classes=10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_weights_init)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def authors_resnet(name="resnet20", num_classes=10):
    """The authors' ResNet-(6n+2); ResNet-20 has 269,722 parameters (CIFAR-10)."""
    if name not in DEPTHS:
        raise ValueError(f"`name` must be one of {sorted(DEPTHS)}. Received: name={name!r}")
    return ResNet([DEPTHS[name]] * 3, num_classes)


# ---------------------------------------------------------------------------
# Data: the Keras run's own split, subset and noisy labels


def _to_uint8(images, mean, std):
    """Undoes `(x - mean) / std` and checks that the result is whole pixel values."""
    pixels = images.astype(np.float64) * np.asarray(std) + np.asarray(mean)
    rounded = np.rint(pixels)
    # float32 normalization of values <= 255 errs by < 255 * 2^-23 * few ~ 1e-4;
    # anything near 0.5 would mean the data are not whole pixel values.
    error = float(np.max(np.abs(pixels - rounded))) if pixels.size else 0.0
    if error > 1e-2:
        raise ValueError(f"images are not normalized whole pixel values (error {error:.3g})")
    return np.clip(rounded, 0, 255).astype(np.uint8)


def keras_run_arrays(config):
    """The images and labels a Keras run of `config` trains, selects and tests on.

    Calls `bisam_keras.data.load` exactly as the runner does (`load_kwargs`),
    without augmentation, and reads every split back to uint8 pixels. The
    training split comes in the pipeline's shuffled order; it is sorted by
    image bytes, so that the arrays do not depend on that order.

    Returns:
        A dict of NumPy arrays `train_x, train_y, val_x, val_y, test_x, test_y`
        (images uint8 NHWC, labels int64; `train_y` holds the noisy labels)
        and the normalization `mean`, `std` (per channel, pixel units).
    """
    from bisam_keras import data as data_lib

    splits = data_lib.load(config.dataset, **load_kwargs(config))
    arrays = {"mean": np.asarray(splits.mean), "std": np.asarray(splits.std)}
    for key, dataset in (
        ("train", splits.train),
        ("val", splits.validation),
        ("test", splits.test),
    ):
        x, y = read_split(dataset)
        x = _to_uint8(x, splits.mean, splits.std)
        if key == "train":
            order = sorted(range(len(x)), key=lambda i: (x[i].tobytes(), int(y[i])))
            x, y = x[order], y[order]
        arrays[f"{key}_x"], arrays[f"{key}_y"] = x, y
    return arrays


# ---------------------------------------------------------------------------
# The authors' CIFAR train transform, on a batch


def augment_batch(images, mean, std, generator, cutout_size=16, cutout_p=0.5, padding=4):
    """Crop (pad 4) -> flip -> normalize -> Cutout, per image, as their transforms do.

    Args:
        images: uint8 tensor `(n, 32, 32, 3)`.
        mean, std: per-channel normalization, pixel units.
        generator: a `torch.Generator`, the only source of randomness.

    Returns:
        float32 tensor `(n, 3, 32, 32)`.
    """
    n, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).float()
    x = F.pad(x, (padding, padding, padding, padding))
    tops = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    lefts = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty(n, 3, h, w)
    for i in range(n):
        crop = x[i, :, tops[i] : tops[i] + h, lefts[i] : lefts[i] + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    mean = torch.tensor(np.asarray(mean, np.float32)).view(1, 3, 1, 1)
    std = torch.tensor(np.asarray(std, np.float32)).view(1, 3, 1, 1)
    out = (out - mean) / std
    half = cutout_size // 2
    apply = torch.rand(n, generator=generator) <= cutout_p
    rows = torch.randint(-half, h - half, (n,), generator=generator)
    cols = torch.randint(-half, w - half, (n,), generator=generator)
    for i in range(n):
        if apply[i]:
            r, c = int(rows[i]), int(cols[i])
            out[i, :, max(0, r) : min(h, r + cutout_size), max(0, c) : min(w, c + cutout_size)] = 0
    return out


def _eval_tensor(images, mean, std):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean = torch.tensor(np.asarray(mean, np.float32)).view(1, 3, 1, 1)
    std = torch.tensor(np.asarray(std, np.float32)).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def evaluate(model, x, y, smoothing, batch_size=500):
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        pred = model(xb)
        total_loss += float(smooth_crossentropy(pred, yb, smoothing).sum())
        correct += int((pred.argmax(1) == yb).sum())
    return total_loss / len(x), correct / len(x)


# ---------------------------------------------------------------------------
# Training


def train(
    arrays,
    method,
    seed=0,
    model="resnet20",
    epochs=3,
    batch_size=128,
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    smoothing=0.1,
    rho=0.05,
    mu=None,
    alpha=0.1,
    history_path=None,
    log=print,
):
    """Trains with the authors' loop; returns the per-epoch history dict.

    Args:
        arrays: from `keras_run_arrays`.
        method: one of `METHODS`.
        seed: seeds initialization, shuffling and augmentation (`torch.manual_seed`).
        smoothing: the authors' `s` (true class `1 - s`).
        mu: the bound's temperature; `None`: 1.5 (-log) / 10 (tanh), the paper's CIFAR values.
        history_path: write the history JSON here after every epoch.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}. Received: method={method!r}")
    if mu is None:
        mu = 10.0 if method == "bisam-tanh" else 1.5
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(max(arrays["train_y"].max(), arrays["test_y"].max()) + 1)
    net = authors_resnet(model, num_classes)
    sgd_kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if method == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), **sgd_kwargs)
        base = optimizer
    else:
        optimizer = SAM(net.parameters(), torch.optim.SGD, rho=rho, **sgd_kwargs)
        base = optimizer.base_optimizer
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(base, epochs)
    mean, std = arrays["mean"], arrays["std"]
    train_x = torch.from_numpy(arrays["train_x"])
    train_y = torch.from_numpy(arrays["train_y"])
    val_x, val_y = _eval_tensor(arrays["val_x"], mean, std), torch.from_numpy(arrays["val_y"])
    test_x, test_y = _eval_tensor(arrays["test_x"], mean, std), torch.from_numpy(arrays["test_y"])
    history = {}
    for epoch in range(epochs):
        start = time.perf_counter()
        net.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum, loss_l2_sum, correct, seen = 0.0, 0.0, 0, 0
        current_lr = base.param_groups[0]["lr"]
        for begin in range(0, len(order), batch_size):
            index = order[begin : begin + batch_size]
            inputs = augment_batch(train_x[index], mean, std, generator)
            targets = train_y[index]
            enable_running_stats(net)
            predictions = net(inputs)
            loss = smooth_crossentropy(predictions, targets, smoothing)
            with torch.no_grad():
                squared = sum(float((p * p).sum()) for p in net.parameters())
            if method == "sgd":
                loss.mean().backward()
                optimizer.step()
                optimizer.zero_grad()
            else:
                if method == "sam":
                    ascent = loss
                elif method == "bisam-neglog":
                    ascent = perturbation_loss_log(predictions, targets, mu)
                else:
                    ascent = perturbation_loss_tanh(predictions, targets, mu, alpha)
                ascent.mean().backward()
                optimizer.first_step()
                disable_running_stats(net)
                smooth_crossentropy(net(inputs), targets, smoothing).mean().backward()
                optimizer.second_step()
            with torch.no_grad():
                k = len(targets)
                loss_sum += float(loss.sum())
                loss_l2_sum += float(loss.sum()) + k * weight_decay / 2 * squared
                correct += int((predictions.argmax(1) == targets).sum())
                seen += k
        scheduler.step()
        val_loss, val_acc = evaluate(net, val_x, val_y, smoothing)
        test_loss, test_acc = evaluate(net, test_x, test_y, smoothing)
        row = {
            "loss": loss_sum / seen,
            "loss_l2": loss_l2_sum / seen,
            "accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "lr": current_lr,
            "seconds": time.perf_counter() - start,
        }
        for key, value in row.items():
            history.setdefault(key, []).append(value)
        log(
            f"torch {method} seed {seed} epoch {epoch + 1}/{epochs}: "
            + " ".join(f"{k}={v:.4f}" for k, v in row.items())
        )
        if history_path:
            os.makedirs(os.path.dirname(history_path) or ".", exist_ok=True)
            with open(history_path, "w") as f:
                json.dump(history, f, indent=2)
    return history


def keras_config(
    data_dir,
    method,
    seed,
    subset,
    label_noise,
    epochs,
    output="runs/parity-keras",
    model="resnet20",
    preset="paper-cifar",
    dataset="cifar10",
):
    """The `RunConfig` of the matching Keras run (`study.run_config`, the preset's settings)."""
    from bisam_keras.experiments import study

    return study.run_config(
        method,
        seed,
        epochs,
        output,
        data_dir=data_dir,
        model=model,
        subset=subset,
        label_noise=label_noise,
        dataset=dataset,
        preset=preset,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--method", default="sam", choices=METHODS)
    p.add_argument("--model", default="resnet20", choices=sorted(DEPTHS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=10_000)
    p.add_argument("--label-noise", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--smoothing", type=float, default=0.1, help="the authors' s")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--output", default="runs/torch")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = keras_config(
        args.data_dir,
        args.method,
        args.seed,
        args.subset,
        args.label_noise,
        args.epochs,
        model=args.model,
    )
    arrays = keras_run_arrays(config)
    path = os.path.join(args.output, args.method, f"seed{args.seed}", "history.json")
    train(
        arrays,
        args.method,
        seed=args.seed,
        model=args.model,
        epochs=args.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        smoothing=args.smoothing,
        rho=config.rho,
        mu=config.mu,
        alpha=config.alpha,
        history_path=path,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
