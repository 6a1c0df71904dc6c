import numpy as np
import pytest

from study.files import atomic_write


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def broken(tmp):
        tmp.write_text("half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "trials.parquet", broken)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_replaced_whole_and_a_failed_one_keeps_the_old(tmp_path):
    def fill(text):
        def write(folder):
            folder.mkdir()
            (folder / "report.md").write_text(text)
            if text == "broken":
                raise RuntimeError("figure failed")
        return write

    atomic_write(tmp_path / "report", fill("first"))
    atomic_write(tmp_path / "report", fill("second"))
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "report", fill("broken"))
    assert (tmp_path / "report" / "report.md").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_writers_that_add_a_suffix_land_where_asked(tmp_path):
    # np.savez appends .npz unless the name already ends with it.
    atomic_write(tmp_path / "data.npz", lambda tmp: np.savez(tmp, a=np.arange(3)))
    assert [p.name for p in tmp_path.iterdir()] == ["data.npz"]
    with np.load(tmp_path / "data.npz") as stored:
        assert stored["a"].tolist() == [0, 1, 2]
