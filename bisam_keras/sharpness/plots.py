"""Plots of a `LossLandscape`: a line (1-D), a contour map or a surface (2-D).

Each function builds a `matplotlib.figure.Figure` without pyplot (no global
state, no GUI backend needed), returns it (a notebook shows it), and saves it
as a PNG when `path` is given.
"""

import numpy as np

from bisam_keras.sharpness import checks

QUANTITIES = {"loss": "loss", "error": "error rate"}
"""What can be plotted: the landscape's `loss` or its `error` rate."""

KINDS = ("line", "contour", "surface")
"""The kinds of plot: `"line"` for 1-D landscapes, `"contour"` and `"surface"` for 2-D."""


def plot_landscape(landscape, quantity="loss", kind=None, path=None, levels=20, title=None):
    """Plots a `LossLandscape`.

    Args:
        landscape: a `LossLandscape` from `loss_landscape`.
        quantity: `"loss"` or `"error"`. Defaults to `"loss"`.
        kind: `"line"` (1-D), `"contour"` or `"surface"` (2-D); `None`
            picks `"line"` or `"contour"`. Defaults to `None`.
        path: save the figure there as a PNG. Defaults to `None`.
        levels: contour levels. Defaults to `20`.
        title: the figure's title. Defaults to `None` (the objective's name).

    Returns:
        The `matplotlib.figure.Figure`.
    """
    quantity = checks.choice("quantity", quantity, tuple(QUANTITIES))
    kind = ("line" if landscape.dims == 1 else "contour") if kind is None else kind
    kind = checks.choice("kind", kind, KINDS)
    if (kind == "line") != (landscape.dims == 1):
        raise ValueError(
            f"`kind` must be 'line' for a 1-D landscape and 'contour' or 'surface' for a "
            f"2-D one. Received: kind={kind!r} for a {landscape.dims}-D landscape"
        )
    levels = checks.positive_int("levels", levels)
    from matplotlib.figure import Figure  # here: `import bisam_keras` stays free of matplotlib

    values = np.asarray(getattr(landscape, quantity))
    label = QUANTITIES[quantity]
    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    if kind == "line":
        axes = figure.add_subplot()
        axes.plot(landscape.coordinates[0], values, marker=".")
        axes.set_xlabel("coordinate along d1")
        axes.set_ylabel(label)
    elif kind == "contour":
        axes = figure.add_subplot()
        a, b = np.meshgrid(*landscape.coordinates, indexing="ij")
        filled = axes.contourf(a, b, values, levels=levels, cmap="viridis")
        axes.contour(a, b, values, levels=levels, colors="white", linewidths=0.4)
        figure.colorbar(filled, ax=axes, label=label)
        axes.plot([0.0], [0.0], marker="+", color="red")
        axes.set_xlabel("d1")
        axes.set_ylabel("d2")
    else:
        axes = figure.add_subplot(projection="3d")
        a, b = np.meshgrid(*landscape.coordinates, indexing="ij")
        axes.plot_surface(a, b, values, cmap="viridis")
        axes.set_xlabel("d1")
        axes.set_ylabel("d2")
        axes.set_zlabel(label)
    axes.set_title(title if title is not None else landscape.settings.get("objective", ""))
    if path is not None:
        figure.savefig(path, format="png", dpi=120)
    return figure
