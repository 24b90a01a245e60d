"""Reduced-scale reproduction of the paper's label-noise study (Table 9).

The command line of `bisam_keras.experiments.study` (the grid, the runs, the
statistics) and `study_report` (the report). The paper trains ResNet-32 on all
of CIFAR-10 for 200 epochs (SGD: 400) with 0-80% symmetric label noise; the
study runs the same protocol, the `paper-cifar` preset, at a scale that fits
two CPU cores: ResNet-20, a fixed subset of the CIFAR-10 training images,
fewer epochs, SGD with twice the epochs of the sharpness-aware methods (the
same gradient budget, as in the paper), at least three seeds.

```
python benchmarks/reproduce.py --data-dir ../shared/data/cifar10           # the study (hours)
python benchmarks/reproduce.py --data-dir ../shared/data/cifar10 --quick   # smoke run (minutes)
python benchmarks/reproduce.py --report-only                               # docs/results.md again
```

Every run goes through `bisam_keras.experiments.run(config, resume=True)`:
rerunning the same command skips finished runs and continues unfinished ones
from their last committed epoch (the runner's `RunState`, `backup/state.json`).
A run whose saved `config.json` disagrees with the command is refused, naming
the differences, not silently mixed in.

Runs live in `<output>/noise<percent>/<dataset>/<model>/<method>/seed<seed>/`;
beside the runner's files each holds `epoch_seconds.csv` (the wall time of
every finished epoch, validation and test evaluation included) and
`machines.jsonl` (the machine of each sitting). The report (`docs/results.md`
and `docs/results_*.png`, rendered from
`bisam_keras/experiments/templates/results.md`) reads them back: test accuracy
at the best validation epoch, mean ± sample std over seeds, next to the
paper's number, the differences paired by seed, the machine, the wall time,
learning curves and per-run sanity checks.

Default size and its cost. ResNet-20 on the first 10,000 training images
(9,000 train / 1,000 validation; 2,000 test images), batch 128 (71 steps an
epoch), 40% noise, 20 epochs for SAM and BiSAM and 40 for SGD, seeds 0, 1, 2.
Measured on the 2-core AMD EPYC (Zen 5, AVX-512, oneDNN on) while other jobs
shared it (load average 7-10): one epoch, validation and test included, takes
31 s with SGD and 61 s with SAM; BiSAM (-log) took 71 s and BiSAM (tanh) 126 s,
both measured while this machine also ran our own tests, so the estimate uses
SAM's 61 s for them (the same two passes). That makes about 4.1 hours for the
40% study (`--estimate`) and 8.2 with `--with-clean` (0% noise too); an idle
machine should be about twice as fast. Runs resume, so the study can be
spread over several sittings.
"""

import argparse
import os
import sys

from bisam_keras.experiments import study, study_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser():
    defaults = study.DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10", help="CIFAR-10 TFRecord folder")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (digits: offline tests only)")
    p.add_argument("--output", default=defaults["output"], help="folder of the runs")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results.md"), help="report file")
    p.add_argument("--model", default=defaults["model"])
    p.add_argument("--subset", type=int, default=None, help=f"default {defaults['subset']}")
    p.add_argument("--epochs", type=int, default=None, help="SAM/BiSAM epochs; SGD gets twice")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--noise", type=float, nargs="+", default=None, help="default 0.4")
    p.add_argument("--with-clean", action="store_true", help="also run 0%% noise")
    p.add_argument("--methods", nargs="+", default=None, choices=study.METHODS)
    p.add_argument("--preset", default="paper-cifar")
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 images, 2 epochs, 1 seed")
    p.add_argument("--report-only", action="store_true", help="only (re)write the report")
    p.add_argument("--estimate", action="store_true", help="print the estimated hours and exit")
    return p


def resolve(args):
    """The study's settings from the flags: defaults, then `--quick`, then flags."""
    settings = dict(study.DEFAULTS)
    if args.quick:
        settings.update(study.QUICK)
        quick_output = args.output == study.DEFAULTS["output"]
        settings["output"] = "runs/reproduce-quick" if quick_output else args.output
    else:
        settings["output"] = args.output
    for key in ("subset", "epochs", "seeds", "noise", "methods"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = tuple(value) if isinstance(value, list) else value
    if args.with_clean and 0.0 not in settings["noise"]:
        settings["noise"] = (0.0, *settings["noise"])
    settings["model"] = args.model
    if settings["epochs"] < 1:
        raise ValueError(f"`epochs` must be >= 1. Received: epochs={settings['epochs']}")
    return settings


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = resolve(args)
    command = "python benchmarks/reproduce.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    if args.estimate:
        hours = study.estimate(
            settings["epochs"], settings["seeds"], settings["noise"], settings["methods"]
        )
        print(f"estimated {hours:.1f} h on the 2-core reference machine")
        return 0
    output = settings["output"]
    if not args.report_only:
        configs = study.make_configs(
            args.data_dir if args.dataset != "digits" else None,
            output,
            settings["model"],
            settings["subset"],
            settings["epochs"],
            settings["seeds"],
            settings["noise"],
            settings["methods"],
            dataset=args.dataset,
            preset=args.preset,
        )
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "command.txt"), "w") as f:
            f.write(command.strip() + "\n")
        counts = study.run_all(configs)
        print(f"runs: {counts}")
    study_report.report(output, args.docs, command=study_report.saved_command(output) or command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
