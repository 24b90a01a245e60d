"""The label-noise study's runs on disk: their folders, the study's own files, reading back.

The runner keeps each run in its own folder (`RunConfig.run_dir`); the study
puts one noise level's runs below `<output>/noise<percent>/` (`noise_dir`) and
keeps two files of its own beside the runner's: `epoch_seconds.csv` (the wall
time of every finished epoch, validation and test evaluation included;
`EpochTimer`) and `machines.jsonl` (one line per sitting: the machine it
trained on; `Sitting`). `collect` reads the finished runs back through
`run_files.load_results` / `load_histories`.
"""

import csv
import json
import os
import time

import keras

from bisam_keras.experiments import RunConfig, run_files
from bisam_keras.experiments.builders import load_kwargs  # noqa: F401  (the study's name for it)
from bisam_keras.experiments.methods import METHODS

EPOCH_SECONDS_FILE = "epoch_seconds.csv"
MACHINES_FILE = "machines.jsonl"


def noise_dir(output, noise):
    """The folder of one noise level's runs: `<output>/noise40` for 0.4."""
    return os.path.join(output, f"noise{int(round(100 * noise)):02d}")


class Sitting(keras.callbacks.Callback):
    """Appends this sitting's machine to the run's `machines.jsonl` at its first epoch."""

    def __init__(self, run_dir):
        super().__init__()
        self.run_dir = run_dir
        self._recorded = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._recorded:
            record_sitting(self.run_dir, epochs_before=epoch)
            self._recorded = True


class EpochTimer(keras.callbacks.Callback):
    """Appends `epoch,seconds` of each finished epoch to the run's `epoch_seconds.csv`."""

    def __init__(self, run_dir):
        super().__init__()
        self.path = os.path.join(run_dir, EPOCH_SECONDS_FILE)
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            if new:
                f.write("epoch,seconds\n")
            f.write(f"{epoch},{time.perf_counter() - self._start:.3f}\n")


def record_sitting(run_dir, epochs_before=0):
    """Appends this sitting's machine (`bisam_keras.testing.machine`) to `machines.jsonl`.

    A run may be resumed on another machine: each sitting adds one line,
    `{"utc": ..., "epochs_before": n, "machine": {...}}`, and the report says
    which machine trained which run.
    """
    from bisam_keras.testing import machine

    line = {
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "epochs_before": epochs_before,
        "machine": machine.record(),
    }
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, MACHINES_FILE), "a") as f:
        f.write(json.dumps(line) + "\n")


def read_machines(run_dir):
    """The sittings `record_sitting` wrote for one run (a list, maybe empty)."""
    path = os.path.join(run_dir, MACHINES_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_epoch_seconds(run_dir):
    """`{epoch: seconds}` of the finished epochs (the last record of an epoch wins)."""
    path = os.path.join(run_dir, EPOCH_SECONDS_FILE)
    seconds = {}
    if os.path.exists(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                seconds[int(row["epoch"])] = float(row["seconds"])
    return seconds


def noise_levels(output):
    """The noise rates that have a folder below `output` (`noise_dir`), sorted."""
    if not os.path.isdir(output):
        return []
    names = [n for n in os.listdir(output) if n.startswith("noise") and n[5:].isdigit()]
    return sorted(int(n[5:]) / 100 for n in names if os.path.isdir(os.path.join(output, n)))


def collect(output, skipped=None):
    """Every finished run of the study in `output` (or of one noise level, when
    `output` is a `noise_dir`): a list of dicts, by noise, method and seed.

    Each holds `noise`, `method`, `seed`, `run_dir`, `result` (`result.json`),
    `history` and `config` (dicts), `epoch_seconds` (the finished epochs' wall
    times), `seconds` (their sum) and `machines` (`read_machines`). Runs are
    read with `run_files.load_results` / `load_histories`; `skipped` as there.
    """
    runs = []
    folders = [noise_dir(output, noise) for noise in noise_levels(output)] or [output]
    for folder in folders:
        histories = run_files.load_histories(folder, skipped)
        for result in run_files.load_results(folder, skipped):
            key = (result["dataset"], result["model"], result["method"], result["seed"])
            if key not in histories:
                continue
            run_dir = RunConfig(
                dataset=key[0], model=key[1], method=key[2], seed=key[3], output=folder
            ).run_dir()
            # The configuration the runner saved beside the result.
            config = run_files.read_json(os.path.join(run_dir, "config.json"))
            epoch_seconds = read_epoch_seconds(run_dir)
            runs.append(
                {
                    "noise": float(config["label_noise"]),
                    "method": result["method"],
                    "seed": int(result["seed"]),
                    "run_dir": run_dir,
                    "epoch_seconds": [epoch_seconds[e] for e in sorted(epoch_seconds)],
                    "seconds": float(sum(epoch_seconds.values())),
                    "machines": read_machines(run_dir),
                    "result": result,
                    "history": histories[key],
                    "config": config,
                }
            )
    runs.sort(key=lambda r: (r["noise"], METHODS.index(r["method"]), r["seed"]))
    return runs


def read_split(dataset):
    """A batched `(image, label)` split read back whole: `(images, labels)`,
    NumPy arrays in the dataset's order (labels int64, flattened)."""
    import numpy as np

    xs, ys = [], []
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(np.asarray(y.numpy()).reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)
