"""PyTorch parity, end to end (command line of `bisam_keras.experiments.study_parity`).

For each seed it trains the same network, data and protocol in bisam-keras
(the `paper-cifar` preset, resumable) and with the authors' PyTorch loop
(`bisam_keras.testing.torch_train`), on exactly the same images, split and
noisy labels; plots both learning curves in one PNG, decides epoch by epoch
whether they agree within seed noise, and writes the verdict, the table and
the PNG into the parity section of `docs/results.md`.

```
python benchmarks/parity.py --data-dir ../shared/data/cifar10                 # 3 seeds x 5 epochs
python benchmarks/parity.py --data-dir ../shared/data/cifar10 --quick         # smoke run
```
"""

import argparse
import os
import sys

from bisam_keras.experiments import study, study_parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10")
    p.add_argument("--method", default="sam", choices=study.METHODS)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--subset", type=int, default=10_000)
    p.add_argument("--label-noise", type=float, default=0.4)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--smoothing", type=float, default=0.1, help="the authors' s (PyTorch side)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default="runs/parity")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results.md"))
    p.add_argument("--quick", action="store_true", help="2 seeds x 1 epoch on 1,000 images")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.quick:
        args.seeds, args.epochs, args.subset = args.seeds[:2], 1, 1_000
        if args.output == "runs/parity":
            args.output = "runs/parity-quick"
    command = "python benchmarks/parity.py " + " ".join(sys.argv[1:] if argv is None else argv)
    study_parity.run_parity(
        args.data_dir,
        method=args.method,
        model=args.model,
        seeds=args.seeds,
        subset=args.subset,
        label_noise=args.label_noise,
        epochs=args.epochs,
        smoothing=args.smoothing,
        threads=args.threads,
        output=args.output,
        docs=args.docs,
        command=command,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
