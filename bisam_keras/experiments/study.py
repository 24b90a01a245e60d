"""The paper's label-noise study (Table 9) at reduced scale: grid, runs, statistics.

The paper trains ResNet-32 on all of CIFAR-10 for 200 epochs (SGD: 400) with
0-80% symmetric label noise. The study runs the same protocol, the runner's
`paper-cifar` preset, at a scale that fits two CPU cores: ResNet-20, a fixed
subset of the training images, fewer epochs, SGD with twice the epochs of the
sharpness-aware methods (the paper's equal gradient budget), several seeds.

```
configs = make_configs(data_dir, output, "resnet20", 10_000, 20, (0, 1, 2), (0.4,))
run_all(configs)                        # finished runs skipped, unfinished ones resumed
runs = study_runs.collect(output)       # the finished runs, read back
summarize(runs); paired_differences(runs, "sgd")
```

Each run goes through `bisam_keras.experiments.run(config, resume=True)`: a
finished run returns its saved result, an unfinished one continues from its
last committed epoch (the runner's `RunState`, `backup/state.json`), and a run
whose saved `config.json` differs from the grid is refused (`ValueError`
naming the differences), never mixed in. `study_runs` holds the runs' folders
and the study's own files, `study_report` the report;
`benchmarks/reproduce.py` is the command line.
"""

from bisam_keras.experiments import RunConfig, run, run_files, study_runs
from bisam_keras.experiments import methods as methods_lib
from bisam_keras.experiments.config import check_resumable, settings
from bisam_keras.experiments.presets import PRESETS, preset_mu
from bisam_keras.experiments.protocol import mean_std

METHODS = methods_lib.METHODS[:4]
"""The methods of the paper's Table 9: SGD, SAM, BiSAM (-log) and BiSAM (tanh)."""

# Paper, Table 9: ResNet-32 on CIFAR-10 with label noise, test accuracy (%),
# mean ± std over seeds, by noise rate, in the order of `METHODS`.
PAPER_TABLE9 = {
    noise: dict(zip(METHODS, cells))
    for noise, cells in {
        0.0: ((94.76, 0.14), (94.95, 0.13), (94.98, 0.17), (95.01, 0.08)),
        0.2: ((88.65, 1.75), (92.57, 0.24), (92.59, 0.11), (92.35, 0.29)),
        0.4: ((84.24, 0.25), (89.03, 0.09), (88.71, 0.23), (88.86, 0.18)),
        0.6: ((76.29, 0.25), (82.77, 0.29), (82.91, 0.46), (82.87, 0.71)),
        0.8: ((44.44, 1.20), (44.68, 4.01), (50.00, 1.96), (48.57, 0.64)),
    }.items()
}

DEFAULTS = dict(
    model="resnet20",
    subset=10_000,
    epochs=20,
    seeds=(0, 1, 2),
    noise=(0.4,),
    methods=METHODS,
    output="results/label-noise",
)
"""The study's reduced scale: ResNet-20 on the first 10,000 training images
(9,000 train / 1,000 validation; 2,000 test images), 40% noise, 20 epochs for
SAM and BiSAM and 40 for SGD, seeds 0, 1, 2."""
QUICK = dict(subset=1_000, epochs=2, seeds=(0,), methods=METHODS)
"""A smoke run's changes to `DEFAULTS` (minutes)."""

EPOCH_SECONDS = dict(zip(METHODS, (31.0, 61.0, 61.0, 61.0)))
"""Seconds per epoch at `DEFAULTS`, validation and test included, on the 2-core
AMD EPYC (Zen 5, AVX-512, oneDNN on) while it was shared (load average 7-10);
BiSAM's are SAM's (the same two passes). They feed `estimate` only."""


def method_order(method):
    """The position of `method` in `METHODS` (others after them)."""
    return METHODS.index(method) if method in METHODS else len(METHODS)


# --------------------------------------------------------------------------
# The grid


def preset_fields(preset, method, dataset):
    """The `RunConfig` fields that the preset `preset` (a name) sets for `method`.

    As `bisam-keras --preset`: the fields declared `preset=True`
    (`config.settings("preset")`) that the preset holds, its
    epochs (`sgd_epochs` for SGD), its `rho` (`adaptive_rho` for the adaptive
    methods) and its `mu` for the method's bound on `dataset`.
    """
    values = PRESETS[preset]
    fields = {k: values[k] for k in settings("preset") if k in values}
    if "steps" in values:
        fields["steps"] = values["steps"]
    else:
        fields["epochs"] = values["sgd_epochs" if method == "sgd" else "epochs"]
    fields["rho"] = values["adaptive_rho" if methods_lib.is_adaptive(method) else "rho"]
    bound = methods_lib.lower_bound_of(method)
    if bound:
        fields["mu"] = preset_mu(values, bound, dataset)
    return fields


def run_config(
    method,
    seed,
    epochs,
    output,
    data_dir=None,
    model="resnet20",
    subset=None,
    label_noise=0.0,
    dataset="cifar10",
    preset="paper-cifar",
    overrides=None,
):
    """One `RunConfig`: the preset's training settings (`preset=None`: `RunConfig`'s
    defaults), then these arguments, then `overrides` (a dict of fields)."""

    values = preset_fields(preset, method, dataset) if preset else {}
    values.update(
        dataset=dataset,
        data_dir=data_dir or None,
        model=model,
        method=method,
        seed=seed,
        subset=subset or None,
        label_noise=label_noise,
        epochs=epochs,
        output=output,
        verbose=2,
        **(overrides or {}),
    )
    return RunConfig(**values).validate()


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
    overrides=None,
):
    """The study's `RunConfig`s (`run_config`), seed by seed: a study cut short
    still holds whole comparisons.

    The study sets the data, the model, the subset, the noise, the seeds and
    the epochs (SGD gets `2 * epochs`, the paper's equal gradient budget);
    `preset` supplies every other setting, `overrides` changes any.
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"`methods` must be in {list(METHODS)}. Received: {method!r}")
    configs = [
        run_config(
            method,
            seed,
            2 * epochs if method == "sgd" else epochs,
            study_runs.noise_dir(output, level),
            data_dir=data_dir,
            model=model,
            subset=subset,
            label_noise=level,
            dataset=dataset,
            preset=preset,
            overrides=overrides,
        )
        for level in noise
        for method in methods
        for seed in seeds
    ]
    configs.sort(key=lambda c: (-c.label_noise, c.seed, methods.index(c.method)))
    return configs


def run_state(config):
    """`"finished"`, `"partial"` (some epochs committed) or `"new"`."""
    found = run_files.committed_files(config.run_dir())
    if "result.json" in found:
        return "finished"
    return "partial" if found else "new"


def run_all(configs, callbacks=(), log=print):
    """Runs (or resumes, or skips) every configuration; returns `{state: count}`.

    Args:
        configs: `RunConfig`s, e.g. from `make_configs`.
        callbacks: extra Keras callbacks for every run (tests use them to
            interrupt a run).
        log: a print-like function.
    """
    counts = {"finished": 0, "partial": 0, "new": 0}
    for i, config in enumerate(configs):
        state = run_state(config)
        counts[state] += 1
        name = f"[{i + 1}/{len(configs)}] {config.run_dir()}"
        if state != "new":
            check_resumable(config)  # a run made with other settings is refused
        if state == "finished":
            log(f"{name}: finished, skipped")
            continue
        log(f"{name}: {'resuming' if state == 'partial' else 'starting'}")
        own = [study_runs.Sitting(config.run_dir()), study_runs.EpochTimer(config.run_dir())]
        result = run(config, resume=True, callbacks=[*own, *callbacks])
        log(
            f"{name}: test accuracy {100 * result['test_accuracy']:.2f}% at the best "
            f"validation epoch {result['epoch']}/{result['epochs_run']}"
        )
    return counts


# --------------------------------------------------------------------------
# Statistics


def summarize(runs, metric="test_accuracy"):
    """Mean and sample std (ddof 1) of `metric` over seeds, per (noise, method).

    Returns:
        A list of dicts `{noise, method, mean, std, n, seeds}`, in the paper's
        order; `std` is 0 for a single seed.
    """
    groups = {}
    for r in runs:
        groups.setdefault((r["noise"], r["method"]), []).append(r)
    rows = []
    for (noise, method), group in sorted(
        groups.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]))
    ):
        mean, std = mean_std([g["result"][metric] for g in group])
        seeds = sorted(g["seed"] for g in group)
        rows.append(dict(noise=noise, method=method, mean=mean, std=std, n=len(group), seeds=seeds))
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
    value = {(r["noise"], r["method"], r["seed"]): r["result"][metric] for r in runs}
    rows = []
    for noise, method in sorted(
        {(n, m) for n, m, _ in value if m != baseline},
        key=lambda nm: (nm[0], method_order(nm[1])),
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


def estimate(epochs, seeds, noise, methods, epoch_seconds=EPOCH_SECONDS):
    """Estimated hours of the study from the measured seconds per epoch."""
    total = sum(epoch_seconds[m] * (2 * epochs if m == "sgd" else epochs) for m in methods)
    return total * len(seeds) * len(noise) / 3600
