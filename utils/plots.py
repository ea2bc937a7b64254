"""Figures saved beside the results, drawn without a screen (matplotlib's Agg backend)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def plot_curves(curves, path, *, ylabel, title, reference=None, xlabel="epoch"):
    """Per-epoch curves, one line per label: the mean over seeds, with a band from min to max.

    Args:
        curves: ``{label: [per-seed list of per-epoch values]}``; seeds may differ in length (a
            diverged run stops early), and None marks a missing value.
        path: the PNG to write (folders are created).
        reference: optional ``{label: per-epoch values}`` drawn dashed (e.g. the article's log).
    """
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in curves.items():
        if not runs or not any(runs):
            continue
        length = max(len(r) for r in runs)
        table = np.full((len(runs), length), np.nan)
        for i, run in enumerate(runs):
            table[i, : len(run)] = [np.nan if v is None else v for v in run]
        epochs = np.arange(1, length + 1)
        with np.errstate(all="ignore"):
            mean = np.nanmean(table, axis=0)
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(
                epochs, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color=line.get_color(), alpha=0.15
            )
    for label, values in (reference or {}).items():
        ax.plot(np.arange(1, len(values) + 1), values, linestyle="--", marker="x", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def save(fig, path, dpi=110):
    """Write ``fig`` as a PNG at ``path`` (folders are created), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
