"""The authors' PyTorch training loop (LIONS-EPFL/BiSAM `train.py`), end to end.

The reference side of the parity check (`benchmarks/parity.py`): `train` trains the authors' CIFAR
ResNet with their loop on exactly the images, split and noisy labels of a
bisam-keras run, and writes its per-epoch history as JSON:

- model: the authors' `model/resnet.py` (option-A zero-padding shortcuts,
  Kaiming-normal init), `torch_reference.authors_resnet`;
- data: the Keras runner's own train/validation/test split, subset and noisy
  labels (`bisam_keras.data.load` with the run's settings, augmentation off,
  read back to uint8: see `keras_run_arrays`), normalized with the statistics
  the Keras run uses;
- train transform: `RandomCrop(32, padding=4)` -> `RandomHorizontalFlip` ->
  normalize -> `Cutout(size=16, p=0.5)` (their `utility/cutout.py`);
- loss: their `smooth_crossentropy` (true class `1 - s`, others `s / (K - 1)`);
  ascent objective: the same (SAM) or their `perturbation_loss_log` /
  `perturbation_loss_tanh` (BiSAM), all in `torch_reference`;
- step: their SAM (`first_step` / `second_step`, the davda54 form in
  `torch_reference`) around `torch.optim.SGD(lr, momentum,
  weight_decay)`, BatchNorm statistics updated in the pass at `w` only; SGD:
  one pass, one `torch.optim.SGD` step;
- schedule: `CosineAnnealingLR(T_max=epochs)` stepped once per epoch.

`benchmarks/torch_train.py` is its command line.

The history JSON has the Keras runner's metric names: `loss` (the smoothed
cross-entropy at `w` of the training batches, as the authors log it) and
`loss_l2` (plus `weight_decay / 2 * ||w||^2`, the convention of a coupled L2
regularizer), `accuracy` (training batches, at `w`), `val_loss`,
`val_accuracy`, `test_loss`, `test_accuracy`, `lr` and `seconds`.
"""

import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from bisam_keras.experiments.study import METHODS
from bisam_keras.experiments.study_runs import load_kwargs, read_split
from bisam_keras.testing.torch_reference import (
    SAM,
    authors_resnet,
    disable_running_stats,
    enable_running_stats,
    perturbation_loss_log,
    perturbation_loss_tanh,
    smooth_crossentropy,
)

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
