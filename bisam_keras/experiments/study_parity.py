"""PyTorch parity, end to end: the same network, data and protocol in both frameworks.

For each seed `run_parity` trains

- bisam-keras: `bisam_keras.experiments.run(config, resume=True)` with the
  `paper-cifar` preset (`bisam_keras.experiments.study.run_config`), resumable;
- PyTorch: the authors' loop (`bisam_keras.testing.torch_train`) on exactly the same
  images, train/validation split and noisy labels (read from the Keras run's
  own pipeline), with the same learning rate, momentum, weight decay, batch,
  `rho`, `mu` and epochs;

then plots both learning curves (mean over seeds, band ±1 std) in one PNG and
decides, epoch by epoch, whether they agree within seed noise:

```
|mean_keras - mean_torch| <= 3 * sqrt(std_keras^2 / n_keras + std_torch^2 / n_torch)
```

(the difference of two means against three standard errors of that
difference, the seeds' sample stds) for the test accuracy and the training
accuracy. The verdict, the table and the PNG go into the parity section of
`docs/results.md` (between `<!-- parity:begin -->` and `<!-- parity:end -->`).

`benchmarks/parity.py` is the command line. The PyTorch side needs PyTorch
(`pip install -e ".[bench]"`); the comparison and the section do not.
"""

import json
import math
import os

from bisam_keras.experiments import study, study_report, study_runs

METRICS = ("accuracy", "test_accuracy")


def agreement(keras_curves, torch_curves, z=3.0):
    """Per-epoch agreement of two sets of curves (lists of per-seed lists).

    Returns:
        A list of dicts per epoch: `keras_mean`, `torch_mean`, `diff`
        (keras - torch), `se` (standard error of the difference from the
        seeds' sample stds) and `ok` (`|diff| <= z * se`); `se` is NaN with
        fewer than two seeds a side, and then `ok` is False.
    """
    import numpy as np

    length = min(min(len(c) for c in keras_curves), min(len(c) for c in torch_curves))
    k = np.asarray([c[:length] for c in keras_curves], float)
    t = np.asarray([c[:length] for c in torch_curves], float)
    rows = []
    for e in range(length):
        if len(k) > 1 and len(t) > 1:
            se = math.sqrt(k[:, e].var(ddof=1) / len(k) + t[:, e].var(ddof=1) / len(t))
        else:
            se = math.nan
        diff = float(k[:, e].mean() - t[:, e].mean())
        rows.append(
            {
                "epoch": e + 1,
                "keras_mean": float(k[:, e].mean()),
                "torch_mean": float(t[:, e].mean()),
                "diff": diff,
                "se": se,
                "ok": bool(se == se and abs(diff) <= z * se),
            }
        )
    return rows


def smoothed_target_entropy(smoothing, num_classes):
    """Entropy of the authors' smoothed target: `1 - s` on the label, `s / (K - 1)` elsewhere.

    The authors' `smooth_crossentropy` is a KL divergence, which is the
    cross-entropy minus this constant; adding it puts the PyTorch loss on the
    scale of the Keras (cross-entropy) loss.
    """
    s, k = float(smoothing), int(num_classes)
    entropy = -(1.0 - s) * math.log(1.0 - s) if s < 1.0 else 0.0
    if s > 0.0:
        entropy -= s * math.log(s / (k - 1))
    return entropy


def plot(keras_histories, torch_histories, path, torch_loss_offset=0.0):
    """The three panels; `torch_loss_offset` is added to the PyTorch `loss` (see above)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch_histories = [
        {**h, "loss_ce": [v + torch_loss_offset for v in h["loss"]]} for h in torch_histories
    ]
    panels = (
        ("loss", "loss_ce", "training loss: smoothed CE at w"),
        ("accuracy", "accuracy", "training accuracy (%), noisy labels"),
        ("test_accuracy", "test_accuracy", "test accuracy (%)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (keras_key, torch_key, title) in zip(axes, panels):
        scale = 1.0 if "loss" in keras_key else 100.0
        for histories, key, label in (
            (keras_histories, keras_key, "bisam-keras"),
            (torch_histories, torch_key, "PyTorch (authors' loop)"),
        ):
            curves = [[scale * v for v in h[key]] for h in histories if key in h]
            if curves:
                study_report.band(ax, curves, label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    fig.suptitle("bisam-keras vs PyTorch: mean over seeds, band = ±1 std")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TEMPLATE = study_report.template_path("parity")
"""The Markdown template of the section."""
SMOKE = (
    "**Status: a smoke run ({} seed(s), {} epoch(s)), not the parity check: it shows that both "
    "sides run on the same data; the verdict below means nothing at this size. Run the command "
    "without `--quick`.**\n\n"
)
"""The section's first line for fewer than 3 seeds or 3 epochs."""
VERDICTS = {
    True: "**They agree within seed noise**",
    False: "**They do NOT agree within seed noise**",
}


def section(summary, png_name, command, template=TEMPLATE):
    """The Markdown of the parity section (from `template`)."""
    s = summary
    rows = [
        f"| {r['epoch']} | {100 * r['keras_mean']:.2f} | {100 * r['torch_mean']:.2f} | "
        f"{100 * r['diff']:+.2f} | {300 * r['se']:.2f} | {'yes' if r['ok'] else '**no**'} |"
        for r in s["agreement"]["test_accuracy"]
    ]
    smoke = len(s["seeds"]) < 3 or s["epochs"] < 3
    values = {
        "smoke": SMOKE.format(len(s["seeds"]), s["epochs"]) if smoke else "",
        "method": s["method"],
        "model": s["model"],
        "num_train": s["num_train"],
        "noise": f"{100 * s['label_noise']:.0f}",
        "epochs": s["epochs"],
        "seeds": s["seeds"],
        "keras_params": f"{s['keras_params']:,}",
        "torch_params": f"{s['torch_params']:,}",
        "png": png_name,
        "rows": "".join("\n" + row for row in rows),
        "machines": "; ".join(s.get("machines") or ["not recorded"]),
        "verdict": VERDICTS[bool(s["agree"])],
        "epochs_within": s["epochs_within"],
        "epochs_checked": s["epochs_checked"],
        "command": command,
    }
    return study_report.render(study_report.read_template(template), values)


def machines_of(run_dirs):
    """The one-line descriptions of the machines that trained `run_dirs` (sorted, unique)."""
    from bisam_keras.testing import machine

    return sorted(
        {
            machine.describe(sitting["machine"])
            for run_dir in run_dirs
            for sitting in study_runs.read_machines(run_dir)
        }
    )


def write_section(docs_path, text):
    """Replaces the parity section of `docs_path` (or appends one)."""
    old = open(docs_path).read() if os.path.exists(docs_path) else ""
    begin, end = study_report.markers("parity")
    if begin in old and end in old:
        study_report.replace_section(docs_path, "parity", text)
        return
    with open(docs_path, "w") as f:
        f.write(old + ("\n" if old else "") + f"## PyTorch parity\n\n{begin}\n{text}\n{end}\n")


def run_parity(
    data_dir,
    method="sam",
    model="resnet20",
    seeds=(0, 1, 2),
    subset=10_000,
    label_noise=0.4,
    epochs=5,
    smoothing=0.1,
    threads=None,
    output="runs/parity",
    docs="docs/results.md",
    command="",
):
    """Trains both sides for each seed (resumable), compares them, writes
    `<output>/parity.json`, the PNG beside `docs` and the parity section of `docs`.

    Returns:
        The summary dict of `parity.json`.
    """
    import torch

    from bisam_keras.experiments import run, run_files
    from bisam_keras.testing import torch_train

    if threads:
        torch.set_num_threads(threads)
    keras_histories, torch_histories, config, run_dirs = [], [], None, []
    for seed in seeds:
        config = study.run_config(
            method,
            seed,
            epochs,
            os.path.join(output, "keras"),
            data_dir=data_dir,
            model=model,
            subset=subset,
            label_noise=label_noise,
        )
        print(f"== keras {method} seed {seed}")
        result = run(config, resume=True, callbacks=[study_runs.Sitting(config.run_dir())])
        run_dirs.append(config.run_dir())
        key = (config.dataset, config.model, config.method, config.seed)
        keras_histories.append(run_files.load_histories(config.output)[key])
        torch_path = os.path.join(output, "torch", method, f"seed{seed}", "history.json")
        history = None
        if os.path.exists(torch_path):
            with open(torch_path) as f:
                history = json.load(f)
        if history is None or len(history.get("test_accuracy", [])) < epochs:
            print(f"== torch {method} seed {seed}")
            os.makedirs(os.path.dirname(torch_path), exist_ok=True)
            study_runs.record_sitting(os.path.dirname(torch_path))
            arrays = torch_train.keras_run_arrays(config)
            history = torch_train.train(
                arrays,
                method,
                seed=seed,
                model=model,
                epochs=epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                smoothing=smoothing,
                rho=config.rho,
                mu=config.mu,
                alpha=config.alpha,
                history_path=torch_path,
            )
        else:
            print(f"== torch {method} seed {seed}: finished, skipped")
        torch_histories.append(history)
        run_dirs.append(os.path.dirname(torch_path))
    agreements = {
        m: agreement([h[m] for h in keras_histories], [h[m] for h in torch_histories])
        for m in METRICS
    }
    checked = [r for rows in agreements.values() for r in rows]
    keras_params, torch_params = _param_counts(config, model)
    summary = {
        "method": method,
        "model": model,
        "seeds": list(seeds),
        "epochs": epochs,
        "label_noise": label_noise,
        "num_train": result["num_train"],
        "keras_params": keras_params,
        "torch_params": torch_params,
        "agreement": agreements,
        "epochs_checked": len(checked),
        "epochs_within": sum(r["ok"] for r in checked),
        "agree": all(r["ok"] for r in checked),
        "machines": machines_of(run_dirs),
    }
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "parity.json"), "w") as f:
        json.dump(summary, f, indent=2)
    stem = os.path.splitext(os.path.basename(docs))[0]
    png = f"{stem}_parity.png"
    num_classes = {"cifar10": 10, "cifar100": 100}.get(config.dataset)
    if num_classes is None:
        raise ValueError(
            f"parity.py trains CIFAR-10 or CIFAR-100. Received: dataset={config.dataset!r}"
        )
    plot(
        keras_histories,
        torch_histories,
        os.path.join(os.path.dirname(os.path.abspath(docs)), png),
        torch_loss_offset=smoothed_target_entropy(smoothing, num_classes),
    )
    write_section(docs, section(summary, png, command))
    print(json.dumps({k: v for k, v in summary.items() if k != "agreement"}, indent=2))
    print(f"wrote {docs} (parity section) and {png}")
    return summary


def _param_counts(config, model):
    from bisam_keras import models
    from bisam_keras.testing.torch_reference import authors_resnet

    kwargs = {}
    variant = getattr(config, "model_variant", None)
    if variant:
        kwargs["variant"] = variant
    keras_model = models.build(config.model, 10, input_shape=(32, 32, 3), **kwargs)
    keras_params = int(sum(int(v.numpy().size) for v in keras_model.trainable_variables))
    torch_params = sum(p.numel() for p in authors_resnet(model).parameters())
    return keras_params, int(torch_params)
