"""Reduced-scale reproduction of the paper's label-noise study (Table 9).

The paper (Table 9) trains ResNet-32 on all of CIFAR-10 for 200 epochs (SGD:
400) with 0-80% symmetric label noise. This script runs the same protocol,
`--preset paper-cifar` of the library's runner, at a scale that fits two CPU
cores: ResNet-20, a fixed subset of the CIFAR-10 training images, fewer
epochs, SGD with twice the epochs of the sharpness-aware methods (the same
gradient budget, as in the paper), at least three seeds.

```
python benchmarks/reproduce.py --data-dir ../shared/data/cifar10           # the study (hours)
python benchmarks/reproduce.py --data-dir ../shared/data/cifar10 --quick   # smoke run (minutes)
python benchmarks/reproduce.py --report-only                               # docs/results.md again
```

Every run goes through `bisam_keras.cli.make_configs` (so `--preset
paper-cifar` supplies every training setting) and
`bisam_keras.experiments.runner.run(config, resume=True)`: rerunning the same
command skips finished runs and continues unfinished ones from their last
finished epoch (`keras.callbacks.BackupAndRestore`). A run whose saved
`config.json` disagrees with the command is an error, not silently mixed in.

Runs live in `<output>/noise<percent>/<dataset>/<model>/<method>/seed<seed>/`;
beside the runner's files each holds `epoch_seconds.csv` (the wall time of
every finished epoch, validation and test evaluation included). The report
(`docs/results.md` and `docs/results_*.png`) reads them back: test accuracy at
the best validation epoch, mean ± sample std over seeds, next to the paper's
number, the machine, the wall time, learning curves and per-run sanity checks.

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
import csv
import inspect
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # machine.py, when imported from elsewhere
ROOT = os.path.dirname(HERE)

# Paper, Table 9: ResNet-32 on CIFAR-10 with label noise, test accuracy (%),
# mean ± std over seeds, by noise rate and method.
PAPER_TABLE9 = {
    0.0: {
        "sgd": (94.76, 0.14),
        "sam": (94.95, 0.13),
        "bisam-neglog": (94.98, 0.17),
        "bisam-tanh": (95.01, 0.08),
    },
    0.2: {
        "sgd": (88.65, 1.75),
        "sam": (92.57, 0.24),
        "bisam-neglog": (92.59, 0.11),
        "bisam-tanh": (92.35, 0.29),
    },
    0.4: {
        "sgd": (84.24, 0.25),
        "sam": (89.03, 0.09),
        "bisam-neglog": (88.71, 0.23),
        "bisam-tanh": (88.86, 0.18),
    },
    0.6: {
        "sgd": (76.29, 0.25),
        "sam": (82.77, 0.29),
        "bisam-neglog": (82.91, 0.46),
        "bisam-tanh": (82.87, 0.71),
    },
    0.8: {
        "sgd": (44.44, 1.20),
        "sam": (44.68, 4.01),
        "bisam-neglog": (50.00, 1.96),
        "bisam-tanh": (48.57, 0.64),
    },
}
METHODS = ("sgd", "sam", "bisam-neglog", "bisam-tanh")

# The study's defaults (see the module docstring and docs/results.md).
DEFAULTS = dict(
    model="resnet20",
    subset=10_000,
    epochs=20,
    seeds=(0, 1, 2),
    noise=(0.4,),
    methods=METHODS,
    output="results/label-noise",
)
QUICK = dict(subset=1_000, epochs=2, seeds=(0,), methods=METHODS)

# Seconds per epoch measured at the defaults (ResNet-20, subset 10,000: 9,000
# train / 1,000 validation / 2,000 test images, batch 128), validation and test
# evaluation included, on the 2-core AMD EPYC (Zen 5, AVX-512, oneDNN on) while
# the machine was shared; they feed `--estimate` only.
EPOCH_SECONDS = {"sgd": 31.0, "sam": 61.0, "bisam-neglog": 61.0, "bisam-tanh": 61.0}

HONEST_BEGIN = "<!-- honest-reading:begin -->"
HONEST_END = "<!-- honest-reading:end -->"
PARITY_BEGIN = "<!-- parity:begin -->"
PARITY_END = "<!-- parity:end -->"
MEMORISATION_BEGIN = "<!-- memorisation:begin -->"
MEMORISATION_END = "<!-- memorisation:end -->"
MACHINES_FILE = "machines.jsonl"  # one line per sitting of a run: the machine it ran on
HONEST_PLACEHOLDER = (
    "> **PLACEHOLDER: to be written by the person who ran the study.** Compare each "
    "number with the paper's: does SAM/BiSAM beat SGD under 40% noise at this scale, by "
    "how much, and is the gap larger than the seeds' spread? What cannot be resolved at "
    "this scale (ResNet-20 instead of ResNet-32, a subset instead of 45,000 images, "
    "fewer epochs, a 2,000-image test set: a binomial standard error of about 0.8 "
    "points)? If SAM/BiSAM do not beat SGD, say so and why."
)


def noise_dir(output, noise):
    """The folder of one noise level's runs: `<output>/noise40` for 0.4."""
    return os.path.join(output, f"noise{int(round(100 * noise)):02d}")


# --------------------------------------------------------------------------
# Configurations


def load_kwargs(config):
    """`bisam_keras.data.load` arguments of a `RunConfig`, augmentation off.

    Every `load` parameter that `RunConfig` has a field of the same name for
    is passed on (so options the runner forwards to `load`, such as a fixed
    validation split, apply here too); augmentation and Cutout are off: the
    PyTorch side applies its own.
    """
    from bisam_keras import data as data_lib

    params = inspect.signature(data_lib.load).parameters
    kwargs = {}
    for name in params:
        if name in ("name", "augment", "cutout", "drop_remainder"):
            continue
        if hasattr(config, name):
            kwargs[name] = getattr(config, name)
    if "augment" in params:
        kwargs["augment"] = False
    if "cutout" in params:
        kwargs["cutout"] = False
    return kwargs


def read_split(dataset):
    """A batched `(image, label)` split read back whole: `(images, labels)`,
    NumPy arrays in the dataset's order (labels int64, flattened)."""
    import numpy as np

    xs, ys = [], []
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(np.asarray(y.numpy()).reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def make_configs(
    data_dir,
    output,
    model,
    subset,
    epochs,
    seeds,
    noise,
    methods=METHODS,
    dataset="cifar10",
    preset="paper-cifar",
    extra_flags=(),
):
    """`RunConfig`s of the study through the library's own CLI logic.

    `preset` supplies every training setting; the study only sets the data,
    the model, the subset, the noise, the seeds and the epochs (SGD gets
    `2 * epochs`, the paper's equal gradient budget).
    """
    from bisam_keras import cli

    for method in methods:
        if method not in METHODS:
            raise ValueError(f"`methods` must be in {list(METHODS)}. Received: {method!r}")
    configs = []
    for level in noise:
        for method in methods:
            argv = ["compare", "--dataset", dataset, "--models", model, "--methods", method]
            if preset:
                argv += ["--preset", preset]
            if data_dir:
                argv += ["--data-dir", data_dir]
            if subset:
                argv += ["--subset", str(subset)]
            argv += ["--label-noise", str(level), "--seeds", *[str(s) for s in seeds]]
            argv += ["--epochs", str(2 * epochs if method == "sgd" else epochs)]
            argv += ["--output", noise_dir(output, level), "--verbose", "2", *extra_flags]
            args = cli.build_parser().parse_args(argv)
            configs.extend(cli.make_configs(args, several=True))
    # Seed by seed: a study cut short still holds whole comparisons.
    order = {m: i for i, m in enumerate(methods)}
    configs.sort(key=lambda c: (-c.label_noise, c.seed, order[c.method]))
    return configs


def config_mismatch(saved, config):
    """The fields on which a saved `config.json` dict differs from `config`
    (`runner.config_differences`: unused settings and `verbose`/`output` aside)."""
    from bisam_keras.experiments import runner

    return sorted(name for name, _, _ in runner.config_differences(saved, config))


def run_state(config):
    """`"finished"`, `"partial"` (some epochs done) or `"new"`."""
    run_dir = config.run_dir()
    if os.path.exists(os.path.join(run_dir, "result.json")):
        return "finished"
    if os.path.exists(os.path.join(run_dir, "config.json")):
        return "partial"
    return "new"


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Appends `epoch,seconds` of each finished epoch to `epoch_seconds.csv`."""

        def __init__(self, path):
            super().__init__()
            self.path = path
            self._start = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            new = not os.path.exists(self.path)
            with open(self.path, "a", newline="") as f:
                if new:
                    f.write("epoch,seconds\n")
                f.write(f"{epoch},{time.perf_counter() - self._start:.3f}\n")

    return EpochTimer


def run_all(configs, callbacks=(), log=print):
    """Runs (or resumes, or skips) every configuration; returns `{state: count}`.

    Args:
        configs: `RunConfig`s, e.g. from `make_configs`.
        callbacks: extra Keras callbacks for every run (tests use them to
            interrupt a run).
        log: a print-like function.
    """
    from bisam_keras.experiments import runner

    timer = _epoch_timer()
    counts = {"finished": 0, "partial": 0, "new": 0}
    for i, config in enumerate(configs):
        state = run_state(config)
        counts[state] += 1
        name = f"[{i + 1}/{len(configs)}] {config.run_dir()}"
        saved_path = os.path.join(config.run_dir(), "config.json")
        if state != "new":
            with open(saved_path) as f:
                mismatch = config_mismatch(json.load(f), config)
            if mismatch:
                raise ValueError(
                    f"{saved_path} was made with other settings ({', '.join(mismatch)} "
                    "differ from this command). Use another --output, or the command "
                    "that started the study."
                )
        if state == "finished":
            log(f"{name}: finished, skipped")
            continue
        log(f"{name}: {'resuming' if state == 'partial' else 'starting'}")
        os.makedirs(config.run_dir(), exist_ok=True)
        record_sitting(config.run_dir())
        result = runner.run(
            config,
            resume=True,
            callbacks=[timer(os.path.join(config.run_dir(), "epoch_seconds.csv")), *callbacks],
        )
        log(
            f"{name}: test accuracy {100 * result['test_accuracy']:.2f}% at the best "
            f"validation epoch {result['epoch']}/{result['epochs_run']}"
        )
    return counts


# --------------------------------------------------------------------------
# Reading runs back


def read_epoch_seconds(run_dir):
    """`{epoch: seconds}` of the finished epochs (the last record of an epoch wins)."""
    path = os.path.join(run_dir, "epoch_seconds.csv")
    seconds = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                seconds[int(row["epoch"])] = float(row["seconds"])
    return seconds


def record_sitting(run_dir):
    """Appends this sitting's machine (`benchmarks/machine.py`) to `machines.jsonl`.

    A run may be resumed on another machine: each sitting adds one line,
    `{"utc": ..., "epochs_before": n, "machine": {...}}`, and the report says
    which machine trained which run.
    """
    import machine

    epochs_before = 0
    history_path = os.path.join(run_dir, "history.csv")  # the runner commits it every epoch
    if os.path.exists(history_path):
        with open(history_path) as f:
            epochs_before = sum(1 for _ in csv.DictReader(f))
    line = {
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "epochs_before": epochs_before,
        "machine": machine.record(),
    }
    with open(os.path.join(run_dir, MACHINES_FILE), "a") as f:
        f.write(json.dumps(line) + "\n")


def read_machines(run_dir):
    """The sittings `record_sitting` wrote for one run (a list, maybe empty)."""
    path = os.path.join(run_dir, MACHINES_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def machines_by_description(runs):
    """`{one-line machine description: [run labels]}` over every run's sittings."""
    import machine

    from bisam_keras.experiments.methods import LABELS

    found = {}
    for r in runs:
        method = LABELS.get(r["method"], r["method"])
        label = f"{int(round(100 * r['noise']))}% {method} seed {r['seed']}"
        sittings = r.get("machines") or []
        if not sittings:
            found.setdefault("not recorded", []).append(label)
        for sitting in sittings:
            text = machine.describe(sitting["machine"])
            if sitting.get("note"):
                text += f" ({sitting['note']})"
            labels = found.setdefault(text, [])
            if label not in labels:
                labels.append(label)
    return found


def collect(output):
    """Every finished run below `output`: a list of dicts.

    Each holds `noise`, `method`, `seed`, `result` (the runner's
    `result.json`), `history` and `config` (dicts), and `seconds` (the sum of
    its finished epochs' wall times) and `epoch_seconds` (their list).
    """
    runs = []
    for root, _, files in os.walk(output):
        if not {"result.json", "history.json", "config.json"} <= set(files):
            continue
        loaded = {}
        for name in ("result", "history", "config"):
            with open(os.path.join(root, f"{name}.json")) as f:
                loaded[name] = json.load(f)
        epoch_seconds = read_epoch_seconds(root)
        runs.append(
            {
                "noise": float(loaded["config"]["label_noise"]),
                "method": loaded["result"]["method"],
                "seed": int(loaded["result"]["seed"]),
                "run_dir": root,
                "epoch_seconds": [epoch_seconds[e] for e in sorted(epoch_seconds)],
                "seconds": float(sum(epoch_seconds.values())),
                "machines": read_machines(root),
                **loaded,
            }
        )
    runs.sort(key=lambda r: (r["noise"], _method_order(r["method"]), r["seed"]))
    return runs


def _method_order(method):
    return METHODS.index(method) if method in METHODS else len(METHODS)


def summarize(runs, metric="test_accuracy"):
    """Mean and sample std (ddof 1) of `metric` over seeds, per (noise, method).

    Returns:
        A list of dicts `{noise, method, mean, std, n, seeds}`, in the paper's
        order; `std` is 0 for a single seed.
    """
    from bisam_keras.experiments.protocol import mean_std

    groups = {}
    for r in runs:
        groups.setdefault((r["noise"], r["method"]), []).append(r)
    rows = []
    for (noise, method), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], _method_order(kv[0][1]))
    ):
        mean, std = mean_std([g["result"][metric] for g in group])
        rows.append(
            {
                "noise": noise,
                "method": method,
                "mean": mean,
                "std": std,
                "n": len(group),
                "seeds": sorted(g["seed"] for g in group),
            }
        )
    return rows


def paired_differences(runs, baseline, metric="test_accuracy"):
    """Per-seed differences `method - baseline` of `metric`, per (noise, method).

    Runs of one seed share the initial weights, the noisy labels and the data
    order, so a difference within a seed removes what the seeds add to both
    (the initialisation, above all). Only seeds that both methods finished count.

    Returns:
        A list of dicts `{noise, method, baseline, differences, seeds, mean,
        std, n}` (`std` sample, 0 for one seed), in the paper's order.
    """
    from bisam_keras.experiments.protocol import mean_std

    value = {(r["noise"], r["method"], r["seed"]): r["result"][metric] for r in runs}
    rows = []
    for noise, method in sorted(
        {(n, m) for n, m, _ in value if m != baseline},
        key=lambda nm: (nm[0], _method_order(nm[1])),
    ):
        seeds = sorted(
            s for n, m, s in value if (n, m) == (noise, method) and (noise, baseline, s) in value
        )
        if not seeds:
            continue
        differences = [value[(noise, method, s)] - value[(noise, baseline, s)] for s in seeds]
        mean, std = mean_std(differences)
        rows.append(
            {
                "noise": noise,
                "method": method,
                "baseline": baseline,
                "differences": differences,
                "seeds": seeds,
                "mean": mean,
                "std": std,
                "n": len(seeds),
            }
        )
    return rows


def paired_table(runs, labels):
    """Markdown lines: each method minus SGD and minus SAM, seed by seed."""
    lines = [
        "| Noise | Method | Baseline | Per seed (points) | Mean ± std |",
        "|---|---|---|---|---|",
    ]
    for baseline in ("sgd", "sam"):
        for row in paired_differences(runs, baseline):
            if row["method"] == "sgd":
                continue
            per_seed = ", ".join(
                f"{s}: {100 * d:+.2f}" for s, d in zip(row["seeds"], row["differences"])
            )
            mean = (
                f"{100 * row['mean']:+.2f} ± {100 * row['std']:.2f} ({row['n']})"
                if row["n"] > 1
                else f"{100 * row['mean']:+.2f} (1 seed)"
            )
            lines.append(
                f"| {int(round(100 * row['noise']))}% | {labels.get(row['method'], row['method'])} "
                f"| {labels.get(baseline, baseline)} | {per_seed} | {mean} |"
            )
    return lines


def sanity_checks(run, min_accuracy=None):
    """The per-run checks: `[(name, passed, detail)]`.

    - no NaN or infinity in any per-epoch metric;
    - the training loss falls: the last epoch's is below the first's;
    - accuracy well above chance: the selected test accuracy is at least
      `min_accuracy` (default: three times chance, `3 / num_classes`).
    """
    history = run["history"]
    values = [v for series in history.values() for v in series]
    finite = all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    checks = [("no NaN/inf", finite, f"{len(values)} values")]
    loss = history.get("loss", [])
    if len(loss) >= 2:
        falls = loss[-1] < loss[0]
        checks.append(("loss falls", falls, f"{loss[0]:.3f} -> {loss[-1]:.3f}"))
    else:
        checks.append(("loss falls", False, f"only {len(loss)} epoch(s) logged"))
    num_classes = _num_classes(run)
    threshold = 3.0 / num_classes if min_accuracy is None else min_accuracy
    accuracy = run["result"].get("test_accuracy", math.nan)
    checks.append(
        (
            "above chance",
            accuracy >= threshold,
            f"test {100 * accuracy:.1f}% vs >= {100 * threshold:.0f}% "
            f"(chance {100 / num_classes:.0f}%)",
        )
    )
    return checks


def _num_classes(run):
    return {"digits": 10, "cifar10": 10, "cifar100": 100}.get(run["config"].get("dataset"), 10)


# --------------------------------------------------------------------------
# Plots


def _band(ax, curves, label, **style):
    import numpy as np

    length = min(len(c) for c in curves)
    data = np.asarray([c[:length] for c in curves], dtype=float)
    mean = data.mean(0)
    std = data.std(0, ddof=1) if len(curves) > 1 else np.zeros(length)
    x = np.arange(1, length + 1)
    style = {"marker": "o", "markersize": 3, **style}
    (line,) = ax.plot(x, mean, label=f"{label} (n={len(curves)})", **style)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(runs, path, noise):
    """Train loss and test accuracy per epoch, mean over seeds ± 1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bisam_keras.experiments.methods import LABELS

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in METHODS:
        group = [r for r in runs if r["noise"] == noise and r["method"] == method]
        if not group:
            continue
        for ax, metric, scale in ((axes[0], "loss", 1.0), (axes[1], "test_accuracy", 100.0)):
            curves = [[scale * v for v in r["history"].get(metric, [])] for r in group]
            curves = [c for c in curves if c]
            if curves:
                _band(ax, curves, LABELS.get(method, method))
    axes[0].set_ylabel("training loss (noisy labels, at w)")
    axes[1].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{int(round(100 * noise))}% label noise: mean over seeds, band = ±1 std")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------
# Report


def _keep_section(old_text, begin, end, default):
    if old_text and begin in old_text and end in old_text:
        return old_text[old_text.index(begin) : old_text.index(end) + len(end)]
    return f"{begin}\n{default}\n{end}"


def _fmt(mean, std, scale=100.0):
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def report(output, docs_path, command=None, log=print):
    """Writes the study's report to `docs_path` (and its PNGs beside it).

    Keeps the hand-written "honest reading" and the parity section of an
    existing report. Returns the summary rows (see `summarize`).
    """
    from bisam_keras.experiments.methods import LABELS

    runs = collect(output)
    if not runs:
        raise ValueError(f"`output` holds no finished runs (no result.json below {output!r}).")
    rows = summarize(runs)
    docs_dir = os.path.dirname(os.path.abspath(docs_path))
    old = open(docs_path).read() if os.path.exists(docs_path) else ""
    stem = os.path.splitext(os.path.basename(docs_path))[0]
    command = command or _saved_command(output) or "(not recorded)"
    machines = machines_by_description(runs)
    # The settings shown come from a sharpness-aware run where there is one (SGD's
    # config has no `rho`).
    first = next((r for r in runs if r["method"] != "sgd"), runs[0])["config"]
    noises = sorted({r["noise"] for r in runs})
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    lines = [
        "# Results: label noise on real CIFAR-10, at reduced scale",
        "",
        "The paper's largest effect is robustness to label noise (Table 9: ResNet-32 on "
        "CIFAR-10, 200 epochs, SGD 400). This page repeats that study at a scale that fits "
        "two CPU cores, with the library's `--preset paper-cifar` training, measured by "
        "[`benchmarks/reproduce.py`](../benchmarks/reproduce.py). Each cell is the test "
        "accuracy at the epoch of best validation accuracy, mean ± sample standard deviation "
        "over seeds (n seeds in brackets); the paper's number is beside it.",
        "",
        f"**Status: {study_status(runs)}**",
        "",
        "## Table",
        "",
        "| Noise | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for noise in noises:
        cells = []
        for method in methods:
            row = next((r for r in rows if r["noise"] == noise and r["method"] == method), None)
            if row is None:
                ours = "–"
            elif row["n"] < 2:  # no spread from one seed
                ours = f"{100 * row['mean']:.2f} (1 seed, no std)"
            else:
                ours = f"{_fmt(row['mean'], row['std'])} ({row['n']})"
            paper = PAPER_TABLE9.get(round(noise, 2), {}).get(method)
            paper_text = f"{paper[0]:.2f} ± {paper[1]:.2f}" if paper else "–"
            cells.append(f"{ours}<br>paper: {paper_text}")
        lines.append(f"| {int(round(100 * noise))}% | " + " | ".join(cells) + " |")
    per_run_seconds = [r["seconds"] for r in runs]
    lines += [
        "",
        "Scale here: model `{}`, {} training / {} validation / {} test images (a fixed subset "
        "of the 50,000 / 10,000), {} epochs for the sharpness-aware methods and {} for SGD. "
        "Paper: ResNet-32, 45,000 / 5,000 / 10,000 images, 200 / 400 epochs.".format(
            first["model"],
            runs[0]["result"].get("num_train"),
            runs[0]["result"].get("num_validation"),
            runs[0]["result"].get("num_test"),
            _epochs_of(runs, "sam"),
            _epochs_of(runs, "sgd"),
        ),
        "",
        "Paired by seed: the runs of one seed share the initial weights, the noisy labels "
        "and the data order, so each method's difference from SGD and from SAM within a "
        "seed (test accuracy, percentage points) removes what the seed adds to both.",
        "",
        *paired_table(runs, LABELS),
        "",
        "## Honest reading",
        "",
        _keep_section(old, HONEST_BEGIN, HONEST_END, HONEST_PLACEHOLDER),
        "",
        "## How it was run",
        "",
        "```",
        command,
        "```",
        "",
        "Training settings (the run's `config.json`, from `--preset paper-cifar`): "
        + ", ".join(
            f"`{k}={first[k]}`"
            for k in (
                "batch_size",
                "lr",
                "momentum",
                "weight_decay",
                "schedule",
                "label_smoothing",
                "rho",
                "alpha",
                "validation_fraction",
                "subset",
                "label_noise",
            )
            if k in first
        )
        + "; `mu` per bound as in the preset. Every other field is in each run's "
        "`config.json`.",
        "",
        "- Machines (each run's `machines.jsonl`, one line per sitting):",
        *(f"  - {text}: {', '.join(labels)}" for text, labels in machines.items()),
        f"- Wall time: {sum(per_run_seconds) / 3600:.2f} h ({sum(per_run_seconds):.0f} s) "
        f"in total over {len(runs)} runs "
        "(the sum of every finished epoch's wall time, validation and test evaluation "
        "included, across all sittings).",
        "- Mean seconds per epoch (each run's first epoch, which traces the step, left out): "
        + ", ".join(
            f"{LABELS.get(m, m)} {_mean_epoch_seconds(runs, m):.1f} s"
            for m in methods
            if _mean_epoch_seconds(runs, m) is not None
        )
        + ".",
        "",
        "## Learning curves",
        "",
    ]
    for noise in noises:
        name = f"{stem}_noise{int(round(100 * noise)):02d}.png"
        plot_curves(runs, os.path.join(docs_dir, name), noise)
        lines += [f"![{int(round(100 * noise))}% noise]({name})", ""]
    lines += [
        "Training loss at `w` on the (noisy) training labels as the runner logs it, with "
        "augmentation"
        + (
            " (weight decay at `w` in the update, so no L2 term in the loss)"
            if first.get("weight_decay_mode") == "at-w"
            else " and the coupled L2 term"
        )
        + "; test accuracy on the clean test images. Mean over seeds, band ±1 std. SGD runs "
        "twice the epochs.",
        "",
        "## Sanity checks per run",
        "",
        "| Noise | Method | Seed | Epochs | No NaN/inf | Loss falls | Above chance |",
        "|---|---|---:|---:|---|---|---|",
    ]
    failures = 0
    for r in runs:
        checks = sanity_checks(r)
        failures += sum(not ok for _, ok, _ in checks)
        cells = [f"{'ok' if ok else '**FAIL**'} ({detail})" for _, ok, detail in checks]
        lines.append(
            f"| {int(round(100 * r['noise']))}% | {LABELS.get(r['method'], r['method'])} | "
            f"{r['seed']} | {r['result'].get('epochs_run')} | " + " | ".join(cells) + " |"
        )
        log(
            f"sanity {r['run_dir']}: "
            + "; ".join(f"{n}={'ok' if ok else 'FAIL'} ({d})" for n, ok, d in checks)
        )
    lines += [
        "",
        f"{failures} failed check(s).",
        "",
        "## What the runs memorised",
        "",
        _keep_section(
            old,
            MEMORISATION_BEGIN,
            MEMORISATION_END,
            "Not measured yet: `python benchmarks/memorisation.py` fills this section from "
            "the finished runs' `best.keras`.",
        ),
        "",
        "## PyTorch parity",
        "",
        _keep_section(
            old,
            PARITY_BEGIN,
            PARITY_END,
            "Not run yet: `python benchmarks/parity.py --data-dir ../shared/data/cifar10` "
            "fills this section.",
        ),
        "",
        "## In CI",
        "",
        "`tests/test_reproduce.py::test_sam_resists_noisy_labels_more_than_sgd` (slow) runs "
        "the same pipeline on 200 noisy CIFAR-10 images for 30 epochs: SGD fits the wrong "
        "labels faster, and SAM's loss on the noisy training labels must stay above SGD's "
        "by more than 0.03 over the last 10 epochs (measured: 0.084-0.087). Were the "
        "sharpness-aware step plain SGD, the two would be equal and the test would fail.",
        "",
    ]
    os.makedirs(docs_dir, exist_ok=True)
    with open(docs_path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump({"rows": rows, "machines": machines, "failed_checks": failures}, f, indent=2)
    log(f"wrote {docs_path}; {failures} failed sanity check(s)")
    return rows


def study_status(runs):
    """`"the full study ..."` when the runs reach the study's defaults, else a warning."""
    seeds = {r["seed"] for r in runs}
    methods = {r["method"] for r in runs}
    subset = min((r["config"].get("subset") or 50_000) for r in runs)
    epochs = min(r["config"]["epochs"] // (2 if r["method"] == "sgd" else 1) for r in runs)
    full = (
        subset >= DEFAULTS["subset"]
        and len(seeds) >= 3
        and set(METHODS) <= methods
        and epochs >= DEFAULTS["epochs"]
        and 0.4 in {r["noise"] for r in runs}
    )
    if full:
        return f"the study at its full reduced scale ({len(runs)} runs)."
    return (
        f"NOT the study: a smoke or partial run ({len(runs)} runs, subset {subset}, "
        f"{epochs} epoch(s), {len(seeds)} seed(s)). Its numbers only show that the pipeline "
        "runs; they say nothing about the methods."
    )


def _epochs_of(runs, method):
    found = sorted({r["config"]["epochs"] for r in runs if r["method"] == method})
    return "/".join(str(e) for e in found) if found else "–"


def _mean_epoch_seconds(runs, method):
    """Mean wall time of an epoch, without each run's first (it traces the step)."""
    seconds = [
        s
        for r in runs
        if r["method"] == method
        for s in (r["epoch_seconds"][1:] if len(r["epoch_seconds"]) > 1 else r["epoch_seconds"])
    ]
    return sum(seconds) / len(seconds) if seconds else None


def _saved_command(output):
    path = os.path.join(output, "command.txt")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return None


def estimate(epochs, seeds, noise, methods, epoch_seconds=EPOCH_SECONDS):
    """Estimated hours of the study from the measured seconds per epoch."""
    total = 0.0
    for method in methods:
        total += epoch_seconds[method] * (2 * epochs if method == "sgd" else epochs)
    return total * len(seeds) * len(noise) / 3600


# --------------------------------------------------------------------------
# Command line


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10", help="CIFAR-10 TFRecord folder")
    p.add_argument("--dataset", default="cifar10", help="cifar10 (digits: offline tests only)")
    p.add_argument("--output", default=DEFAULTS["output"], help="folder of the runs")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results.md"), help="report file")
    p.add_argument("--model", default=DEFAULTS["model"])
    p.add_argument("--subset", type=int, default=None, help=f"default {DEFAULTS['subset']}")
    p.add_argument("--epochs", type=int, default=None, help="SAM/BiSAM epochs; SGD gets twice")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--noise", type=float, nargs="+", default=None, help="default 0.4")
    p.add_argument("--with-clean", action="store_true", help="also run 0%% noise")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--preset", default="paper-cifar")
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 images, 2 epochs, 1 seed")
    p.add_argument("--report-only", action="store_true", help="only (re)write the report")
    p.add_argument("--estimate", action="store_true", help="print the estimated hours and exit")
    return p


def resolve(args):
    """The study's settings from the flags: defaults, then `--quick`, then flags."""
    settings = dict(DEFAULTS)
    if args.quick:
        settings.update(QUICK)
        settings["output"] = (
            args.output if args.output != DEFAULTS["output"] else "runs/reproduce-quick"
        )
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
        hours = estimate(
            settings["epochs"], settings["seeds"], settings["noise"], settings["methods"]
        )
        print(f"estimated {hours:.1f} h on the 2-core reference machine")
        return 0
    if not args.report_only:
        configs = make_configs(
            args.data_dir if args.dataset != "digits" else None,
            settings["output"],
            settings["model"],
            settings["subset"],
            settings["epochs"],
            settings["seeds"],
            settings["noise"],
            settings["methods"],
            dataset=args.dataset,
            preset=args.preset,
        )
        os.makedirs(settings["output"], exist_ok=True)
        with open(os.path.join(settings["output"], "command.txt"), "w") as f:
            f.write(command.strip() + "\n")
        counts = run_all(configs)
        print(f"runs: {counts}")
    report(settings["output"], args.docs, command=_saved_command(settings["output"]) or command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
