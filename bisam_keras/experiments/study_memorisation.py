"""How much of the wrong labels each run of the label-noise study has learnt.

SAM's advantage under label noise (the paper's Table 9) is that it memorises
fewer of the wrong labels than SGD. `measure_runs` measures that directly on
the study's finished runs (`bisam_keras.experiments.study`) whose selected model (`best.keras`,
the epoch `result.json` reports) is on disk. It predicts every training image
without augmentation and splits the training examples by whether the run's
label-noise draw kept their label (clean) or replaced it (noisy):

- `clean_accuracy`: on the clean examples, the share predicted as labelled;
- `noisy_memorised`: on the noisy examples, the share predicted as the *wrong*
  label the run trained on (memorisation);
- `noisy_true`: on the noisy examples, the share predicted as the true label
  (the clean signal winning over the noise);
- `noisy_other`: the rest of the noisy examples.

A network that memorised everything has `noisy_memorised` 1. One that
memorised nothing still predicts some wrong labels by mistake: the noise
replaces a label by one of the other `K - 1` classes uniformly, independently
of the image, so a prediction that does not depend on that draw hits it with
probability `(1 - noisy_true) / (K - 1)` (`noisy_chance`). `noisy_memorised`
above `noisy_chance` is memorisation.

`benchmarks/memorisation.py` is the command line; `section` is the report's
memorisation section (`study_report.replace_section`).

The true labels come from loading the same run's data with `label_noise=0`:
the split, the subset and the images do not depend on the noise rate, only the
labels do (checked: the two loads must hold the same images).
"""

import dataclasses
import json
import os

import numpy as np

from bisam_keras.experiments import RunConfig, study_report, study_runs


def fractions(predicted, given, true, num_classes):
    """The shares of `predicted` that match the given and the true labels.

    Args:
        predicted: int array `(n,)`, the model's classes.
        given: int array `(n,)`, the labels the run trained on (noisy).
        true: int array `(n,)`, the labels before the noise.
        num_classes: `K`, for `noisy_chance`.

    Returns:
        A dict: `num_clean`, `num_noisy` (counts), `clean_accuracy`,
        `noisy_memorised`, `noisy_true`, `noisy_other`, and `noisy_chance`
        (`(1 - noisy_true) / (K - 1)`, the `noisy_memorised` of a model that
        memorised nothing); shares, `None` where their group is empty.
    """
    predicted, given, true = (np.asarray(a).reshape(-1) for a in (predicted, given, true))
    if not predicted.shape == given.shape == true.shape:
        raise ValueError(
            "`predicted`, `given` and `true` must have the same length. Received: "
            f"{predicted.shape[0]}, {given.shape[0]}, {true.shape[0]}"
        )
    noisy = given != true
    clean = ~noisy

    def share(hits, group):
        return float(np.mean(hits[group])) if group.any() else None

    memorised = share(predicted == given, noisy)
    true_share = share(predicted == true, noisy)
    return {
        "num_clean": int(clean.sum()),
        "num_noisy": int(noisy.sum()),
        "clean_accuracy": share(predicted == given, clean),
        "noisy_memorised": memorised,
        "noisy_true": true_share,
        "noisy_other": None if memorised is None else 1.0 - memorised - true_share,
        "noisy_chance": None if true_share is None else (1.0 - true_share) / (num_classes - 1),
    }


def _train_part(config):
    """The normalized training images (no augmentation) and their labels, in a
    fixed order: sorted by image bytes (stable, so equal images keep the
    pipeline's order)."""
    from bisam_keras import data as data_lib

    splits = data_lib.load(config.dataset, **study_runs.load_kwargs(config))
    x, y = study_runs.read_split(splits.train)
    order = sorted(range(len(x)), key=lambda i: x[i].tobytes())
    return x[order], y[order], splits.noisy_label_fraction


def labelled_train_part(config):
    """`(images, given labels, true labels, noisy fraction)` of a run's train part.

    Loads the run's data twice, as the runner does but without augmentation:
    with its label noise and with none. Raises `ValueError` if the two loads
    do not hold the same images.
    """
    x, given, fraction = _train_part(config)
    x_clean, true, _ = _train_part(dataclasses.replace(config, label_noise=0.0))
    if x.shape != x_clean.shape or not np.array_equal(x, x_clean):
        raise ValueError(
            "The run's training images depend on `label_noise`; the true labels cannot "
            f"be matched. Received: label_noise={config.label_noise}"
        )
    return x, given, true, fraction


def measure(run, batch_size=500, data_dir=None):
    """`fractions` of one finished run (a `study_runs.collect` entry), or `None`
    when its `best.keras` is not on disk. `data_dir` replaces the run's own
    (the same data in another place)."""
    import keras

    path = os.path.join(run["run_dir"], "best.keras")
    if not os.path.exists(path):
        return None
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{k: v for k, v in run["config"].items() if k in fields})
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir)
    x, given, true, fraction = labelled_train_part(config)
    model = keras.saving.load_model(path, compile=False)
    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    out = fractions(np.argmax(probabilities, axis=-1), given, true, probabilities.shape[-1])
    out.update(
        noise=run["noise"],
        method=run["method"],
        seed=run["seed"],
        epoch=run["result"]["epoch"],
        test_accuracy=run["result"]["test_accuracy"],
        noisy_label_fraction=fraction,
    )
    return out


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


TEMPLATE = study_report.template_path("memorisation")
"""The Markdown template of the section."""
NOT_MEASURED = (
    "Not measured (their `best.keras` is not in the repository, which keeps the runs' small "
    "files only, and was not on the measuring machine): {}.\n\n"
)
"""The section's line for the runs whose model was measured nowhere."""


def section(rows, skipped, command, template=TEMPLATE):
    """The Markdown of the results page's memorisation section (from `template`)."""
    lines = [
        f"| {100 * r['noise']:.0f}% | {study_report.label(r['method'])} "
        f"| {r['seed']} | {r['epoch']} | {_pct(r['clean_accuracy'])}% "
        f"| {_pct(r['noisy_true'])}% | {_pct(r['noisy_memorised'])}% "
        f"| {_pct(r['noisy_chance'])}% | {_pct(r['test_accuracy'])}% |"
        for r in rows
    ]
    values = {
        "rows": "".join("\n" + line for line in lines),
        "skipped": NOT_MEASURED.format(", ".join(skipped)) if skipped else "",
        "command": command,
    }
    return study_report.render(study_report.read_template(template), values)


def measure_runs(output, data_dir=None, log=print):
    """`measure` on every finished run of `output`; writes `<output>/memorisation.json`.

    A run whose `best.keras` is not on disk keeps the row that
    `memorisation.json` already holds for it (measured earlier, on a machine
    that had the model), or is skipped.

    Returns:
        `(rows, skipped)`: the rows, and the names of the runs not measured.
    """
    runs = study_runs.collect(output)
    if not runs:
        raise ValueError(f"no finished runs below {output!r}")
    path = os.path.join(output, "memorisation.json")
    saved = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = {(r["noise"], r["method"], r["seed"]): r for r in json.load(f)}
    rows, skipped = [], []
    for run in runs:
        row = measure(run, data_dir=data_dir)
        if row is None:
            row = saved.get((run["noise"], run["method"], run["seed"]))
        if row is None:
            name = study_report.label(run["method"])
            skipped.append(f"{100 * run['noise']:.0f}% {name} seed {run['seed']}")
            continue
        rows.append(row)
        log(json.dumps(row))
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)
    return rows, skipped
