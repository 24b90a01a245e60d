"""`bisam-keras sharpness`: the sharpness of finished runs, measured without retraining.

```
bisam-keras sharpness RUN_DIR... [--measure worst_case zero_one ...] [--split validation]
for each run folder:  config.json  -> the run's own data split, without augmentation
                      best.keras   -> the model of the reported epoch
                      the measures -> sharpness.json beside result.json (written atomically)
```

`bisam-keras report` adds a column per measure where `sharpness.json`
exists (`report`). The settings of the command are declared once, in
`SETTINGS`: the flags, their checks and the recorded settings derive from it.
This module imports TensorFlow only to measure, so the flags are read and
checked, and the run folders looked at, before TensorFlow starts.
"""

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

MEASURES = {
    "worst_case": "max over the l2 ball of radius --rho of the rise of the loss",
    "zero_one": "the same for the error rate (the ascent follows the -log bound)",
    "average_case": "the mean rise of the loss under Gaussian noise of std --sigma",
    "hessian_eigenvalues": "the top eigenvalue of the Hessian of the loss (Lanczos)",
    "hessian_trace": "the trace of the Hessian of the loss (Hutchinson)",
}
"""The measures `--measure` names, and what each reports (all by default)."""

SPLITS = ("validation", "train")
"""The splits of a run that can be measured (the training split without augmentation)."""

OBJECTIVES = ("cross_entropy", "neglog", "tanh")
"""The losses `--objective` names (see `bisam_keras.sharpness.objectives`)."""

FILE = "sharpness.json"
"""The file written into each run folder."""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


SETTINGS = {
    "split": (str, "validation", SPLITS, "the run's split to measure, without augmentation"),
    "num_examples": (_positive_int, 512, None, "examples drawn from the split (at most all)"),
    "seed": (_non_negative_int, 0, None, "seeds the examples drawn and every random draw"),
    "batch_size": (_positive_int, 128, None, "examples per forward pass"),
    "objective": (str, "cross_entropy", OBJECTIVES, "the loss of every measure but zero_one"),
    "rho": (_positive_float, 0.05, None, "worst_case and zero_one: the radius of the l2 ball"),
    "steps": (_positive_int, 10, None, "worst_case and zero_one: projected ascent steps"),
    "sigma": (_positive_float, 0.01, None, "average_case: the std of the Gaussian noise"),
    "num_samples": (_positive_int, 10, None, "average_case, hessian_trace: draws or probes"),
    "iterations": (_positive_int, 20, None, "hessian_eigenvalues: Lanczos products"),
}
"""`name: (type, default, choices, help)` of each setting; `--name-with-dashes` is its flag."""


def add_arguments(parser):
    """Adds the command's arguments, from `MEASURES` and `SETTINGS`, to `parser`."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders")
    parser.add_argument(
        "--measure",
        nargs="+",
        choices=tuple(MEASURES),
        default=list(MEASURES),
        dest="measures",
        help="the measures to run (default: all)",
    )
    for name, (kind, default, choices, text) in SETTINGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default,
            choices=choices,
            help=f"{text} (default: {default})",
        )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="the dataset folder, where it moved since the run (default: config.json's)",
    )
    return parser


def check_run_dir(run_dir):
    """Raises unless `run_dir` holds a finished run with its `best.keras`.

    Raises:
        ValueError: `run_dir` is not a folder (a bad argument).
        RunFileError: it holds no finished run (no `result.json` or
            `config.json`), or no `best.keras`.
    """
    from bisam_keras.experiments.run_files import RunFileError

    if not os.path.isdir(run_dir):
        raise ValueError(f"RUN_DIR must be a run folder. Received: {run_dir!r}")
    for name, what in (
        ("result.json", "train it to the end first (bisam-keras train --resume)"),
        ("config.json", "its settings are unknown, so its data split cannot be rebuilt"),
        ("best.keras", "the model of its reported epoch is missing"),
    ):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise RunFileError(f"{run_dir} is not a finished run with a model: no {name} ({what})")


def check_arguments(args):
    """Checks every run folder named by `args` before anything is measured."""
    for run_dir in args.run_dirs:
        check_run_dir(run_dir)


def settings_of(args):
    """The settings of `args` as `sharpness.json` records them."""
    return {name: getattr(args, name) for name in SETTINGS}


def run_config(run_dir):
    """The run's `RunConfig`, from its `config.json` (the settings it records as `null`
    keep their defaults)."""
    import dataclasses

    from bisam_keras.experiments import RunConfig, run_files

    path = os.path.join(run_dir, "config.json")
    saved = run_files.read_json(path)
    if not isinstance(saved, dict) or "dataset" not in saved:
        raise run_files.RunFileError(f"{path} is not a run's configuration (no 'dataset')")
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in saved.items() if k in fields and v is not None})


def measured_split(config, split, batch_size, data_dir=None):
    """The run's `split` as its training built it (same seed, subset and validation
    split), without augmentation."""
    from bisam_keras import data
    from bisam_keras.experiments.builders import load_kwargs

    options = {**load_kwargs(config), "batch_size": batch_size}
    if data_dir is not None:
        options["data_dir"] = data_dir
    splits = data.load(config.dataset, **options)
    return splits.validation if split == "validation" else splits.train


def measure(model, data, measures=tuple(MEASURES), **settings):
    """Runs `measures` on `model` with `settings` (those of `SETTINGS` but `split`).

    The examples are `sharpness.select(data, n, seed)` with `n` the smaller of
    `num_examples` and the examples `data` holds: each value is what the
    measure's function returns for `(model, data, num_examples=n, seed=seed, ...)`.

    Returns:
        `(values, results, seconds)`: `{measure: the reported number}`,
        `{measure: the result's to_dict()}` and `{measure: wall seconds}`.
    """
    from bisam_keras import sharpness

    # Read once; at most all the examples of the split, drawn as the measures draw them.
    examples = sharpness.select(data)
    count = min(settings["num_examples"], examples.num_examples)
    data = sharpness.select(examples, count, settings["seed"])
    common = {
        "objective": settings["objective"],
        "batch_size": settings["batch_size"],
        "seed": settings["seed"],
    }
    worst = {"rho": settings["rho"], "steps": settings["steps"]}
    calls = {
        "worst_case": lambda: sharpness.worst_case(model, data, **worst, **common),
        "zero_one": lambda: sharpness.worst_case(
            model, data, **worst, **{**common, "objective": "zero_one"}
        ),
        "average_case": lambda: sharpness.average_case(
            model, data, sigma=settings["sigma"], num_samples=settings["num_samples"], **common
        ),
        "hessian_eigenvalues": lambda: sharpness.hessian_eigenvalues(
            model, data, iterations=settings["iterations"], **common
        ),
        "hessian_trace": lambda: sharpness.hessian_trace(
            model, data, num_samples=settings["num_samples"], **common
        ),
    }
    values, results, seconds = {}, {}, {}
    for name in measures:
        start = time.perf_counter()
        result = calls[name]()
        seconds[name] = time.perf_counter() - start
        values[name] = result.top if name == "hessian_eigenvalues" else result.value
        results[name] = result.to_dict()
    return values, results, seconds


def machine():
    """The CPU model, its newest vector ISA, the cores and the versions."""
    import keras
    import tensorflow as tf

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = next(
        (n for n, f in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx")) if f in flags),
        None,
    )
    return {
        "cpu": model,
        "isa": isa,
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def write_atomically(path, record):
    """Writes `record` as JSON to `path` through a new file that replaces it at once."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(record, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def measure_run(run_dir, measures=tuple(MEASURES), data_dir=None, **settings):
    """Measures the `best.keras` of the finished run in `run_dir`; writes `sharpness.json`.

    Args:
        run_dir: a finished run folder (`result.json`, `config.json`, `best.keras`).
        measures: names from `MEASURES`. Defaults to all.
        data_dir: the dataset folder, where it moved since the run; `None`
            reads `config.json`'s. Defaults to `None`.
        **settings: the settings of `SETTINGS`; the missing ones take its defaults.

    Returns:
        The record written to `run_dir/sharpness.json`.
    """
    import keras

    from bisam_keras.experiments import run_files

    settings = {name: spec[1] for name, spec in SETTINGS.items()} | settings
    check_run_dir(run_dir)
    result = run_files.read_result(os.path.join(run_dir, "result.json"))
    config = run_config(run_dir)
    start = time.perf_counter()
    data = measured_split(config, settings["split"], settings["batch_size"], data_dir)
    model = keras.models.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    loaded = time.perf_counter() - start
    measured = {k: v for k, v in settings.items() if k != "split"}
    values, results, seconds = measure(model, data, measures, **measured)
    record = {
        "run": {key: result.get(key) for key in ("dataset", "model", "method", "seed", "epoch")},
        "split": settings["split"],
        "settings": settings,
        "values": values,
        "passes": {
            name: {"forward": r["forward_passes"], "backward": r["backward_passes"]}
            for name, r in results.items()
        },
        "results": results,
        "seconds": {"load": loaded, **seconds},
        "wall_seconds": time.perf_counter() - start,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomically(os.path.join(run_dir, FILE), record)
    return record


def main(args):
    """`bisam-keras sharpness`: measures every run folder of `args`, printing one line each."""
    settings = settings_of(args)
    for run_dir in args.run_dirs:
        record = measure_run(run_dir, args.measures, data_dir=args.data_dir, **settings)
        values = ", ".join(f"{name} {value:.4g}" for name, value in record["values"].items())
        print(f"{run_dir}: {values} ({record['wall_seconds']:.1f} s); wrote {FILE}", flush=True)


def report(output, results, tables, skipped=None):
    """`bisam-keras report`'s columns of sharpness, for the runs below `output` that have one.

    Adds `"sharpness_<measure>"` to the dicts of `results` (as `load_results`
    reads them) whose run folder holds a `sharpness.json`, appends
    `(metric, rows)` to `tables` for each measure found, and returns a
    Markdown table with a row per (dataset, model, method) and a column per
    measure, `mean ± std` over seeds (`""` when no run has been measured).

    Args:
        output: the folder of the runs.
        results: the runs' results, as `run_files.load_results(output)` returns them.
        tables: the report's list of `(metric, aggregated rows)`.
        skipped: a list to which a one-line message naming each `sharpness.json`
            that cannot be read is appended (and printed as a warning on
            stderr) while the others are read, or `None` to raise. Defaults to `None`.
    """
    from bisam_keras.experiments import aggregate, run_files

    by_run = {(r["dataset"], r["model"], r["method"], r["seed"]): r for r in results}
    for root, folders, files in os.walk(output):
        folders.sort()
        if FILE not in files or "result.json" not in files:
            continue
        try:
            r = run_files.read_result(os.path.join(root, "result.json"))
            record = run_files.read_json(os.path.join(root, FILE))
            values = record["values"] if isinstance(record, dict) else None
            if not isinstance(values, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()
            ):
                raise run_files.RunFileError(
                    f"{os.path.join(root, FILE)} is not a sharpness record: no 'values' numbers"
                )
        except run_files.RunFileError as error:
            if skipped is None:
                raise
            message = f"{error} (its sharpness is left out of the report)"
            skipped.append(message)
            print(f"bisam-keras report: warning: {message}", file=sys.stderr, flush=True)
            continue
        run = by_run.get((r["dataset"], r["model"], r["method"], r["seed"]))
        if run is not None:
            run.update({f"sharpness_{name}": value for name, value in values.items()})
    found = [name for name in MEASURES if any(f"sharpness_{name}" in r for r in results)]
    if not found:
        return ""
    columns = {name: aggregate(results, f"sharpness_{name}") for name in found}
    tables.extend((f"sharpness_{name}", rows) for name, rows in columns.items())
    cells = {}
    for name, rows in columns.items():
        for row in rows:
            key = (row["dataset"], row["model"], row["method"])
            cells.setdefault(key, {})[name] = f"{row['mean']:.4g} ± {row['std']:.2g}"
    lines = [
        "**sharpness** (sharpness.json, mean ± std over the measured seeds; lower is flatter)\n",
        "| Dataset | Model | Method | " + " | ".join(found) + " |",
        "|---|---|---|" + "---:|" * len(found),
    ]
    for (dataset, model, method), row in cells.items():
        line = [dataset, model, method] + [row.get(name, "–") for name in found]
        lines.append("| " + " | ".join(line) + " |")
    return "\n" + "\n".join(lines) + "\n"
