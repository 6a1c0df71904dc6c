"""Dataset generation and cache-load time for the default 86,000-image dataset.

Prints seconds to generate (vectorised numpy), to load from the cache, and the ratio.
Usage: python bench/dataset.py [--n-images 86000]
"""

import argparse
import os
import tempfile

from study.config import DataConfig
from study.data import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-images", type=int, default=86_000)
    args = parser.parse_args()
    config = DataConfig(n_images=args.n_images)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["STUDY_CACHE"] = cache
        generated = build(config)
        loaded = build(config)
    assert not generated.cached and loaded.cached
    print(f"{args.n_images:,} images, canvas {config.canvas}, {config.digits} digits, "
          f"{os.cpu_count()} cores")
    print(f"generate+cache {generated.seconds:6.2f} s ({args.n_images / generated.seconds:,.0f} img/s)")
    print(f"load from cache {loaded.seconds:6.2f} s (ratio {generated.seconds / loaded.seconds:.1f}x)")


if __name__ == "__main__":
    main()
