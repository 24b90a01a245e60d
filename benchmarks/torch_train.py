"""The authors' PyTorch training loop on the data of a bisam-keras run (command line).

`bisam_keras.testing.torch_train` (the loop: the authors' CIFAR ResNet, their
transforms, losses, SAM step and schedule, on exactly the images, split and
noisy labels of the matching Keras run) writes its per-epoch history as JSON.

```
python benchmarks/torch_train.py --data-dir ../shared/data/cifar10 --method sam \
    --subset 10000 --label-noise 0.4 --epochs 3 --seed 0 --output runs/torch
```

Needs PyTorch: `pip install -e ".[bench]"` (CPU: `pip install torch==2.13.0`).
"""

import argparse
import os
import sys

import torch

from bisam_keras.testing.torch_reference import AUTHORS_RESNETS
from bisam_keras.testing.torch_train import METHODS, keras_config, keras_run_arrays, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--method", default="sam", choices=METHODS)
    p.add_argument("--model", default="resnet20", choices=AUTHORS_RESNETS)
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
