"""Composite images: K digits of K different classes on one canvas, nearer ones occluding.

Each digit may be scaled, rotated and coloured (``Variant``), and chosen digit combinations or
digit–colour pairs may be withheld. Everything is vectorised over images (warps with
``torch.nn.functional.grid_sample``); the only Python loops run over the K depth layers.

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
import torch
import torch.nn.functional as F

from study.data.source import SIDE
from study.sections import PALETTE, Variant

N_CLASSES = 10
COLOURS = list(PALETTE)
_RGB = np.array([PALETTE[c] for c in COLOURS] + [(255, 255, 255)], dtype=np.uint8)  # last: white
UNCHANGED = Variant()  # upright, unscaled, white digits
_CHUNK = 8192  # images composed at once: bounds the index arrays to a few hundred MB


@dataclass(frozen=True)
class Composites:
    images: np.ndarray  # (n, canvas, canvas) uint8, or (n, 3, canvas, canvas) in colour
    targets: np.ndarray  # (n, 10) uint8 multi-hot
    classes: np.ndarray  # (n, k) int8, back to front
    sources: np.ndarray  # (n, k) int32 index into the source digits, back to front
    positions: np.ndarray  # (n, k, 2) int16 top-left (row, col) of each digit's box
    scales: np.ndarray  # (n, k) float32
    angles: np.ndarray  # (n, k) float32, degrees
    colours: np.ndarray  # (n, k) int8 index into COLOURS, −1 for white
    hidden: np.ndarray  # (n, k) float32: fraction of each digit's stroke covered by nearer digits
    withheld: np.ndarray  # (n,) bool: holds a withheld combination or digit–colour pair

    def digit_strings(self) -> np.ndarray:
        """The present classes of each image as sorted text, e.g. ``"136"``."""
        present = np.sort(self.classes, axis=1).astype(np.uint8) + ord("0")
        return present.view(f"S{present.shape[1]}").ravel().astype(str)

    def colour_strings(self) -> np.ndarray:
        """Each digit's colour in digit order, e.g. ``"1=red 3=blue 6=cyan"`` ('' without colour)."""
        if (self.colours < 0).all():
            return np.full(len(self.classes), "", dtype=object)
        order = np.argsort(self.classes, axis=1)
        classes = np.take_along_axis(self.classes, order, 1)
        colours = np.take_along_axis(self.colours, order, 1)
        names = np.array([*COLOURS, "white"], dtype=object)[colours]
        return np.array([" ".join(f"{c}={n}" for c, n in zip(cs, ns, strict=True))
                         for cs, ns in zip(classes, names, strict=True)], dtype=object)


def compose(
    digits: np.ndarray,
    labels: np.ndarray,
    n: int,
    canvas: int,
    k: int,
    rng: np.random.Generator,
    outline: bool = False,
    threshold: int = 1,
    variant: Variant = UNCHANGED,
    channels: int = 1,
    withheld: list[list[int]] = (),
    withheld_colours: list[tuple[int, str]] = (),
    avoid_withheld: bool = False,
) -> Composites:
    """Draw ``n`` composites from the given source digits (one split's pool).

    For each image: ``k`` distinct classes in random depth order, one random instance of each,
    scaled and rotated uniformly within ``variant``'s ranges inside a square box of side
    ceil(28 × largest scale), each box placed uniformly at random wholly inside the canvas. A
    nearer digit replaces every pixel where its own value reaches ``threshold`` (1: wherever it
    has ink); its fainter pixels hide nothing, the brighter of the two values shows there. With
    ``outline`` a one-pixel dark ring around the replacing pixels is cleared too. With
    ``avoid_withheld`` (training and validation) no image holds all digits of a ``withheld`` set
    or a withheld digit–colour pair; otherwise such images occur by chance and are marked
    ``withheld``.
    """
    if canvas < SIDE:
        raise ValueError(f"canvas must be at least {SIDE} pixels, got {canvas}")
    by_class = [np.flatnonzero(labels == c) for c in range(N_CLASSES)]
    counts = np.array([len(idx) for idx in by_class])
    if (counts == 0).any():
        raise ValueError(f"every class needs source digits; missing {np.flatnonzero(counts == 0)}")
    table = np.concatenate(by_class)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def draw_classes(m: int) -> np.ndarray:
        return np.argsort(rng.random((m, N_CLASSES)), axis=1)[:, :k]

    def draw_colours(m: int) -> np.ndarray:
        return rng.integers(0, len(COLOURS), (m, k)) if variant.colour else np.full((m, k), -1)

    classes, colours = draw_classes(n), draw_colours(n)
    pairs = [(d, COLOURS.index(c)) for d, c in withheld_colours]
    if avoid_withheld:
        for _ in range(1000):
            bad = _holds(classes, withheld)
            if not bad.any():
                break
            classes[bad] = draw_classes(int(bad.sum()))
        else:
            raise ValueError(f"cannot draw {k} digits avoiding withheld {withheld}")
        # A withheld digit–colour pair gets another colour, never other digits: redrawing the
        # image would make the withheld digits rarer in training than in the test split.
        for _ in range(1000):
            bad = _pair_mask(classes, colours, pairs)
            if not bad.any():
                break
            colours[bad] = rng.integers(0, len(COLOURS), int(bad.sum()))
        else:
            raise ValueError(f"cannot colour digits avoiding withheld {withheld_colours}")
    marked = _holds(classes, withheld) | _holds_pair(classes, colours, pairs)

    picks = (rng.random((n, k)) * counts[classes]).astype(np.int64)
    sources = table[starts[classes] + picks]
    scales = rng.uniform(*variant.scale, size=(n, k)).astype(np.float32)
    angles = rng.uniform(*variant.rotation, size=(n, k)).astype(np.float32)
    box = variant.box()
    positions = rng.integers(0, canvas - box + 1, size=(n, k, 2))

    intensity = np.zeros((n, canvas, canvas), dtype=np.uint8)
    owner = np.full((n, canvas, canvas), -1, dtype=np.int8)
    hidden = np.zeros((n, k), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        part = slice(lo, min(lo + _CHUNK, n))
        patches = _warp(digits, sources[part], scales[part], angles[part], box)
        hidden[part] = _paint(intensity[part], owner[part], patches, positions[part], outline, threshold)

    images = intensity if channels == 1 else _colourise(intensity, owner, colours)
    targets = np.zeros((n, N_CLASSES), dtype=np.uint8)
    np.put_along_axis(targets, classes, 1, axis=1)
    return Composites(
        images=images, targets=targets, classes=classes.astype(np.int8), sources=sources.astype(np.int32),
        positions=positions.astype(np.int16), scales=scales, angles=angles,
        colours=colours.astype(np.int8), hidden=hidden, withheld=marked,
    )


def _holds(classes: np.ndarray, combinations: list[list[int]]) -> np.ndarray:
    """Rows whose classes include every digit of at least one combination."""
    present = np.zeros((len(classes), N_CLASSES), dtype=bool)
    np.put_along_axis(present, classes, True, axis=1)
    found = np.zeros(len(classes), dtype=bool)
    for combination in combinations:
        found |= present[:, combination].all(1)
    return found


def _pair_mask(classes: np.ndarray, colours: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """(n, k): the digits drawn in a withheld colour for them."""
    found = np.zeros(classes.shape, dtype=bool)
    for digit, colour in pairs:
        found |= (classes == digit) & (colours == colour)
    return found


def _holds_pair(classes: np.ndarray, colours: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Rows with a digit drawn in a withheld colour for it."""
    return _pair_mask(classes, colours, pairs).any(1)


def _warp(digits, sources, scales, angles, box: int) -> np.ndarray:
    """Each chosen digit scaled and rotated about its centre into a box×box patch (m, k, box, box)."""
    m, k = sources.shape
    src = digits[sources.ravel()]
    if box == SIDE and (scales == 1).all() and not angles.any():  # nothing to warp
        return src.reshape(m, k, SIDE, SIDE)
    theta = np.radians(angles.ravel().astype(np.float64))
    # Output coordinates (normalised to the box) → input coordinates (normalised to 28 pixels).
    factor = box / (SIDE * scales.ravel().astype(np.float64))
    cos, sin = np.cos(theta) * factor, np.sin(theta) * factor
    affine = np.zeros((m * k, 2, 3))
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 1, 0], affine[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(torch.from_numpy(affine).float(), [m * k, 1, box, box], align_corners=False)
    image = torch.from_numpy(src).unsqueeze(1).float()
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round().clamp_(0, 255).to(torch.uint8).numpy().reshape(m, k, box, box)


def _paint(intensity, owner, patches, positions, outline: bool, threshold: int) -> np.ndarray:
    """Paste each depth layer back to front, in place; return each digit's hidden fraction."""
    n, k, box, _ = patches.shape
    side = intensity.shape[-1]
    flat_intensity, flat_owner = intensity.reshape(-1), owner.reshape(-1)  # views: writes land
    offsets = np.arange(box)
    image_start = (np.arange(n) * side * side)[:, None, None]
    strokes = patches > 0
    opaque = patches >= threshold
    masks = _dilate(opaque.reshape(n * k, box, box)).reshape(opaque.shape) if outline else opaque
    windows = []
    for layer in range(k):
        rows = (positions[:, layer, 0, None] + offsets)[:, :, None]
        cols = (positions[:, layer, 1, None] + offsets)[:, None, :]
        window = image_start + rows * side + cols  # flat indices of the digit's box
        windows.append(window)
        patch, below = patches[:, layer], flat_intensity[window]
        # Under the mask the digit replaces what is behind (its outline ring clears to 0, since
        # the patch is 0 there); elsewhere its faint ink shows only where it is the brighter.
        shows = masks[:, layer] | (patch > below)
        flat_intensity[window] = np.where(shows, patch, below)
        flat_owner[window] = np.where(shows, layer, flat_owner[window])
    hidden = np.zeros((n, k), dtype=np.float32)
    for layer, window in enumerate(windows):
        stroke = strokes[:, layer]
        covered = (stroke & (flat_owner[window] != layer)).sum((1, 2))
        hidden[:, layer] = covered / np.maximum(stroke.sum((1, 2)), 1)
    return hidden


def _colourise(intensity: np.ndarray, owner: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(n, 3, H, W) RGB: each pixel's intensity in the colour of the digit that owns it."""
    white = len(COLOURS)
    colour_of_pixel = np.full(owner.shape, white, dtype=np.int8)
    for layer in range(colours.shape[1]):
        layer_colour = np.where(colours[:, layer] < 0, white, colours[:, layer]).astype(np.int8)
        colour_of_pixel = np.where(owner == layer, layer_colour[:, None, None], colour_of_pixel)
    out = np.empty((len(owner), 3, *owner.shape[1:]), dtype=np.uint8)
    for channel in range(3):
        on = _RGB[:, channel] > 0  # palette channels are fully on or off
        out[:, channel] = np.where(on[colour_of_pixel], intensity, 0)
    return out


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Grow each square mask (m, side, side) by one pixel in all eight directions."""
    side = mask.shape[-1]
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    grown = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            grown |= padded[:, dr : dr + side, dc : dc + side]
    return grown
