import numpy as np
import pytest

from study.data import build
from study.data.dataset import fingerprint, sample, split_sizes
from study.data.source import embedded
from study.sections import DataConfig


def test_split_sizes_follow_the_ratio():
    assert split_sizes(86_000, (0.8, 0.1, 0.1)) == (68_800, 8_600, 8_600)
    assert sum(split_sizes(1_001, (0.7, 0.2, 0.1))) == 1_001


def test_splits_draw_from_disjoint_stratified_source_pools():
    ds = build(DataConfig(n_images=3000))
    labels = embedded().labels
    used = {name: set(np.unique(split.sources).tolist()) for name, split in ds.splits.items()}
    assert not used["train"] & used["val"] and not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    # 400/50/50 instances of each class per pool: every pool holds every class.
    for name in ("train", "val", "test"):
        assert set(labels[list(used[name])].tolist()) == set(range(10))
    assert [len(s.images) for s in ds.splits.values()] == [2400, 300, 300]


def test_build_is_deterministic_and_cached_under_a_fingerprint():
    config = DataConfig(n_images=600, seed=3)
    first = build(config)
    again = build(config)
    fresh = build(config, use_cache=False)
    assert again.cached and not fresh.cached and again.fingerprint == first.fingerprint
    for name in ("train", "val", "test"):
        assert again[name].images.tobytes() == fresh[name].images.tobytes()
        assert (again[name].targets == fresh[name].targets).all()


def test_a_dataset_that_cannot_be_cached_is_built_all_the_same_and_said(tmp_path, monkeypatch, caplog):
    """A cache filled (or made unwritable) after the run's start check: the dataset is generated,
    the same bytes as a cached one, and a warning says it was not kept."""
    config = DataConfig(n_images=300, seed=5)
    cached = build(config)
    monkeypatch.setenv("STUDY_CACHE", str(tmp_path))
    (tmp_path / "data").write_text("not a folder")
    built = build(config)
    assert not built.cached and built.fingerprint == cached.fingerprint
    assert all(np.array_equal(built.splits[s].images, cached.splits[s].images) for s in built.splits)
    assert "the dataset could not be cached in" in caplog.text and "generates it again" in caplog.text
    assert (tmp_path / "data").read_text() == "not a folder"


@pytest.mark.parametrize("config", [
    DataConfig(n_images=86_000),
    DataConfig(split=(0.1, 0.45, 0.45), canvas=64, digits=2, train={"colour": True}),
])
def test_a_sample_is_made_as_the_training_split_and_holds_what_was_asked(config):
    """What a step is timed on: at least the images asked for, of the study's canvas, digits and
    training variant (colour: three channels), mostly 0 as the study's own images are."""
    made = sample(config, 70)
    trained = build(config.model_copy(update={"n_images": 400})).splits["train"]
    assert len(made.images) >= 70
    assert made.images.shape[1:] == trained.images.shape[1:] and made.classes.shape[1] == config.digits
    assert abs((made.images == 0).mean() - (trained.images == 0).mean()) < 0.05


def test_fingerprint_changes_with_config_and_source():
    digits = embedded()
    base = fingerprint(DataConfig(), digits)
    assert fingerprint(DataConfig(seed=1), digits) != base
    assert fingerprint(DataConfig(canvas=56), digits) != base
    digits.images[0, 0, 0] ^= 1
    assert fingerprint(DataConfig(), digits) != base


def test_the_source_is_named_with_the_digits_each_split_draws_on():
    ds = build(DataConfig(n_images=300))
    # 500 embedded digits per class, split 8:1:1 within each class.
    assert "reduced-source variant" in ds.source and "4,000/500/500 distinct" in ds.source
    assert build(DataConfig(n_images=300, split=(0.6, 0.2, 0.2))).source.endswith(
        "3,000/1,000/1,000 distinct handwritten digits")


def test_a_moved_embedded_file_is_a_message_naming_what_to_install(monkeypatch):
    from study.data import source
    from study.errors import UserError

    monkeypatch.setattr(source, "EMBEDDED", "data/data/mnist_5k_moved.csv.gz")
    with pytest.raises(UserError, match=r"has no data/data/mnist_5k_moved.csv.gz.*data.source: mnist"):
        source.embedded()
