"""`bisam-keras`: the paper's experiments from the command line.

```
bisam-keras train                       # offline: ResNet-20 with BiSAM (-log) on bundled digits
bisam-keras train --dataset cifar10 --data-dir ../shared/data/cifar10 --preset paper-cifar
bisam-keras compare --methods sgd sam bisam-neglog bisam-tanh --models resnet20 --seeds 0 1 2
bisam-keras report --output runs
```

The arguments are parsed and the output folder is checked before TensorFlow
is imported, so `--help`, `models` and mistakes answer at once. Exit status:
0 done; 1 the data or a run's files cannot be used, a file cannot be written
(a full disk: `--resume` continues once there is space) or the training loss
became NaN or infinite (no result is written); 2 bad flags, settings or
output folder, or another process is running the run (nothing was run); 130
interrupted by Ctrl-C and 143 by SIGTERM (`--resume` continues). Every error
is one line.
"""

import argparse
import json
import math
import os
import signal
import sys

from bisam_keras import _cli_process as process
from bisam_keras.experiments.config import SCHEDULES, STRATEGIES, TRAINING_OPTIONS, settings
from bisam_keras.experiments.method_names import METHODS
from bisam_keras.sharpness import runs as sharpness_runs

# The names the flags accept, without importing TensorFlow (tests/test_run_checks.py
# checks them against `bisam_keras.data.names()` and `bisam_keras.models.names()`).
DATASETS = ("digits", "cifar10", "cifar100", "imagenet2012", "oxford_flowers102", "oxford_iiit_pet")
MODELS = (
    *("ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge"),
    *("DenseNet121", "DenseNet169", "DenseNet201"),
    *(f"EfficientNetB{i}" for i in range(8)),
    *("EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3"),
    *("EfficientNetV2L", "EfficientNetV2M", "EfficientNetV2S"),
    *("InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2"),
    *("MobileNetV3Large", "MobileNetV3Small", "NASNetLarge", "NASNetMobile"),
    *("ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50", "ResNet50V2"),
    *("VGG16", "VGG19", "Xception", "densenet121"),
    *("resnet110", "resnet20", "resnet32", "resnet44", "resnet56"),
    *("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "vit_b16", "wrn16_8", "wrn28_10", "wrn28_2"),
)
RUN_FLAGS = settings("flag")  # the RunConfig fields read from the flag of their name


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _add_run_flags(parser, several):
    from bisam_keras.experiments.presets import PRESETS  # plain data: no TensorFlow

    g = parser.add_argument_group("run")
    g.add_argument("--preset", choices=sorted(PRESETS), help="the paper's hyper-parameters")
    g.add_argument("--dataset", choices=DATASETS, help="default: digits (offline)")
    g.add_argument("--data-dir", help="a folder of TFRecord shards in the offline format")
    g.add_argument("--tfds-dir", help="tensorflow-datasets data_dir")
    g.add_argument(
        "--verify",
        choices=("records", "full", "none"),
        help="with --data-dir, what is checked before training: records (default: "
        "checksums, labels, image signatures), full (also decodes every image), none",
    )
    if several:
        g.add_argument("--models", "--model", nargs="+", choices=MODELS, metavar="MODEL")
        g.add_argument("--methods", "--method", nargs="+", choices=METHODS, metavar="METHOD")
    else:
        g.add_argument(
            "--model",
            choices=MODELS,
            metavar="MODEL",
            help="default: resnet20; see `bisam-keras models`",
        )
        g.add_argument("--method", choices=METHODS, help="default: bisam-neglog")
    g.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0")
    g.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start from ImageNet weights (keras.applications models, vit_b16); "
        "default: the preset's (paper-finetune: on), else off",
    )
    g.add_argument("--epochs", type=_positive_int, help="default: 10, or the preset's")
    g.add_argument(
        "--steps",
        type=_positive_int,
        help="train exactly N optimizer steps instead of --epochs (the last epoch is "
        "cut short); default: the preset's (paper-finetune: 500)",
    )
    g.add_argument("--batch-size", type=_positive_int)
    g.add_argument("--lr", type=_non_negative_float)
    g.add_argument("--momentum", type=_non_negative_float)
    g.add_argument("--weight-decay", type=_non_negative_float)
    g.add_argument("--rho", type=_non_negative_float)
    g.add_argument("--mu", type=_finite_float)
    g.add_argument("--alpha", type=_finite_float)
    g.add_argument("--eta", type=_non_negative_float)
    g.add_argument("--label-smoothing", type=_fraction)
    g.add_argument("--label-noise", type=_fraction)
    g.add_argument("--micro-batch-size", type=_positive_int)
    g.add_argument("--subset", type=_positive_int, help="use only N training images")
    g.add_argument("--validation-fraction", type=_fraction)
    g.add_argument("--output", default="runs", help="folder of the runs (default: runs)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue interrupted runs from their last finished epoch (same settings)",
    )
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="tf.distribute strategy; auto: MirroredStrategy over several GPUs "
        "(--batch-size is the global batch)",
    )
    g.add_argument(
        "--sync-perturbation",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="all-reduce the ascent gradient across replicas (default: per-replica)",
    )
    g.add_argument(
        "--verbose",
        type=int,
        nargs="?",
        const=3,
        default=None,
        choices=(0, 1, 2, 3),
        help="fit's verbosity: 0 silent, 1 progress bar, 2 one line an epoch (default: 1 "
        "on a terminal, else 2); 3 or a bare --verbose: as 2, plus TensorFlow's log lines",
    )
    _add_authors_flags(g)


def _add_authors_flags(g):
    """Flags choosing between Keras' behaviour and the authors' script (presets: theirs)."""
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="cosine: decays every step; cosine-epoch: PyTorch's CosineAnnealingLR stepped "
        "once per epoch (paper presets); default: cosine, or the preset's",
    )
    g.add_argument(
        "--label-smoothing-convention",
        choices=TRAINING_OPTIONS["label_smoothing_convention"],
        help="keras: y(1-s)+s/K; authors: true class 1-s, others s/(K-1) "
        "(paper presets); default: keras",
    )
    g.add_argument(
        "--weight-decay-mode",
        choices=TRAINING_OPTIONS["weight_decay_mode"],
        help="l2: L2 regularizer in the loss (gradient at w+e); at-w: wd*w added to the "
        "descent gradient, PyTorch's SGD(weight_decay) (paper presets); default: l2",
    )
    g.add_argument(
        "--momentum-convention",
        choices=TRAINING_OPTIONS["momentum_convention"],
        help="keras: v=m*v-lr*g; torch: buf=m*buf+g, w-=lr*buf (paper presets); default: keras",
    )
    g.add_argument(
        "--cutout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the authors' Cutout (16x16, p=0.5, after normalization); default: on for "
        "paper-cifar, else off",
    )
    g.add_argument(
        "--validation-split",
        choices=TRAINING_OPTIONS["validation_split"],
        help="seeded: by --seeds; authors: fixed np.random.seed(42) split for every seed "
        "(paper-cifar); default: seeded",
    )
    g.add_argument(
        "--stats-from",
        choices=TRAINING_OPTIONS["stats_from"],
        help="normalization statistics from the train part or all training images "
        "(paper-cifar); default: train",
    )
    g.add_argument(
        "--model-variant",
        choices=TRAINING_OPTIONS["model_variant"],
        help="the zoo's Keras model or the authors' architecture/initialization "
        "(paper presets); default: keras",
    )


def make_configs(args, several=False, config_class=None):
    """`RunConfig`s from parsed flags: defaults, then the preset, then the flags.

    The preset sets the fields declared `preset=True`, the flags those declared
    `flag=True` (`bisam_keras.experiments.config.setting`), of `config_class`
    (`RunConfig` by default).
    """
    from bisam_keras.experiments import PRESETS, RunConfig
    from bisam_keras.experiments import method_names as methods_lib
    from bisam_keras.experiments.presets import preset_mu

    if getattr(args, "epochs", None) is not None and getattr(args, "steps", None) is not None:
        raise ValueError(
            "Pass either `epochs` or `steps`, not both. "
            f"Received: epochs={args.epochs}, steps={args.steps}"
        )
    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    dataset = getattr(args, "dataset", None) or preset.get("dataset", "digits")
    models = (args.models if several else [args.model]) or []
    models = [m for m in models if m] or [preset.get("model", "resnet20")]
    methods = (args.methods if several else [args.method]) or []
    methods = [m for m in methods if m] or ["bisam-neglog"]
    configs = []
    for model in models:
        for method in methods:
            for seed in args.seeds or [0]:
                values = {k: preset[k] for k in settings("preset", config_class) if k in preset}
                if preset:
                    # A preset gives the run's length in steps or in epochs;
                    # an explicit --epochs replaces a preset's steps.
                    if "steps" in preset:
                        if args.epochs is None:
                            values["steps"] = preset["steps"]
                    else:
                        values["epochs"] = preset["sgd_epochs" if method == "sgd" else "epochs"]
                    values["rho"] = preset[
                        "adaptive_rho" if methods_lib.is_adaptive(method) else "rho"
                    ]
                    bound = methods_lib.lower_bound_of(method)
                    if bound:
                        values["mu"] = preset_mu(preset, bound, dataset)
                for key in settings("flag", config_class):
                    value = getattr(args, key, None)
                    if value is not None:
                        values[key] = value
                if values.get("verify") == "none":
                    values["verify"] = None
                values.update(model=model, method=method, seed=seed, output=args.output)
                values["jit_compile"] = args.jit_compile
                values["strategy"] = args.strategy
                values["sync_perturbation"] = args.sync_perturbation
                values["verbose"] = (
                    args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
                )
                configs.append((config_class or RunConfig)(**values).validate())
    return configs


def _report(output):
    from bisam_keras.experiments import plots, protocol, run_files

    skipped = []
    results = run_files.load_results(output, skipped)
    histories = run_files.load_histories(output, skipped)
    for message in skipped:
        print(f"bisam-keras report: warning: {message}", file=sys.stderr, flush=True)
    if not results:
        unread = f", {len(skipped)} that cannot be read" if skipped else ""
        raise ValueError(
            f"`output` holds no finished runs to report (no readable result.json below "
            f"{output!r}{unread})."
        )
    tables = []
    for metric in ("test_accuracy", "test_top5_accuracy"):
        rows = protocol.aggregate(results, metric)
        if rows:
            tables.append((metric, rows))
    markdown = "\n".join(protocol.markdown_table(rows) for _, rows in tables)
    markdown += sharpness_runs.report(output, results, tables, skipped)
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(output, "results.csv"), "w", newline="") as f:
        f.write(protocol.csv_table([r for _, rows in tables for r in rows]))
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(
            {"runs": results, "summary": [r for _, rows in tables for r in rows]}, f, indent=2
        )
    paths = plots.learning_curves(histories, os.path.join(output, "plots"))
    print(markdown)
    print(f"wrote {output}/results.md, results.csv, results.json and {len(paths)} plot(s)")
    return markdown


def _flag_message(message):
    """Names flags, not Python arguments, in an error message."""
    for name in list(RUN_FLAGS) + ["output", "preset", "seeds"]:
        message = message.replace(f"`{name}`", "--" + name.replace("_", "-"))
    return message


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bisam-keras",
        description="BiSAM and the SAM family: the paper's experiments with Keras.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one configuration (one run per seed)")
    _add_run_flags(train, several=False)
    compare = sub.add_parser("compare", help="a grid of methods x models x seeds, then a report")
    _add_run_flags(compare, several=True)
    report = sub.add_parser("report", help="tables and plots from saved runs")
    report.add_argument("--output", default="runs")
    sub.add_parser("models", help="list the model names")
    sharpness_runs.add_arguments(
        sub.add_parser("sharpness", help="measure the sharpness of finished runs' best.keras")
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"bisam-keras {args.command}"
    if args.command == "models":
        print("\n".join(MODELS))
        return 0
    configs = []
    previous_sigterm = process.handle_sigterm()
    try:
        if args.command == "sharpness":  # the run folders are checked before TensorFlow
            sharpness_runs.check_arguments(args)
            process.import_tensorflow(None)
            sharpness_runs.main(args)
            return 0
        if args.command == "report":
            if not os.path.isdir(args.output):
                raise ValueError(f"`output` must be a folder of runs. Received: {args.output!r}")
        else:
            from bisam_keras.experiments import folders

            folders.check_output(args.output)
        process.import_tensorflow(getattr(args, "verbose", None))
        if args.command == "report":
            _report(args.output)
            return 0
        from bisam_keras.experiments import runner

        configs = make_configs(args, several=args.command == "compare")
        for config in configs:
            print(f"== {config.dataset} / {config.model} / {config.method} / seed {config.seed}")
            run_dir = config.run_dir()
            result = runner.run(config, resume=args.resume)
            print(
                f"best validation accuracy {100 * result['val_accuracy']:.2f}% at epoch "
                f"{result['epoch']}/{result['epochs_run']}: test accuracy "
                f"{100 * result['test_accuracy']:.2f}%"
            )
            if args.command == "train":
                print(f"run saved in {run_dir} (its config.json holds every setting)")
        if args.command == "compare" or len(configs) > 1:
            _report(args.output)
    except KeyboardInterrupt as interrupt:
        epoch = getattr(interrupt, "epoch", None)
        if epoch is not None:
            message = (
                f"interrupted in epoch {epoch}; rerun the same command with --resume to continue"
            )
        else:
            message = "interrupted before training began; rerun the same command to start"
        # 130 for Ctrl-C (SIGINT), 143 for SIGTERM: the shells' 128 + signal number.
        parser.exit(128 + signal.SIGTERM if process.TERMINATED else 130, f"{message}\n")
    except Exception as error:
        code = process.exit_code(error)
        if code is None:
            raise
        parser.exit(code, f"{prog}: error: {_flag_message(process.one_line(error))}\n")
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
