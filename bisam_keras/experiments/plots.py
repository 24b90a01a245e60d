"""Learning-curve plots (PNG, matplotlib) comparing methods."""

import os

import numpy as np

from bisam_keras.experiments.methods import LABELS, METHODS


def learning_curves(histories, output_dir, metrics=("val_accuracy", "loss")):
    """One PNG per (dataset, model): each metric per epoch, mean over seeds.

    Args:
        histories: `{(dataset, model, method, seed): history}`.
        output_dir: where the PNG files go.
        metrics: the history metrics to plot, one panel each.

    Returns:
        The paths of the files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    groups = {}
    for (dataset, model, method, _), history in histories.items():
        groups.setdefault((dataset, model), {}).setdefault(method, []).append(history)
    paths = []
    for (dataset, model), by_method in sorted(groups.items()):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
        axes = np.atleast_1d(axes)
        for ax, metric in zip(axes, metrics):
            for method in [m for m in METHODS if m in by_method]:
                runs = [h[metric] for h in by_method[method] if metric in h]
                if not runs:
                    continue
                length = min(len(r) for r in runs)
                curve = np.mean([r[:length] for r in runs], axis=0)
                ax.plot(np.arange(1, length + 1), curve, label=LABELS[method])
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{dataset} / {model}")
        fig.tight_layout()
        path = os.path.join(output_dir, f"curves_{dataset}_{model}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
