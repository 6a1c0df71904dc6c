"""What a study will cost, counted before it starts."""

import pytest
from typer.testing import CliRunner

from study import config
from study.cli import app
from study.plan import schedule, stages

from .conftest import ROOT, SMOKE

runner = CliRunner()


def test_stages_count_the_trials_networks_and_steps_fit_runs():
    study = config.load(ROOT / "searchspaces" / "position.yaml",
                        ["data.n_images=1010", "train.epochs=3", "train.batch_size=16", "search.trials=2",
                         "search.seeds=2", "search.confirm_seeds=4"])
    tune, confirm = stages(study)
    levels = len(study.space["model.attention.layers"].levels())
    assert (tune.trials, tune.networks) == (2 * levels, 2 * levels * 2)
    assert (confirm.trials, confirm.networks) == (levels, levels * 4)
    # fit's loop over one epoch: 808 training images in batches of 16, a last batch of 8
    n_train = 808
    assert tune.steps == confirm.steps == 3 * len(range(0, n_train, 16))


def test_a_last_batch_of_one_image_is_not_a_step():
    # 817 training images = 24 × 34 + 1: fit skips the batch of one (batch norm needs two)
    (tune,) = stages(config.load(SMOKE, ["data.n_images=1021", "train.epochs=2", "train.batch_size=34"]))
    assert tune.steps == 2 * 24
    # 818 = 24 × 34 + 2: a short last batch of two is a step
    (tune,) = stages(config.load(SMOKE, ["data.n_images=1022", "train.epochs=2", "train.batch_size=34"]))
    assert tune.steps == 2 * 25


def test_plan_prints_networks_steps_memory_and_time():
    result = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=2",
                                 "--set", "train.compile=false"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "tune: 2 trials × 3 seeds = 6 networks; 16 training steps per trial (2 epochs)"
    assert lines[1] == "AttConv on the CPU: its C kernel"  # the space has AttConv; this machine has cc
    assert lines[2].startswith("memory: ") and "GiB for the 2 trials at once" in lines[2]
    assert any(line.startswith("  tune layers=[0]: ") and "ms per step of 3 seeds, eager" in line
               for line in lines)
    assert lines[-3].startswith("checkpoints: about ") and "MiB on disk" in lines[-3]
    assert lines[-2].startswith("estimated time on cpu (1 thread per trial, 2 at once): ")
    assert lines[-1].startswith("use of the 2 CPUs: ") and "going to the running ones" in lines[-1]
    node = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=2",
                               "--set", "train.compile=false", "--cpus", "64"])
    assert node.exit_code == 0 and "1 thread per trial, 64 at once" in node.output
    assert "use of the 64 CPUs: " in node.output


@pytest.mark.parametrize(("trials", "slots", "reallocate", "wall", "use"), [
    ([100.0, 300.0], 2, False, 300.0, 400 / 600),  # one CPU idles for the last 200 s
    ([100.0] * 4, 2, False, 200.0, 1.0),
    ([100.0, 100.0, 300.0], 2, False, 400.0, 500 / 800),  # the long one last: it waits
    # Reallocated: after 100 s the long trial restarts (5 s) on both CPUs, where its 200 s of work
    # left take 200 / 1.8 s.
    ([100.0, 300.0], 2, True, 105.0 + 200.0 / 1.8, 400 / (2 * (105.0 + 200.0 / 1.8))),
])
def test_the_schedule_lays_trials_over_the_cpus_and_hands_freed_ones_on(trials, slots, reallocate, wall, use):
    got_wall, got_use = schedule(trials, slots, reallocate)
    assert got_wall == pytest.approx(wall) and got_use == pytest.approx(use)
