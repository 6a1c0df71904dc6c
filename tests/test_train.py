import numpy as np
import pytest
import torch

from study import config
from study.models import LeNet
from study.train import _on, as_inputs, evaluate, fit

from .conftest import SMOKE


@pytest.fixture(scope="module")
def run():
    study = config.load(SMOKE, ["data.n_images=400", "train.epochs=4", "train.lr=0.01",
                                "model.attention.layers=[]"])
    reports = []
    return study, fit(study, seed=0, report=reports.append), reports


def test_reports_once_per_epoch_with_the_best_so_far(run):
    _, result, reports = run
    assert [r["epoch"] for r in reports] == [0, 1, 2, 3]
    val = [r["val_loss"] for r in reports]
    assert [r["best_val_loss"] for r in reports] == list(np.minimum.accumulate(val))


def test_keeps_the_epoch_with_the_best_validation_loss(run):
    study, result, _ = run
    val = [e["val_loss"] for e in result.epochs]
    assert result.best_epoch == int(np.argmin(val)) and result.best_val_loss == min(val)
    # The kept weights are that epoch's: they reproduce its validation loss exactly.
    model = LeNet(study.model, study.data.canvas)
    model.load_state_dict(result.best_state)
    val_split = result.dataset["val"]
    losses, _ = evaluate(model, _on(torch.device("cpu"), val_split.images),
                         _on(torch.device("cpu"), val_split.targets, torch.float32))
    assert losses.mean().item() == pytest.approx(result.best_val_loss, rel=1e-6)


def test_per_sample_test_results_come_from_the_best_weights(run):
    study, result, _ = run
    model = LeNet(study.model, study.data.canvas)
    model.load_state_dict(result.best_state)
    model.eval()
    test = result.dataset["test"]
    with torch.no_grad():
        logits = model(as_inputs(torch.from_numpy(test.images)))
    np.testing.assert_allclose(result.test_logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    target = torch.from_numpy(test.targets).float()
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    np.testing.assert_allclose(result.test_loss, per_sample.mean(1).numpy(), rtol=1e-5)
    exact = ((logits > 0) == target.bool()).all(1).numpy()
    assert (result.test_correct == exact).all() and len(result.test_loss) == 40


def test_same_seed_same_training(run):
    study, result, _ = run
    again = fit(study, seed=0)
    assert [e["train_loss"] for e in again.epochs] == [e["train_loss"] for e in result.epochs]
    other = fit(study, seed=1)
    assert [e["train_loss"] for e in other.epochs] != [e["train_loss"] for e in result.epochs]
