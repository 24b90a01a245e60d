"""The paper's reporting protocol, as pure functions over saved histories.

Each run reports the test accuracy of the epoch with the highest validation
accuracy (the first such epoch on ties); a configuration reports the mean and
the (sample) standard deviation of that number over seeds, laid out like the
paper's Tables 1 and 2: one row per model, one column per method.
"""

import csv
import io
import math

from bisam_keras.experiments.methods import LABELS, METHODS


def best_epoch(history, monitor="val_accuracy"):
    """Index of the first epoch with the highest `monitor` value.

    Args:
        history: a mapping from metric names to per-epoch lists.
        monitor: the selection metric. Defaults to `"val_accuracy"`.

    Returns:
        The 0-based index of the selected epoch.
    """
    values = history.get(monitor)
    if not values:
        raise ValueError(
            f"`history` has no values for `monitor`={monitor!r}. "
            f"Received metrics: {sorted(history)}"
        )
    finite = [(-math.inf if v is None or math.isnan(v) else v) for v in values]
    return max(range(len(finite)), key=lambda i: (finite[i], -i))


def selected_metrics(history, monitor="val_accuracy", prefix="test_"):
    """The `test_*` metrics (and the monitor) at the best-validation epoch."""
    epoch = best_epoch(history, monitor)
    selected = {"epoch": epoch + 1, monitor: history[monitor][epoch]}
    for name, values in history.items():
        if name.startswith(prefix) and len(values) > epoch:
            selected[name] = values[epoch]
    return selected


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("`values` must not be empty.")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def aggregate(results, metric="test_accuracy"):
    """Groups run results by (dataset, model, method) and averages over seeds.

    Args:
        results: a list of dicts with `dataset`, `model`, `method`, `seed` and
            the selected metrics of one run.
        metric: the metric to average. Defaults to `"test_accuracy"`.

    Returns:
        A list of dicts `{dataset, model, method, metric, mean, std, seeds}`,
        sorted by dataset, model and the paper's method order.
    """
    groups = {}
    for r in results:
        if metric not in r:
            continue
        groups.setdefault((r["dataset"], r["model"], r["method"]), []).append(r)
    rows = []
    for (dataset, model, method), runs in groups.items():
        mean, std = mean_std([r[metric] for r in runs])
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "metric": metric,
                "mean": mean,
                "std": std,
                "seeds": sorted(r["seed"] for r in runs),
            }
        )
    order = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["dataset"], r["model"], order.get(r["method"], len(order))))
    return rows


def markdown_table(rows, percent=True):
    """A Markdown table per dataset: models as rows, methods as columns.

    Cells read `94.28 ± 0.31` (percent) and the best mean of a row is bold,
    as in the paper.
    """
    scale = 100.0 if percent else 1.0
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        subset = [r for r in rows if r["dataset"] == dataset]
        methods = [m for m in METHODS if any(r["method"] == m for r in subset)]
        metric = subset[0]["metric"]
        out.append(f"**{dataset}**: {metric.replace('_', ' ')} (mean ± std over seeds)\n")
        out.append("| Model | " + " | ".join(LABELS[m] for m in methods) + " |")
        out.append("|---|" + "---:|" * len(methods))
        for model in sorted({r["model"] for r in subset}):
            cells = {r["method"]: r for r in subset if r["model"] == model}
            best = max((c["mean"] for c in cells.values()), default=None)
            line = [model]
            for m in methods:
                if m not in cells:
                    line.append("–")
                    continue
                text = f"{scale * cells[m]['mean']:.2f} ± {scale * cells[m]['std']:.2f}"
                line.append(f"**{text}**" if cells[m]["mean"] == best and len(cells) > 1 else text)
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def csv_table(rows):
    """The aggregated rows as one CSV table: one header line, then one row per
    (dataset, model, method, metric), LF line endings; `seeds` is
    space-separated. Write it to a file opened with `newline=""`."""
    buffer = io.StringIO()
    fields = ["dataset", "model", "method", "metric", "mean", "std", "seeds"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(str(s) for s in r["seeds"])})
    return buffer.getvalue()
