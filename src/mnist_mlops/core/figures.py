"""PNG figures for humans (DVC plots and MLflow artifacts): curves, confusion, digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mnist_mlops.core.fsio import atomic_path


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only. Imported by the first figure (about
    0.6 s), with the file-only backend chosen before pyplot loads."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path) -> None:
    plt = pyplot()
    with atomic_path(out, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def learning_curves(histories: dict[str, dict[str, list[float]]], out: Path, title: str) -> None:
    """Accuracy and loss per epoch, train (dashed) vs validation (solid), one colour a run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, h) in enumerate(histories.items()):
        colour = f"C{i}"
        for ax, key in zip(axes, ("accuracy", "loss"), strict=True):
            epochs = range(1, len(h[key]) + 1)
            ax.plot(epochs, h[key], "--", color=colour, label=f"{label} train")
            if f"val_{key}" in h:
                ax.plot(epochs, h[f"val_{key}"], "-", color=colour, label=f"{label} val")
    from matplotlib.ticker import MaxNLocator

    for ax, key in zip(axes, ("accuracy", "loss"), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    _save(fig, out)


def confusion_matrix(cm: np.ndarray, out: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(np.log1p(cm), cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    _save(fig, out)


def digit_grid(images: np.ndarray, captions: list[str], out: Path, title: str) -> None:
    """A grid of 28x28 digits with a caption over each (e.g. worst misclassifications),
    drawn as one picture with one axes: a quarter of the time of an axes per digit."""
    plt = pyplot()
    n = max(len(images), 1)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    cell_w, cell_h, top = 32, 40, 10          # pixels per digit, with room for its caption
    canvas = np.zeros((rows * cell_h, cols * cell_w), np.uint8)   # 0: white (gray_r)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        y, x = r * cell_h + top, c * cell_w + 2
        canvas[y:y + 28, x:x + 28] = np.asarray(img).reshape(28, 28)
    fig, ax = plt.subplots(figsize=(cols * 1.4, rows * 1.4 * cell_h / cell_w + 0.5))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=255)
    for k, cap in enumerate(captions[:len(images)]):
        r, c = divmod(k, cols)
        ax.text(c * cell_w + 16, r * cell_h + top - 1, cap, ha="center", va="bottom",
                fontsize=8)
    ax.axis("off")
    fig.suptitle(title)
    _save(fig, out)


def reliability_diagram(curves: dict[str, list[dict[str, float]]], out: Path, title: str
                        ) -> None:
    """Accuracy against confidence per bin (core/calibration.reliability), one line per set
    of answers (before and after calibration): a calibrated model lies on the diagonal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for label, bins in curves.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-",
                label=f"{label} ({sum(int(b['count']) for b in bins)} answers)")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title)
    _save(fig, out)
