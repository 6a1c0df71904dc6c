"""What a study's dataset looks like: a labelled sample grid per split and its statistics.

Example:
    >>> from study.sections import DataConfig
    >>> from study.data import build
    >>> table = statistics(build(DataConfig(n_images=300), use_cache=False))
    >>> table[["split", "images", "source_digits"]].values.tolist()
    [['train', 240, 667], ['val', 30, 84], ['test', 30, 82]]
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from study.config import Study
from study.data.compose import N_CLASSES, Composites
from study.data.dataset import SPLITS, Dataset, build
from study.errors import UserError
from study.files import atomic_write, cannot_write
from study.resolution import combinations, resolve, section_keys
from study.sections import DataConfig

GRID = (4, 8)  # rows, columns of samples per split
IMBALANCE = 0.01  # a digit's share of images differing by more than this between splits is flagged


def statistics(dataset: Dataset) -> pd.DataFrame:
    """One row per split: size, distinct handwritten source digits drawn, class balance (share
    of images holding each digit), mean fraction of each digit hidden by nearer digits (back to
    front), scale and rotation ranges drawn, and how many images hold a withheld combination or
    digit–colour pair."""
    rows = []
    for split in SPLITS:
        c = dataset[split]
        row = {"split": split, "images": len(c.images), "source_digits": len(np.unique(c.sources))}
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


def settings(study: Study) -> dict[str, DataConfig]:
    """Every data setting the study's space can produce, by label (``""`` when the space changes
    no data key; otherwise ``key=value`` pairs, or the value alone for a single key)."""
    keys = section_keys(study, "data")
    found = {}
    for params in combinations(study, keys):
        label = ",".join(str(v) if len(keys) == 1 else f"{k}={v}" for k, v in params.items())
        found[label] = resolve(study, params).data
    return found


def imbalances(dataset: Dataset) -> list[str]:
    """Digits whose share of images differs between the training and the test split by more
    than ``IMBALANCE`` and by more than chance explains (three binomial standard errors): a
    comparison across those splits would also measure class frequency.

    Example:
        >>> from study.sections import DataConfig
        >>> imbalances(build(DataConfig(n_images=3000), use_cache=False))
        []
    """
    train, test = dataset["train"].targets.astype(bool), dataset["test"].targets.astype(bool)
    flagged = []
    for digit in range(N_CLASSES):
        a, b = train[:, digit].mean(), test[:, digit].mean()
        chance = 3 * np.sqrt(a * (1 - a) / len(train) + b * (1 - b) / len(test))
        if abs(a - b) > max(IMBALANCE, chance):
            flagged.append(f"digit {digit} is in {a:.1%} of training images but {b:.1%} of test images")
    return flagged


def write(study: Study, out: str | Path, report: Callable[[str, Dataset], None]) -> pd.DataFrame:
    """``<split>.png`` grids of every data setting (in ``out``, or ``out/<label>/`` when the
    space has several) and one ``statistics.csv`` with a row per setting and split; calls
    ``report(label, dataset)`` as each is built and returns the statistics."""
    out = Path(out)
    with _writing(out):  # before any dataset is built
        out.mkdir(parents=True, exist_ok=True)
    tables = []
    for label, data in settings(study).items():
        dataset = build(data)
        report(label, dataset)
        folder = out / label if label else out
        for split in SPLITS:
            title = f"{study.name} {label}: {split}".replace(" :", ":")
            with _writing(out):
                atomic_write(folder / f"{split}.png", functools.partial(grid, dataset[split], title))
        tables.append(statistics(dataset).assign(setting=label) if label else statistics(dataset))
    table = pd.concat(tables, ignore_index=True)
    with _writing(out):
        atomic_write(out / "statistics.csv", functools.partial(table.to_csv, index=False))
    return table


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Writes in ``out``, each file whole or absent (``atomic_write``): a folder they cannot be
    made in (a file in its way, a read-only or full disk) is a ``UserError`` naming ``--out``."""
    try:
        yield
    except OSError as err:
        raise UserError(f"--out {out}: {cannot_write(out, err, '--out')}") from None
