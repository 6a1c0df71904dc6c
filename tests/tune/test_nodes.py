"""What each node of a cluster must offer a study's trials before any starts: its cache."""

import os

from study import cache
from study.tune.nodes import cache_problem


def test_a_relative_cache_is_made_absolute_for_the_workers_this_driver_starts(tmp_path, monkeypatch):
    """Ray Tune runs each trial in a folder of its own: a relative STUDY_CACHE, as the driver's
    workers inherit it, must already name the driver's folder, or each trial builds its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDY_CACHE", "relative/cache")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "relative/inductor")  # a user's, for compiled trials
    assert cache.check_writable() == tmp_path / "relative" / "cache"
    assert os.environ["STUDY_CACHE"] == str(tmp_path / "relative" / "cache")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "relative" / "inductor")
    assert (tmp_path / "relative" / "cache").is_dir()


def test_a_node_whose_trials_could_not_share_one_cache_is_named_with_the_fix(tmp_path, monkeypatch):
    """As a node's own workers see their environment (set by its `ray start`, which the driver does
    not reach): a relative STUDY_CACHE, or one that cannot be written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDY_CACHE", "cache")
    assert cache_problem() == ("STUDY_CACHE=cache is a relative path: Ray Tune runs each trial in a "
                               "folder of its own, so each would build a cache of its own there; give "
                               "an absolute path")
    assert not (tmp_path / "cache").exists()
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("STUDY_CACHE", str(tmp_path / "file" / "cache"))
    assert cache_problem().startswith(f"STUDY_CACHE={tmp_path / 'file' / 'cache'}: cannot write there")
    monkeypatch.setenv("STUDY_CACHE", str(tmp_path / "good"))
    assert cache_problem() is None and (tmp_path / "good").is_dir()
