"""A run's per-epoch history: `history.csv` written and read back."""

import csv
import math
import os


def history_text(rows):
    """`history.csv` (LF line endings) from `[{epoch: 1-based, metric: value}]`."""
    fields = ["epoch"]
    for row in rows:
        fields += [name for name in row if name not in fields]
    lines = [",".join(fields)]
    for row in rows:
        lines.append(",".join(_csv_value(row.get(name, "")) for name in fields))
    return "\n".join(lines) + "\n"


def _csv_value(value):
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def read_history(path):
    """Per-epoch metrics from `history.csv`, the last row of each epoch winning."""
    history = {}
    for row in history_rows(path):
        for name, value in row.items():
            if name != "epoch":
                history.setdefault(name, []).append(value)
    return history


def history_rows(path):
    """The rows of `history.csv` as `[{epoch, metric: float}]`, one per epoch
    (the last row of each epoch wins), epochs numbered from 1; a missing file
    has no rows."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(row["epoch"])
            except (TypeError, ValueError):
                continue
            rows[epoch] = {
                "epoch": epoch,
                **{
                    name: float(value) if value not in ("", None) else math.nan
                    for name, value in row.items()
                    if name not in ("epoch", None)
                },
            }
    return [rows[epoch] for epoch in sorted(rows)]
