"""The three-split dataset of a study, built from source pools and cached under a fingerprint.

The source digits are split into train / validation / test pools first (stratified, same ratio),
so no handwritten instance appears in two splits; each split's composites are drawn from its own
pool. The fingerprint hashes the data config, the generator version and the source digits: two
trials whose fingerprints match saw the same images in the same order, so they can be paired.

Example:
    >>> from study.sections import DataConfig
    >>> ds = build(DataConfig(n_images=1000), use_cache=False)
    >>> [len(s.images) for s in ds.splits.values()]
    [800, 100, 100]
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.cache import cache_dir
from study.data import source
from study.data.compose import Composites, compose
from study.files import atomic_write
from study.sections import DataConfig

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
# Bump when the generator's output for a given config changes: old caches stop matching.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class Dataset:
    splits: dict[str, Composites]
    fingerprint: str
    seconds: float  # time to build or load
    cached: bool  # loaded from the cache rather than generated
    source: str  # the source digits and how many each split draws on, in words (``source_in_words``)

    def __getitem__(self, split: str) -> Composites:
        return self.splits[split]


def split_sizes(n_images: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Images per split; the test split takes the rounding remainder (86,000 → 68,800/8,600/8,600)."""
    n_train, n_val = (round(n_images * f) for f in fractions[:2])
    return n_train, n_val, n_images - n_train - n_val


def pools(labels: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator):
    """Disjoint index arrays into the source digits, stratified by class."""
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        sizes = split_sizes(len(members), fractions)
        for part, chunk in zip(parts, np.split(members, np.cumsum(sizes)[:-1]), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def source_in_words(config: DataConfig, digits: source.Digits) -> str:
    """The source digits in words, with the distinct handwritten digits each split draws on.

    The original drew on all 70,000 MNIST digits; the embedded 5,000 make a reduced-source
    variant, in which every handwritten instance recurs in dozens of composites.
    """
    per_class = np.bincount(digits.labels, minlength=10)
    per_split = np.sum([split_sizes(int(n), config.split) for n in per_class], axis=0)
    drawn = "/".join(f"{int(n):,}" for n in per_split)
    name = (f"full MNIST ({len(digits.labels):,} digits from {config.root})" if config.source == "mnist"
            else f"embedded MNIST subset ({len(digits.labels):,} digits; a reduced-source variant of "
                 "the original, which drew on all 70,000)")
    return f"{name}; train/val/test draw on {drawn} distinct handwritten digits"


def fingerprint(config: DataConfig, digits: source.Digits) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    h.update(f"generator={GENERATOR_VERSION}".encode())
    h.update(digits.images.tobytes())
    h.update(digits.labels.tobytes())
    return h.hexdigest()[:16]


def generate(config: DataConfig, digits: source.Digits) -> dict[str, Composites]:
    """All three splits, deterministic in ``config`` (``seed`` included)."""
    pool_seed, *split_seeds = np.random.SeedSequence(config.seed).spawn(1 + len(SPLITS))
    index = pools(digits.labels, config.split, np.random.default_rng(pool_seed))
    splits = {}
    sizes = split_sizes(config.n_images, config.split)
    for name, pool, n, seed in zip(SPLITS, index, sizes, split_seeds, strict=True):
        made = compose(digits.images[pool], digits.labels[pool], n, config.canvas, config.digits,
                       np.random.default_rng(seed), outline=config.outline,
                       threshold=config.occlusion_threshold,
                       variant=config.test_variant if name == "test" else config.train,
                       channels=config.channels(), withheld=config.withheld,
                       withheld_colours=config.withheld_colours, avoid_withheld=name != "test")
        # Report sources as indices into the full source set, so pools can be checked.
        splits[name] = Composites(**{**made.__dict__, "sources": pool[made.sources].astype(np.int32)})
    return splits


def sample(config: DataConfig, n: int) -> Composites:
    """At least ``n`` images made as ``config``'s training split is (not its own), not cached:
    what a training step is timed on, since its time depends on the images (AttConv's CPU
    kernel leaves windows of zeros out).

    Example:
        >>> from study.sections import DataConfig
        >>> len(sample(DataConfig(source="embedded", n_images=86_000), 64).images) >= 64
        True
    """
    wanted = max(n, 1) / config.split[0]
    return generate(config.model_copy(update={"n_images": int(wanted) + 3}), source.load(config))["train"]


def build(config: DataConfig, use_cache: bool = True) -> Dataset:
    """The dataset for ``config``: loaded from the cache when there, else generated and cached."""
    start = time.perf_counter()
    digits = source.load(config)
    key = fingerprint(config, digits)
    path = cache_dir() / "data" / f"{key}.npz"
    if use_cache and path.exists():
        with np.load(path) as stored:
            splits = {
                name: Composites(**{f: stored[f"{name}/{f}"] for f in Composites.__dataclass_fields__})
                for name in SPLITS
            }
        return Dataset(splits, key, time.perf_counter() - start, True, source_in_words(config, digits))
    splits = generate(config, digits)
    if use_cache:
        try:
            _save(path, splits)
        except OSError as err:  # the cache only saves time: a disk or quota filled since the start costs that
            log.warning("the dataset could not be cached in %s (%s); each process that needs it generates "
                        "it again", path.parent, err.strerror or err)
    return Dataset(splits, key, time.perf_counter() - start, False, source_in_words(config, digits))


def _save(path: Path, splits: dict[str, Composites]) -> None:
    arrays = {f"{name}/{f}": v for name, c in splits.items() for f, v in c.__dict__.items()}
    # Concurrent trials may build the same dataset: each writes its own file, the rename is atomic.
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
