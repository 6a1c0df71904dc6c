"""The figures read result files they did not write with care: weights load as tensors only."""

import types

import pytest
import torch

from study import figures, loading, results
from study.train import fit

from .conftest import SMOKE


class _Payload:
    """A pickle that, when loaded without ``weights_only``, would create a file: code run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_a_crafted_weights_file_is_not_loaded_and_runs_nothing(tmp_path):
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=1"])  # AttConv at conv1
    results.write_trial(tmp_path, "t", "tune", {"model.attention.layers": "[0]"}, fit(study, seeds=[0]))
    results.consolidate(tmp_path)
    results.write_study(tmp_path, study)
    marker = tmp_path / "code-ran"
    torch.save({"conv.0.weight": _Payload(str(marker))}, results.weights_path(tmp_path, "t", 0))
    analysis = types.SimpleNamespace(study=study)
    reason = figures.attention_maps(analysis, tmp_path, tmp_path / "attention.png")
    assert "holds more than tensors" in reason and "not loaded" in reason
    assert not marker.exists() and not (tmp_path / "attention.png").exists()
