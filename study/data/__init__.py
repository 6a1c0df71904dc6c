"""Source digits, the composite-image generator and the cached three-split dataset."""

from study.data.dataset import SPLITS, Dataset, build

__all__ = ["SPLITS", "Dataset", "build"]
