"""Dataset variants: withheld combinations and colours, scale, rotation, colour, full MNIST."""

import gzip
import socket

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from study.cli import app
from study.data import build, preview, source
from study.data.compose import COLOURS, compose
from study.errors import UserError
from study.sections import PALETTE, DataConfig, Variant

from ..conftest import ROOT

DIGITS = source.embedded()


def test_withheld_combinations_never_train_and_do_occur_in_test():
    data = build(DataConfig(n_images=3000, withheld=[[0, 1], [2, 3, 4]]), use_cache=False)
    for split in ("train", "val", "test"):
        c = data[split]
        present = c.targets.astype(bool)
        holds = (present[:, [0, 1]].all(1)) | (present[:, [2, 3, 4]].all(1))
        assert (holds == c.withheld).all()
        assert holds.any() == (split == "test"), split


def test_withheld_digit_colour_pairs_never_train():
    config = DataConfig(n_images=3000, train={"colour": True}, withheld_colours=[(3, "red"), (5, "blue")])
    data = build(config, use_cache=False)
    for split in ("train", "val", "test"):
        c = data[split]
        pairs = ((c.classes == 3) & (c.colours == COLOURS.index("red"))) | \
            ((c.classes == 5) & (c.colours == COLOURS.index("blue")))
        assert pairs.any(1).any() == (split == "test") and (pairs.any(1) == c.withheld).all()


def extent(image: np.ndarray) -> int:
    rows = np.flatnonzero(image.max(axis=1) > 0)
    return rows[-1] - rows[0] + 1


def test_scales_fall_in_range_measured_from_the_drawn_digits():
    rng = np.random.default_rng(0)
    c = compose(DIGITS.images, DIGITS.labels, 200, 56, 1, rng, variant=Variant(scale=(0.6, 1.4)))
    assert c.scales.min() >= 0.6 and c.scales.max() <= 1.4
    for image, src, scale in zip(c.images, c.sources[:, 0], c.scales[:, 0], strict=True):
        # Bilinear resampling may light one extra pixel at each end.
        assert abs(extent(image) - scale * extent(DIGITS.images[src])) <= 2.5


def test_rotation_turns_the_drawn_digit():
    rng = np.random.default_rng(0)
    c = compose(DIGITS.images, DIGITS.labels, 50, 28, 1, rng, variant=Variant(rotation=(90, 90)))
    for image, src in zip(c.images, c.sources[:, 0], strict=True):
        original = DIGITS.images[src].astype(float)
        turned = [np.corrcoef(image.ravel(), np.rot90(original, k).ravel())[0, 1] for k in (1, 3)]
        assert max(turned) > 0.95
    angles = compose(DIGITS.images, DIGITS.labels, 500, 48, 3, rng,
                     variant=Variant(rotation=(-30, 45))).angles
    assert -30 <= angles.min() < -25 and 40 < angles.max() <= 45


def test_colour_channels_carry_only_the_assigned_colour():
    rng = np.random.default_rng(0)
    c = compose(DIGITS.images, DIGITS.labels, 100, 48, 1, rng, variant=Variant(colour=True), channels=3)
    assert c.images.shape == (100, 3, 48, 48)
    for image, colour in zip(c.images, c.colours[:, 0], strict=True):
        on = np.array(PALETTE[COLOURS[colour]]) > 0
        strength = image.max(axis=(1, 2))
        assert (strength[~on] == 0).all() and (strength[on] > 0).all()
        assert (image[on] == image[on][0]).all()  # the lit channels carry the same intensity


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_full_mnist_reads_idx_files_in_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28))
    labels = np.arange(40) % 10
    write_idx(raw / "train-images-idx3-ubyte", images[:30])
    write_idx(raw / "train-labels-idx1-ubyte.gz", labels[:30])
    write_idx(raw / "t10k-images-idx3-ubyte.gz", images[30:])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[30:])
    digits = source.load(DataConfig(source="mnist", root=str(tmp_path)))
    assert (digits.images == images).all() and (digits.labels == labels).all()

    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte is not a readable IDX file"):
        source.mnist(tmp_path)
    with pytest.raises(UserError, match=r"expected .*MNIST/raw/train-images-idx3-ubyte.*--download"):
        source.mnist(tmp_path / "elsewhere")


def test_a_missing_mnist_folder_stops_the_cli_with_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["data", "preview", str(ROOT / "searchspaces" / "smoke.yaml"),
                                      "--set", "data.source=mnist", "--set", f"data.root={tmp_path}",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--download" in result.output
    assert not (tmp_path / "out").exists()


def test_a_preview_folder_that_cannot_be_written_is_one_message_before_any_dataset_is_built(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "file" / "preview"
    result = CliRunner().invoke(app, ["data", "preview", str(ROOT / "searchspaces" / "smoke.yaml"),
                                      "--out", str(out)])
    assert result.exit_code == 2 and result.output == (
        f"error: --out {out}: cannot write there ({tmp_path / 'file'} is a file); give --out naming a "
        "folder you can write\n"), result.output


def test_a_download_that_fails_is_one_message_and_leaves_no_folder(tmp_path, monkeypatch):
    """torchvision's own download, from a mirror on this machine that refuses the connection:
    one line with the way on, exit 2, and none of the folders it made for the files left."""
    datasets = pytest.importorskip("torchvision.datasets")  # the test extra installs it
    with socket.socket() as closed:  # a port nothing listens on once the socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    root = tmp_path / "mnist"
    result = CliRunner().invoke(app, ["data", "preview", str(ROOT / "searchspaces" / "smoke.yaml"),
                                      "--set", "data.source=mnist", "--set", f"data.root={root}",
                                      "--out", str(tmp_path / "out"), "--download"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --download: could not fetch MNIST into ") and \
        result.output.count("\n") == 1, result.output
    assert "Connection refused" in result.output and f"into {root / 'MNIST' / 'raw'} and run " \
        "without --download" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_preview_writes_a_grid_per_split_and_statistics(tmp_path):
    result = CliRunner().invoke(app, ["data", "preview", str(ROOT / "searchspaces" / "data-withheld.yaml"),
                                      "--set", "data.n_images=600", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for split in ("train", "val", "test"):
        assert (tmp_path / f"{split}.png").read_bytes()[:4] == b"\x89PNG"
    assert "withheld" in result.output and (tmp_path / "statistics.csv").exists()


@pytest.mark.slow
def test_withholding_colour_pairs_keeps_every_digit_as_frequent_in_training_as_in_test():
    # Five withheld pairs: redrawing whole images made digits 0-4 rarer in training (28 % vs 32 %).
    pairs = [(0, "red"), (1, "green"), (2, "blue"), (3, "yellow"), (4, "magenta")]
    data = build(DataConfig(n_images=20000, train={"colour": True}, withheld_colours=pairs), use_cache=False)
    train = data["train"]
    shares = train.targets.mean(0)  # 3 of 10 digits per image: 0.3 each
    assert np.abs(shares - 0.3).max() < 4 * np.sqrt(0.3 * 0.7 / len(train.targets))
    for digit, colour in pairs:  # the withheld digit takes the other five colours evenly
        drawn = np.bincount(train.colours[train.classes == digit], minlength=len(COLOURS))
        assert drawn[COLOURS.index(colour)] == 0
        others = np.delete(drawn, COLOURS.index(colour))
        assert stats.chisquare(others).pvalue > 1e-3


@pytest.mark.slow
def test_preview_flags_a_digit_that_withholding_made_rarer_in_training(tmp_path):
    config = DataConfig(n_images=3000, withheld=[[0, d] for d in range(1, 7)])
    flags = preview.imbalances(build(config, use_cache=False))  # 0 rarer, so the others more frequent
    assert flags[0].startswith("digit 0 is in") and "of training images but" in flags[0]
    assert preview.imbalances(build(DataConfig(n_images=3000, withheld=[[0, 1]]), use_cache=False)) == []
    space = str(ROOT / "searchspaces" / "data-withheld.yaml")
    result = CliRunner().invoke(app, ["data", "preview", space, "--set", "data.n_images=3000",
                                      "--set", f"data.withheld={[[0, d] for d in range(1, 7)]}",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: digit 0 is in" in result.output and "also measures class frequency" in result.output
