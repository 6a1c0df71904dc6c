import numpy as np
import pytest
import torch

from study import loading
from study.models import LeNet
from study.results import trial_rows
from study.sections import TrainConfig
from study.train import Snapshot, as_images, as_inputs, conclude, failure, fit, make_optimizer

from .conftest import SMOKE

SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def run():
    study = loading.load(SMOKE, ["data.n_images=400", "train.epochs=4", "train.lr=0.01",
                                "model.attention.layers=[]"])
    reports, snapshots = [], []

    def report(metrics, snapshot):
        reports.append(metrics)
        snapshots.append(snapshot())

    return study, fit(study, seeds=SEEDS, report=report), reports, snapshots


def single(study, state):
    model = LeNet(study.model, study.data.canvas)
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.slow
def test_reports_once_per_epoch_with_the_means_over_seeds(run):
    _, result, reports, _ = run
    assert [r["epoch"] for r in reports] == [0, 1, 2, 3]
    for r in reports:
        val = [n.epochs[r["epoch"]]["val_loss"] for n in result.networks]
        assert r["val_loss"] == pytest.approx(np.mean(val))
        best = [min(e["val_loss"] for e in n.epochs[: r["epoch"] + 1]) for n in result.networks]
        assert r["best_val_loss"] == pytest.approx(np.mean(best))


@pytest.mark.slow
def test_a_trial_stopped_early_is_finished_as_a_trial_of_that_length_ends(run, tmp_path):
    """What a scheduler's stop after epoch 1 leaves (the snapshot, through a file as Ray keeps it)
    is tested exactly as a two-epoch trial of the same seeds: same history, best epochs and test
    losses, since both trained the same steps on the same device."""
    study, full, _, snapshots = run
    snapshots[1].save(tmp_path / "snapshot.pt")
    stopped = conclude(study, Snapshot.load(tmp_path / "snapshot.pt"), stopped="a scheduler stopped it")
    short = fit(loading.load(SMOKE, ["data.n_images=400", "train.epochs=2", "train.lr=0.01",
                                    "model.attention.layers=[]"]), seeds=SEEDS)
    assert [len(n.epochs) for n in full.networks] == [4, 4, 4]
    for a, b in zip(stopped.networks, short.networks, strict=True):
        assert [e["val_loss"] for e in a.epochs] == [e["val_loss"] for e in b.epochs]
        assert a.best_epoch == b.best_epoch < 2
        np.testing.assert_array_equal(a.test_loss, b.test_loss)
        for name, value in b.best_state.items():
            assert torch.equal(a.best_state[name], value), name
    rows = trial_rows("t", "tune", {}, stopped)
    assert {(r["status"], r["reason"]) for r in rows} == {("STOPPED", "a scheduler stopped it")}
    assert {r["status"] for r in trial_rows("t", "tune", {}, short)} == {"COMPLETED"}


def test_each_seed_keeps_the_epoch_with_its_own_best_validation_loss(run):
    study, result, *_ = run
    assert [n.seed for n in result.networks] == SEEDS
    for network in result.networks:
        val = [e["val_loss"] for e in network.epochs]
        assert network.best_epoch == int(np.argmin(val)) and network.best_val_loss == min(val)
        # The kept weights are that epoch's: alone, they reproduce its validation loss.
        split = result.dataset["val"]
        with torch.no_grad():
            logits = single(study, network.best_state)(as_inputs(as_images(split.images)))
        target = torch.from_numpy(split.targets).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        assert loss.item() == pytest.approx(network.best_val_loss, rel=1e-5)


def test_per_sample_test_results_come_from_each_seeds_best_weights(run):
    study, result, *_ = run
    test = result.dataset["test"]
    target = torch.from_numpy(test.targets).float()
    for network in result.networks:
        with torch.no_grad():
            logits = single(study, network.best_state)(as_inputs(as_images(test.images)))
        np.testing.assert_allclose(network.test_logits, logits.numpy(), rtol=1e-5, atol=1e-5)
        per_sample = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        np.testing.assert_allclose(network.test_loss, per_sample.mean(1).numpy(), rtol=1e-5)
        exact = ((logits > 0) == target.bool()).all(1).numpy()
        assert (network.test_correct == exact).all() and len(network.test_loss) == 40


def test_seeds_are_different_networks_with_their_own_batch_norm_buffers(run):
    _, result, *_ = run
    first, second = result.networks[0].best_state, result.networks[1].best_state
    assert not torch.equal(first["features.0.0.weight"], second["features.0.0.weight"])
    assert not torch.equal(first["features.0.1.running_mean"], second["features.0.1.running_mean"])
    assert result.networks[0].epochs[0]["train_loss"] != result.networks[1].epochs[0]["train_loss"]
    # Kept at each seed's own best epoch: updated once per step (320 training images / batch 32).
    assert all(int(n.best_state["features.0.1.num_batches_tracked"]) == 10 * (n.best_epoch + 1)
               for n in result.networks)


@pytest.mark.parametrize(("layers", "optimizer"), [("[]", "adam"), ("[0]", "adam"), ("[]", "adamw"),
                                                   ("[]", "sgd")])
@pytest.mark.slow
def test_seed_s_of_a_stacked_trial_is_the_one_seed_network_of_seed_s(layers, optimizer):
    """In float64 the stacked seeds and a one-seed run differ only by summation order (grouped
    vs single convolutions and matrix products, ~1e-16), which training amplifies little over
    two epochs: so 1e-8 catches any real difference (initialisation, batch order, statistics
    shared across seeds). In float32 the same rounding (~1e-7) is amplified by Adam on
    parameters whose gradient is mostly rounding noise (conv biases before batch norm): those
    drift by a few learning-rate steps, which is why this test runs in float64. Every optimiser
    acts element-wise, so the seeds stay independent under each."""
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=2", f"model.attention.layers={layers}",
                                f"train.optimizer={optimizer}", "train.weight_decay=0.01"])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        stacked, alone = fit(study, seeds=SEEDS), fit(study, seeds=[1])
    finally:
        torch.set_default_dtype(default)
    a, b = stacked.networks[1], alone.networks[0]
    assert a.seed == b.seed == 1 and a.best_epoch == b.best_epoch
    for name, value in a.best_state.items():
        torch.testing.assert_close(value, b.best_state[name], rtol=1e-8, atol=1e-8, msg=name)
    for mine, theirs in zip(a.epochs, b.epochs, strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-8)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-8)
    np.testing.assert_allclose(a.test_loss, b.test_loss, rtol=1e-6)


@pytest.mark.slow
def test_same_seeds_same_training(run):
    study, result, *_ = run
    again = fit(study, seeds=SEEDS)
    for mine, theirs in zip(again.networks, result.networks, strict=True):
        assert [e["train_loss"] for e in mine.epochs] == [e["train_loss"] for e in theirs.epochs]


@pytest.mark.parametrize(("optimizer", "expected"), [
    # First step by hand from p = 1, gradient g = 2 (of p² ), lr 0.1, weight decay 0.5:
    ("sgd", 1 - 0.1 * (2 + 0.5 * 1)),  # momentum starts from the first gradient: a plain step
    ("adam", 1 - 0.1),  # the L2 term joins the gradient; Adam's first step is lr × sign
    ("adamw", 1 * (1 - 0.1 * 0.5) - 0.1),  # decay applied to the weight, apart from the gradient
])
def test_the_optimiser_named_is_the_one_that_steps(optimizer, expected):
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    step = make_optimizer([p], TrainConfig(optimizer=optimizer, lr=0.1, weight_decay=0.5))
    p.square().sum().backward()
    step.step()
    assert p.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_a_diverging_network_is_stopped_with_its_reason_and_reports_no_value():
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=3", "model.batchnorm=false",
                                "train.lr=0.99"])
    reports = []
    result = fit(study, seeds=[0, 1], report=lambda metrics, _: reports.append(metrics))
    for network in result.networks:
        assert network.failure.startswith("diverged at epoch 0: training loss")
    assert len(reports) == 1 and np.isnan(reports[0]["best_val_loss"])  # stopped: none left
    snapshots = []
    fit(study, seeds=[0, 1], report=lambda metrics, take: snapshots.append(take()))
    resumed = fit(study, seeds=[0, 1], resume=snapshots[0])  # interrupted after it stopped: it stays so
    assert [len(n.epochs) for n in resumed.networks] == [1, 1]
    assert [n.failure for n in resumed.networks] == [n.failure for n in result.networks]


@pytest.mark.parametrize(("train", "val", "expected"), [
    (0.5, 0.6, None), (float("nan"), 0.6, "loss not finite"), (0.5, float("inf"), "loss not finite"),
    (7.0, 0.6, "training loss 7 is over 10 × the untrained network's validation loss 0.69"),
    (0.5, 6.95, "validation loss 6.95 is over 10"), (0.5, 6.8, None),
])
def test_the_divergence_rule(train, val, expected):
    reason = failure(train, val, untrained=0.69, epoch=4)
    assert reason is None if expected is None else expected in reason and "epoch 4" in reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layers", ["[]", "[0]"])
def test_a_training_step_replayed_as_a_cuda_graph_trains_the_same_networks(layers):
    """240 training images in batches of 32: warm-up steps, the capture, replays and an eager
    short last batch in every epoch. The same kernels run either way, so the networks agree to
    float rounding (cuDNN may still pick other algorithms between runs)."""
    sets = ["data.n_images=300", "train.epochs=3", "train.device=cuda", f"model.attention.layers={layers}"]
    graphed = fit(loading.load(SMOKE, sets), seeds=SEEDS)
    eager = fit(loading.load(SMOKE, [*sets, "train.cuda_graphs=false"]), seeds=SEEDS)
    assert graphed.device == eager.device != "cpu"
    for ours, theirs in zip(graphed.networks, eager.networks, strict=True):
        assert ours.best_epoch == theirs.best_epoch
        np.testing.assert_allclose([e["train_loss"] for e in ours.epochs],
                                   [e["train_loss"] for e in theirs.epochs], rtol=1e-4)
        np.testing.assert_allclose(ours.test_loss, theirs.test_loss, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_the_compiled_step_trains_the_same_networks_as_the_eager_one():
    """``train.compile: true`` (inductor, from the first step; the short last batch and evaluation
    chunk eager) against ``false``: the same best epochs and epoch losses to 1e-4 relative; every
    test sample's loss to 2e-3 relative and logit to 5e-3 (float32 sums in another order, grown
    over 27 steps: inductor's AVX-512 kernels on a Xeon moved logits by up to 2.3e-3)."""
    sets = ["data.n_images=300", "train.epochs=3", "train.batch_size=25"]  # 240 images: a short last batch
    eager, compiled = (fit(loading.load(SMOKE, [*sets, f"train.compile={c}"]), seeds=[0, 1])
                       for c in ("false", "true"))
    for a, b in zip(eager.networks, compiled.networks, strict=True):
        assert a.best_epoch == b.best_epoch
        assert [e["val_loss"] for e in a.epochs] == pytest.approx([e["val_loss"] for e in b.epochs], rel=1e-4)
        assert [e["train_loss"] for e in a.epochs] == pytest.approx([e["train_loss"] for e in b.epochs],
                                                                    rel=1e-4)
        np.testing.assert_allclose(a.test_loss, b.test_loss, rtol=2e-3)
        np.testing.assert_allclose(a.test_logits, b.test_logits, atol=5e-3)


@pytest.mark.slow
def test_every_trial_of_a_process_compiles_its_step(monkeypatch):
    """A Ray worker reused from trial to trial fits one after another in one process: each trial's
    step is compiled, also after dynamo's ``recompile_limit`` trials (8, here 2 to be quick;
    dynamo's own eager backend: what is checked is whether dynamo compiles, not what inductor
    makes of it)."""
    import torch._dynamo as dynamo

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **kw, backend="eager"))
    study = loading.load(SMOKE, ["data.n_images=100", "train.epochs=1", "train.compile=true",
                                 "model.attention.layers=[]"])
    compiled = []
    # dynamo's own patch: monkeypatch's undo deletes a torch config entry instead of restoring it
    with dynamo.config.patch(recompile_limit=2):
        for trial in range(dynamo.config.recompile_limit + 1):
            dynamo.utils.counters.clear()
            fit(study, seeds=[trial])
            compiled.append(dynamo.utils.counters["stats"]["unique_graphs"])
    assert min(compiled) > 0, compiled


@pytest.mark.slow
def test_auto_leaves_a_short_trial_eager(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled although the warm-up could not pay")

    monkeypatch.setattr(torch, "compile", refuse)
    result = fit(loading.load(SMOKE, ["data.n_images=300", "train.epochs=2"]), seeds=[0])  # compile: auto
    assert result.networks[0].failure is None


@pytest.mark.slow
@pytest.mark.parametrize("faster", [True, False])
def test_auto_goes_back_to_eager_where_the_compiled_epoch_is_no_faster(monkeypatch, faster):
    """``train.compile: auto`` compiles after the eager first epoch (here: as if that paid), and
    keeps compiling only where the first compiled epoch after the warm-up's is faster than the
    eager one; else the remaining epochs run eagerly again. The compiled step here is the eager
    one without a delay the eager one has, or with one it lacks."""
    import time

    import study.train

    def delayed(fn):
        def slow(*args):
            time.sleep(0.01)
            return fn(*args)

        slow.undelayed = fn
        return slow

    training_step = study.train.training_step
    calls = {"compiled": 0}

    def compile_(fn, **kwargs):
        fast = getattr(fn, "undelayed", fn) if faster else delayed(fn)

        def counted(*args):
            calls["compiled"] += 1
            return fast(*args)

        return counted

    if faster:
        monkeypatch.setattr(study.train, "training_step", lambda *args: delayed(training_step(*args)))
    monkeypatch.setattr(study.train, "pays", lambda study_, seconds: True)
    monkeypatch.setattr(torch, "compile", compile_)
    snapshots, counts = [], []

    def report(metrics, take):
        snapshots.append(take())
        counts.append(calls["compiled"])

    fit(loading.load(SMOKE, ["data.n_images=300", "train.epochs=5", "train.compile=auto"]), seeds=[0],
        report=report)
    assert [s.compiled for s in snapshots] == ([True] * 5 if faster else [True, True, False, False, False])
    per_epoch = counts[1]  # the compiled calls of an epoch: epoch 0 ran eagerly
    assert counts[0] == 0 and per_epoch > 0
    compiled_epochs = [0, 1, 2, 3, 4] if faster else [0, 1, 2, 2, 2]  # by each epoch's end
    assert counts == [per_epoch * e for e in compiled_epochs]


@pytest.mark.slow
@pytest.mark.parametrize("layers", ["[]", "[0]"])
def test_a_trial_resumed_from_any_epochs_snapshot_trains_the_same_networks(layers, tmp_path):
    """The snapshot after epoch k, saved and loaded as a checkpoint is, continues to the networks
    an uninterrupted trial trains: the same epochs, best epochs and test losses, to the bit (one
    machine, one thread count)."""
    study = loading.load(SMOKE, ["data.n_images=400", "train.epochs=4", f"model.attention.layers={layers}"])
    snapshots = []
    whole = fit(study, seeds=SEEDS[:2], report=lambda metrics, take: snapshots.append(take()))
    assert [s.epochs for s in snapshots] == [1, 2, 3, 4]
    for k in (1, 3):
        snapshots[k - 1].save(tmp_path / f"{k}.pt")
        resumed = fit(study, seeds=SEEDS[:2], resume=Snapshot.load(tmp_path / f"{k}.pt"))
        for a, b in zip(whole.networks, resumed.networks, strict=True):
            assert a.best_epoch == b.best_epoch and a.best_val_loss == b.best_val_loss
            assert [e["val_loss"] for e in a.epochs] == [e["val_loss"] for e in b.epochs]
            assert np.array_equal(a.test_loss, b.test_loss) and np.array_equal(a.test_logits, b.test_logits)
    with pytest.raises(ValueError, match="cannot resume seeds"):
        fit(study, seeds=[5, 6], resume=snapshots[0])
