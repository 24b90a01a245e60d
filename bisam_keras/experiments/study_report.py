"""The label-noise study's report: tables, learning curves and per-run checks.

`report(output, docs_path)` reads the finished runs (`study_runs.collect`) and
renders `docs_path` (for the repository: `docs/results.md`) from a Markdown
template (`TEMPLATE`, `templates/results.md` beside this module). The template
holds the page's prose; `{{name}}` placeholders take the generated tables and
figures. Its sections between `<!-- name:begin -->` and `<!-- name:end -->`
(`honest-reading`, `memorisation`, `parity`) hold what is written elsewhere:
a page that already has such a section keeps it (the honest reading is written
by the person who ran the study, the other two by `benchmarks/memorisation.py`
and `benchmarks/parity.py`, through `replace_section`); a new page gets the
template's text, which says what fills it.
"""

import json
import math
import os
import re

from bisam_keras.experiments import study, study_runs
from bisam_keras.experiments.methods import LABELS

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
"""The folder of the report's Markdown templates: the page (`results.md`) and the
sections that `study_memorisation` and `study_parity` write (`memorisation.md`,
`parity.md`)."""


def template_path(name):
    """The path of the template `name` (`"results"`, `"memorisation"`, `"parity"`)."""
    return os.path.join(TEMPLATES, f"{name}.md")


TEMPLATE = template_path("results")
"""The Markdown template of the report's page."""


def read_template(path):
    """The text of the template file `path`.

    Raises:
        FileNotFoundError: naming the file, if it is not there (a package
            installed without its `templates/`; install from a checkout).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"the report's template {path} is not installed: install bisam-keras from a "
            "checkout of the repository (`pip install -e .`), which holds it"
        )
    with open(path) as f:
        return f.read()


SETTINGS = (
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
"""The training settings that the report lists, from a run's `config.json`."""
LOSS_TERMS = {
    "at-w": " (weight decay at `w` in the update, so no L2 term in the loss)",
    "l2": " and the coupled L2 term",
}
"""What the logged training loss holds besides the cross-entropy, by `weight_decay_mode`."""
_SECTION = re.compile(r"<!-- ([a-z-]+):begin -->.*?<!-- \1:end -->", re.DOTALL)


def markers(name):
    """The begin and end comments of the section `name`."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def template_section(name, template=TEMPLATE):
    """The text of the section `name` in the template (what a new page holds)."""
    text = read_template(template)
    begin, end = markers(name)
    return text[text.index(begin) + len(begin) : text.index(end)].strip("\n")


def replace_section(docs_path, name, text):
    """Replaces the section `name` of the page `docs_path` by `text`.

    Raises:
        ValueError: if the page has no such section (`report` writes the page).
    """
    with open(docs_path) as f:
        old = f.read()
    begin, end = markers(name)
    if begin not in old or end not in old:
        raise ValueError(
            f"{docs_path} has no {name} section: run `benchmarks/reproduce.py "
            f"--report-only` first. Received: docs={docs_path!r}"
        )
    head, rest = old.split(begin, 1)
    with open(docs_path, "w") as f:
        f.write(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def render(template_text, values, old_text=""):
    """`template_text` with each `{{name}}` replaced by `values[name]` and each
    marked section replaced by the same section of `old_text`, where it has one."""

    def keep(match):
        begin, end = markers(match.group(1))
        if begin in old_text and end in old_text:
            return old_text[old_text.index(begin) : old_text.index(end) + len(end)]
        return match.group(0)

    text = _SECTION.sub(keep, template_text)
    parts = re.split(r"\{\{([a-z_]+)\}\}", text)
    missing = sorted(set(parts[1::2]) - set(values))
    if missing:
        raise ValueError(f"the template's placeholders {missing} have no value")
    parts[1::2] = [str(values[name]) for name in parts[1::2]]
    return "".join(parts)


def label(method):
    return LABELS.get(method, method)


def percent(noise):
    return f"{int(round(100 * noise))}%"


def accuracy_table(runs, rows):
    """Markdown lines: one row per noise rate, ours and the paper's per method."""
    methods = [m for m in study.METHODS if any(r["method"] == m for r in runs)]
    lines = [
        "| Noise | " + " | ".join(label(m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for noise in sorted({r["noise"] for r in runs}):
        cells = []
        for method in methods:
            row = next((r for r in rows if r["noise"] == noise and r["method"] == method), None)
            if row is None:
                ours = "–"
            elif row["n"] < 2:  # no spread from one seed
                ours = f"{100 * row['mean']:.2f} (1 seed, no std)"
            else:
                ours = f"{100 * row['mean']:.2f} ± {100 * row['std']:.2f} ({row['n']})"
            paper = study.PAPER_TABLE9.get(round(noise, 2), {}).get(method)
            paper_text = f"{paper[0]:.2f} ± {paper[1]:.2f}" if paper else "–"
            cells.append(f"{ours}<br>paper: {paper_text}")
        lines.append(f"| {percent(noise)} | " + " | ".join(cells) + " |")
    return lines


def paired_table(runs, labels=LABELS):
    """Markdown lines: each method minus SGD and minus SAM, seed by seed."""
    lines = [
        "| Noise | Method | Baseline | Per seed (points) | Mean ± std |",
        "|---|---|---|---|---|",
    ]
    for baseline in ("sgd", "sam"):
        for row in study.paired_differences(runs, baseline):
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
                f"| {percent(row['noise'])} | {labels.get(row['method'], row['method'])} "
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
        checks.append(("loss falls", loss[-1] < loss[0], f"{loss[0]:.3f} -> {loss[-1]:.3f}"))
    else:
        checks.append(("loss falls", False, f"only {len(loss)} epoch(s) logged"))
    num_classes = {"cifar100": 100}.get(run["config"].get("dataset"), 10)
    threshold = 3.0 / num_classes if min_accuracy is None else min_accuracy
    accuracy = run["result"].get("test_accuracy", math.nan)
    detail = (
        f"test {100 * accuracy:.1f}% vs >= {100 * threshold:.0f}% (chance {100 / num_classes:.0f}%)"
    )
    checks.append(("above chance", accuracy >= threshold, detail))
    return checks


def study_status(runs):
    """`"the study ..."` when the runs reach the study's defaults, else a warning."""
    seeds = {r["seed"] for r in runs}
    subset = min((r["config"].get("subset") or 50_000) for r in runs)
    epochs = min(r["config"]["epochs"] // (2 if r["method"] == "sgd" else 1) for r in runs)
    full = (
        subset >= study.DEFAULTS["subset"]
        and len(seeds) >= 3
        and set(study.METHODS) <= {r["method"] for r in runs}
        and epochs >= study.DEFAULTS["epochs"]
        and 0.4 in {r["noise"] for r in runs}
    )
    if full:
        return f"the study at its full reduced scale ({len(runs)} runs)."
    return (
        f"NOT the study: a smoke or partial run ({len(runs)} runs, subset {subset}, "
        f"{epochs} epoch(s), {len(seeds)} seed(s)). Its numbers only show that the pipeline "
        "runs; they say nothing about the methods."
    )


def machines_by_description(runs):
    """`{one-line machine description: [run labels]}` over every run's sittings."""
    from bisam_keras.testing import machine

    found = {}
    for r in runs:
        name = f"{percent(r['noise'])} {label(r['method'])} seed {r['seed']}"
        sittings = r.get("machines") or []
        if not sittings:
            found.setdefault("not recorded", []).append(name)
        for sitting in sittings:
            text = machine.describe(sitting["machine"])
            if sitting.get("note"):
                text += f" ({sitting['note']})"
            names = found.setdefault(text, [])
            if name not in names:
                names.append(name)
    return found


def mean_epoch_seconds(runs, method):
    """Mean wall time of an epoch, without each run's first (it traces the step)."""
    seconds = [
        s
        for r in runs
        if r["method"] == method
        for s in (r["epoch_seconds"][1:] if len(r["epoch_seconds"]) > 1 else r["epoch_seconds"])
    ]
    return sum(seconds) / len(seconds) if seconds else None


def _epochs_of(runs, method):
    found = sorted({r["config"]["epochs"] for r in runs if r["method"] == method})
    return "/".join(str(e) for e in found) if found else "–"


def report(output, docs_path, command=None, log=print, template=TEMPLATE):
    """Writes the study's report to `docs_path`, its PNGs beside it, and
    `<output>/summary.json`; keeps the page's marked sections (see above).

    Returns:
        The summary rows (`study.summarize`).
    """
    skipped = []
    runs = study_runs.collect(output, skipped)
    for message in skipped:
        log(f"warning: {message}")
    if not runs:
        raise ValueError(f"`output` holds no finished runs (no result.json below {output!r}).")
    rows = study.summarize(runs)
    docs_dir = os.path.dirname(os.path.abspath(docs_path))
    old = open(docs_path).read() if os.path.exists(docs_path) else ""
    stem = os.path.splitext(os.path.basename(docs_path))[0]
    machines = machines_by_description(runs)
    # The settings come from a sharpness-aware run where there is one (SGD has no `rho`).
    first = next((r for r in runs if r["method"] != "sgd"), runs[0])["config"]
    noises = sorted({r["noise"] for r in runs})
    methods = [m for m in study.METHODS if any(r["method"] == m for r in runs)]
    curves = []
    for noise in noises:
        name = f"{stem}_noise{int(round(100 * noise)):02d}.png"
        plot_curves(runs, os.path.join(docs_dir, name), noise)
        curves.append(f"![{percent(noise)} noise]({name})\n")
    sanity, failures = [], 0
    for r in runs:
        checks = sanity_checks(r)
        failures += sum(not ok for _, ok, _ in checks)
        cells = [f"{'ok' if ok else '**FAIL**'} ({detail})" for _, ok, detail in checks]
        sanity.append(
            f"| {percent(r['noise'])} | {label(r['method'])} | {r['seed']} | "
            f"{r['result'].get('epochs_run')} | " + " | ".join(cells) + " |"
        )
        log(
            f"sanity {r['run_dir']}: "
            + "; ".join(f"{n}={'ok' if ok else 'FAIL'} ({d})" for n, ok, d in checks)
        )
    seconds = sum(r["seconds"] for r in runs)
    values = {
        "status": study_status(runs),
        "table": "\n".join(accuracy_table(runs, rows)),
        "model": first["model"],
        "num_train": runs[0]["result"].get("num_train"),
        "num_validation": runs[0]["result"].get("num_validation"),
        "num_test": runs[0]["result"].get("num_test"),
        "sam_epochs": _epochs_of(runs, "sam"),
        "sgd_epochs": _epochs_of(runs, "sgd"),
        "paired_table": "\n".join(paired_table(runs)),
        "command": command or saved_command(output) or "(not recorded)",
        "settings": ", ".join(f"`{k}={first[k]}`" for k in SETTINGS if k in first),
        "machines": "\n".join(f"  - {text}: {', '.join(n)}" for text, n in machines.items()),
        "hours": f"{seconds / 3600:.2f}",
        "seconds": f"{seconds:.0f}",
        "num_runs": len(runs),
        "epoch_seconds": ", ".join(
            f"{label(m)} {mean_epoch_seconds(runs, m):.1f} s"
            for m in methods
            if mean_epoch_seconds(runs, m) is not None
        ),
        "curves": "\n".join(curves),
        "loss_term": LOSS_TERMS["at-w" if first.get("weight_decay_mode") == "at-w" else "l2"],
        "sanity_table": "\n".join(
            ["| Noise | Method | Seed | Epochs | No NaN/inf | Loss falls | Above chance |"]
            + ["|---|---|---:|---:|---|---|---|"]
            + sanity
        ),
        "failures": failures,
    }
    text = render(read_template(template), values, old)
    os.makedirs(docs_dir, exist_ok=True)
    with open(docs_path, "w") as f:
        f.write(text)
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump({"rows": rows, "machines": machines, "failed_checks": failures}, f, indent=2)
    log(f"wrote {docs_path}; {failures} failed sanity check(s)")
    return rows


def band(ax, curves, name, **style):
    """Plots the mean of `curves` (lists, cut to the shortest) and a ±1 std band."""
    import numpy as np

    length = min(len(c) for c in curves)
    data = np.asarray([c[:length] for c in curves], dtype=float)
    mean = data.mean(0)
    std = data.std(0, ddof=1) if len(curves) > 1 else np.zeros(length)
    x = np.arange(1, length + 1)
    style = {"marker": "o", "markersize": 3, **style}
    (line,) = ax.plot(x, mean, label=f"{name} (n={len(curves)})", **style)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(runs, path, noise):
    """Train loss and test accuracy per epoch, mean over seeds ± 1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in study.METHODS:
        group = [r for r in runs if r["noise"] == noise and r["method"] == method]
        for ax, metric, scale in ((axes[0], "loss", 1.0), (axes[1], "test_accuracy", 100.0)):
            curves = [[scale * v for v in r["history"].get(metric, [])] for r in group]
            curves = [c for c in curves if c]
            if curves:
                band(ax, curves, label(method))
    axes[0].set_ylabel("training loss (noisy labels, at w)")
    axes[1].set_ylabel("test accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{percent(noise)} label noise: mean over seeds, band = ±1 std")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def saved_command(output):
    """The command that started the study in `output` (`command.txt`), or `None`."""
    path = os.path.join(output, "command.txt")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return None
