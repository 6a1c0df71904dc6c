"""Composite images: K digits of K different classes on one canvas, nearer ones occluding.

Everything is vectorised over images; the only Python loop runs over the K depth layers.

Example:
    >>> from study.data.source import embedded
    >>> import numpy as np
    >>> d = embedded()
    >>> c = compose(d.images, d.labels, n=4, canvas=48, k=3, rng=np.random.default_rng(0))
    >>> c.images.shape, c.targets.sum(axis=1).tolist()
    ((4, 48, 48), [3, 3, 3, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.data.source import SIDE

N_CLASSES = 10
_CHUNK = 8192  # images composed at once: bounds the index arrays to a few hundred MB


@dataclass(frozen=True)
class Composites:
    images: np.ndarray  # (n, canvas, canvas) uint8
    targets: np.ndarray  # (n, 10) uint8 multi-hot
    classes: np.ndarray  # (n, k) int8, back to front
    sources: np.ndarray  # (n, k) int32 index into the source digits, back to front
    positions: np.ndarray  # (n, k, 2) int16 top-left (row, col) of each 28×28 digit box

    def digit_strings(self) -> np.ndarray:
        """The present classes of each image as sorted text, e.g. ``"136"``."""
        present = np.sort(self.classes, axis=1).astype(np.uint8) + ord("0")
        return present.view(f"S{present.shape[1]}").ravel().astype(str)


def compose(
    digits: np.ndarray,
    labels: np.ndarray,
    n: int,
    canvas: int,
    k: int,
    rng: np.random.Generator,
    outline: bool = False,
) -> Composites:
    """Draw ``n`` composites from the given source digits (one split's pool).

    For each image: ``k`` distinct classes in random depth order, one random instance of each,
    each placed uniformly at random with its whole 28×28 box inside the canvas. A nearer digit
    replaces every pixel beneath its stroke (pixels > 0); with ``outline`` a one-pixel dark ring
    around the stroke is cleared too, so occluded strokes do not merge into the occluder.
    """
    if canvas < SIDE:
        raise ValueError(f"canvas must be at least {SIDE} pixels, got {canvas}")
    by_class = [np.flatnonzero(labels == c) for c in range(N_CLASSES)]
    counts = np.array([len(idx) for idx in by_class])
    if (counts == 0).any():
        raise ValueError(f"every class needs source digits; missing {np.flatnonzero(counts == 0)}")
    table = np.concatenate(by_class)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    classes = np.argsort(rng.random((n, N_CLASSES)), axis=1)[:, :k]
    picks = (rng.random((n, k)) * counts[classes]).astype(np.int64)
    sources = table[starts[classes] + picks]
    positions = rng.integers(0, canvas - SIDE + 1, size=(n, k, 2))

    images = np.zeros((n, canvas, canvas), dtype=np.uint8)
    strokes = digits > 0
    masks = _dilate(strokes) if outline else strokes
    for lo in range(0, n, _CHUNK):
        part = slice(lo, min(lo + _CHUNK, n))
        _paint(images[part], digits, strokes, masks, sources[part], positions[part])

    targets = np.zeros((n, N_CLASSES), dtype=np.uint8)
    np.put_along_axis(targets, classes, 1, axis=1)
    return Composites(
        images=images,
        targets=targets,
        classes=classes.astype(np.int8),
        sources=sources.astype(np.int32),
        positions=positions.astype(np.int16),
    )


def _paint(images, digits, strokes, masks, sources, positions) -> None:
    """Paste each depth layer back to front, in place."""
    offsets = np.arange(SIDE)
    rows_of = np.arange(len(images))[:, None, None]
    for layer in range(sources.shape[1]):
        rows = (positions[:, layer, 0, None] + offsets)[:, :, None]
        cols = (positions[:, layer, 1, None] + offsets)[:, None, :]
        src = sources[:, layer]
        window = images[rows_of, rows, cols]
        # Pixels under the mask but off the stroke are the outline: cleared to background.
        painted = np.where(strokes[src], digits[src], 0)
        images[rows_of, rows, cols] = np.where(masks[src], painted, window)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Grow each 28×28 mask by one pixel in all eight directions."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    grown = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            grown |= padded[:, dr : dr + SIDE, dc : dc + SIDE]
    return grown
