"""Dataset generation and cache-load time for the 86,000-image dataset, plain and with every
variant on (scale 0.7-1.3, rotation ±45°, colour, withheld combinations and colours).

Prints seconds to generate, to load from the cache, and ratios against the plain generation.
Usage: python bench/dataset.py [--n-images 86000]
"""

import argparse
import os
import tempfile

from study.data import build
from study.sections import DataConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-images", type=int, default=86_000)
    args = parser.parse_args()
    plain = DataConfig(n_images=args.n_images)
    variants = DataConfig(n_images=args.n_images, withheld=[[0, 1], [2, 3]],
                          train={"scale": [0.7, 1.3], "rotation": [-45, 45], "colour": True},
                          withheld_colours=[[3, "red"], [5, "blue"]])
    print(f"{args.n_images:,} images, canvas {plain.canvas}, {plain.digits} digits, {os.cpu_count()} cores")
    baseline = None
    for name, config in (("plain", plain), ("all variants", variants)):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["STUDY_CACHE"] = cache
            generated = build(config)
            loaded = build(config)
        assert not generated.cached and loaded.cached
        baseline = baseline or generated.seconds
        print(f"{name:>12}: generate+cache {generated.seconds:6.2f} s "
              f"({args.n_images / generated.seconds:,.0f} img/s, {generated.seconds / baseline:.1f}x plain); "
              f"load {loaded.seconds:5.2f} s ({generated.seconds / loaded.seconds:.1f}x faster)")


if __name__ == "__main__":
    main()
