"""What a study's dataset looks like: a labelled sample grid per split and its statistics.

Example:
    >>> from study.config import DataConfig
    >>> table = statistics(build(DataConfig(n_images=300)))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
import pandas as pd

from study.data.compose import N_CLASSES, Composites
from study.data.dataset import SPLITS, Dataset

GRID = (4, 8)  # rows, columns of samples per split


def statistics(dataset: Dataset) -> pd.DataFrame:
    """One row per split: size, class balance (share of images holding each digit), mean fraction
    of each digit hidden by nearer digits (back to front), scale and rotation ranges drawn, and
    how many images hold a withheld combination or digit–colour pair."""
    rows = []
    for split in SPLITS:
        c = dataset[split]
        row = {"split": split, "images": len(c.images)}
        row |= {f"has_{d}": round(float(c.targets[:, d].mean()), 3) for d in range(N_CLASSES)}
        row |= {f"hidden_depth{j}": round(float(c.hidden[:, j].mean()), 3) for j in range(c.hidden.shape[1])}
        row |= {"scale_min": float(c.scales.min()), "scale_max": float(c.scales.max()),
                "rotation_min": float(c.angles.min()), "rotation_max": float(c.angles.max()),
                "withheld": int(c.withheld.sum())}
        rows.append(row)
    return pd.DataFrame(rows).round({"scale_min": 3, "scale_max": 3, "rotation_min": 1, "rotation_max": 1})


def grid(composites: Composites, title: str, path: Path) -> None:
    """The first images of one split with their digits (back to front) and withheld marks."""
    rows, cols = GRID
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.0 * rows), squeeze=False)
    colours = composites.colour_strings()
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(composites.images):
            continue
        image = composites.images[i]
        ax.imshow(image if image.ndim == 2 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        label = "".join(str(d) for d in composites.classes[i]) + (" W" if composites.withheld[i] else "")
        ax.set_title(label, fontsize=8, color="crimson" if composites.withheld[i] else "black")
        if colours[i]:
            ax.text(0.5, -0.08, colours[i], transform=ax.transAxes, ha="center", va="top", fontsize=5)
    fig.suptitle(f"{title} (digits back to front; W: withheld)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(dataset: Dataset, name: str, out: str | Path) -> pd.DataFrame:
    """``<split>.png`` grids and ``statistics.csv`` in ``out``; returns the statistics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        grid(dataset[split], f"{name}: {split}", out / f"{split}.png")
    table = statistics(dataset)
    table.to_csv(out / "statistics.csv", index=False)
    return table
