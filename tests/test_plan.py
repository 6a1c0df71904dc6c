"""What a study will cost, counted before it starts."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from study import footprint, loading, plan
from study.cli import app
from study.models import Stacked, attconv_cpu, build_network
from study.plan import Architecture, stages
from study.schedule import TRIAL_START_S

from .conftest import ROOT, SMOKE, unloaded

BIN = Path(sys.executable).parent

runner = CliRunner()


def test_stages_count_the_trials_networks_and_steps_fit_runs():
    study = loading.load(ROOT / "searchspaces" / "position.yaml",
                        ["data.n_images=1010", "train.epochs=3", "train.batch_size=16", "search.trials=2",
                         "search.seeds=2", "search.confirm_seeds=4"])
    tune, confirm = stages(study)
    levels = len(study.space["model.attention.layers"].levels())
    assert (tune.trials, tune.networks) == (2 * levels, 2 * levels * 2)
    assert (confirm.trials, confirm.networks) == (levels, levels * 4)
    # fit's loop over one epoch: 808 training images in batches of 16, a last batch of 8
    n_train = 808
    assert tune.steps == confirm.steps == 3 * len(range(0, n_train, 16))


@pytest.mark.parametrize(("sets", "gpu", "confirm"), [
    ([], 0, (16, 2)),  # on CPUs: 16 slots over 2 levels, 10 seeds in 8 trials of 2 or 1
    ([], 0.25, (2, 10)),  # on a GPU the seeds stay stacked
    (["resources.split_seeds=false"], 0, (2, 10)),
    (["resources.split_seeds=true"], 0.25, (16, 2)),
])
def test_retrained_seeds_are_split_over_the_slots_where_the_study_splits(sets, gpu, confirm):
    space = "space={model.attention.layers: {choice: [[], [0]]}, train.lr: {choice: [0.001, 0.003]}}"
    study = loading.load(SMOKE, [space, "search.seeds=3", "search.confirm_seeds=10", *sets])
    tune, retrained = stages(study, slots=16, gpu=gpu)
    assert (tune.trials, tune.seeds) == (4, 3)  # the search's trials: a configuration each, never split
    assert (retrained.trials, retrained.seeds, retrained.networks) == (*confirm, 20)


def test_a_sequential_designs_rounds_split_from_the_first_where_the_levels_are_the_configurations():
    study = loading.load(SMOKE, ["search.seeds={start: 3, step: 3, max: 9}"])
    assert [(s.trials, s.seeds) for s in stages(study, slots=6, gpu=0)] == [(6, 1)] * 3
    assert [(s.trials, s.seeds) for s in stages(study, slots=2, gpu=0)] == [(2, 3)] * 3
    assert [(s.trials, s.seeds) for s in stages(study, slots=6, gpu=0.25)] == [(2, 3)] * 3  # a GPU stacks


def test_a_last_batch_of_one_image_is_not_a_step():
    # 817 training images = 24 × 34 + 1: fit skips the batch of one (batch norm needs two)
    (tune,) = stages(loading.load(SMOKE, ["data.n_images=1021", "train.epochs=2", "train.batch_size=34"]))
    assert tune.steps == 2 * 24
    # 818 = 24 × 34 + 2: a short last batch of two is a step
    (tune,) = stages(loading.load(SMOKE, ["data.n_images=1022", "train.epochs=2", "train.batch_size=34"]))
    assert tune.steps == 2 * 25


@pytest.mark.slow
def test_plan_prints_networks_steps_memory_and_time():
    result = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=2",
                                 "--set", "train.compile=false"])
    assert result.exit_code == 0, result.output
    lines = unloaded(result.output)
    assert lines[0] == "tune: 2 trials × 3 seeds = 6 networks; 16 training steps per trial (2 epochs)"
    assert lines[1] == "AttConv on the CPU: its C kernel"  # the space has AttConv; this machine has cc
    assert lines[2].startswith("memory: ") and "GiB for the 2 trials at once" in lines[2]
    assert any(line.startswith("  tune layers=[0]: ") and "ms per step of 3 seeds, eager" in line
               for line in lines)
    assert lines[-3].startswith("checkpoints: about ") and "MiB on disk" in lines[-3]
    assert lines[-2].startswith("estimated time on cpu (1 thread per trial, up to 2 at once): ")
    # Trials of seconds: a worker reused saves more than a freed CPU handed on.
    assert lines[-1].startswith("use of the 2 CPUs: ") and "the next reusing its worker" in lines[-1]
    node = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300", "--set", "train.epochs=2",
                               "--set", "train.compile=false", "--cpus", "64"])
    # Each level's three seeds in one-seed trials, six at once, each starting on four of the 64 CPUs
    # (more would not speed it up): all start together, so no worker would be reused.
    assert node.exit_code == 0 and "tune: 6 trials × 1 seed = 6 networks, each starting on 4 threads" \
        in node.output
    assert "(64 CPUs shared out among the trials)" in node.output and "use of the 64 CPUs: " in node.output


def timed_as(step_ms: float):
    """Architectures timed at ``step_ms`` (LeNet-5) and three times that (AttConv), as if measured."""
    def timed(study, seeds, compile_here):
        return [Architecture(label, 0.5, 1, ms, None, 0.0, 0.0, True, 1.0)
                for label, ms in (("LeNet-5", step_ms), ("AttConv", 3 * step_ms))]
    return timed


@pytest.mark.parametrize(("compiled_ms", "train_s", "said"), [
    # 80 steps (10 epochs of 8): the first epoch eager, 30 s of warm-up, the rest compiled
    (5.0, 8 * 0.010 + 30 + 72 * 0.005, False),
    # compiled no faster: the warm-up's epoch and the one timed compiled, then eager again
    (15.0, 30 + 16 * 0.015 + 64 * 0.010, True),
])
def test_a_compile_that_is_no_faster_is_planned_as_the_trial_runs_it(monkeypatch, compiled_ms, train_s, said):
    """``train.compile: auto`` with AttConv's compiled step timed faster than its eager one (10 ms),
    or slower: a trial then goes back to eager after two compiled epochs (``study.compiled``),
    and the plan counts that and says so."""
    monkeypatch.setattr(plan, "architectures", lambda study, seeds, compile_here: [
        Architecture("AttConv", 1.0, 1, 10.0, compiled_ms, 30.0, 0.0, True, 1.0)])
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=10", "train.compile=auto"])
    planned = plan.plan(study, cpus=2)
    (stage,) = planned.stages
    (arch,) = planned.architectures[stage.name]
    assert stage.steps == 80 and planned.trial_s(stage, arch) == pytest.approx(TRIAL_START_S + train_s)
    shown = "\n".join(plan.lines(planned))
    assert ("(no faster: eager again after two compiled epochs)" in shown) is said, shown


@pytest.mark.parametrize(("step_ms", "sets", "reallocates"), [
    (1.0, [], False),  # seconds a trial: a restart on a new worker costs more than the freed CPU gives
    (1000.0, [], True),  # a minute a trial: AttConv's 32 s left run on both CPUs, 23 s with the restart
    (1.0, ["resources.reallocate=true"], True),  # as the study says where it says
    (1000.0, ["resources.reallocate=false"], False),
])
def test_auto_reallocates_where_that_saves_more_than_reusing_the_workers(monkeypatch, step_ms, sets,
                                                                         reallocates):
    """Two arms on two CPUs, AttConv's step three times LeNet-5's, 16 steps a trial."""
    monkeypatch.setattr(plan, "architectures", timed_as(step_ms))
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=2", *sets])
    planned = plan.plan(study, cpus=2)
    assert planned.reallocates is reallocates
    if not sets:
        assert planned.wall() == min(planned.wall(True), planned.wall(False))
    how = "going to the running ones" if reallocates else "the next reusing its worker"
    assert how in plan.lines(planned)[-1]


@pytest.mark.parametrize(("reallocate", "shown", "estimated"), [
    ("true", "2 trials × 3 seeds = 6 networks, each starting on 4 threads; 16 training steps",
     "estimated time on cpu (8 CPUs shared out among the trials): "),
    ("false", "2 trials × 3 seeds = 6 networks; 16 training steps",  # one CPU each to the end
     "estimated time on cpu (1 thread per trial, up to 2 at once): "),  # its two trials, not 8
])
def test_the_plan_shows_the_threads_a_stages_trials_start_on(monkeypatch, reallocate, shown, estimated):
    """Two trials (each arm's seeds stacked) on eight CPUs start on four threads each where the
    CPUs are shared out, as the run starts them; the estimate's line does not say one thread."""
    monkeypatch.setattr(plan, "architectures", timed_as(1.0))
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=2", "resources.split_seeds=false",
                                 f"resources.reallocate={reallocate}"])
    lines = plan.lines(plan.plan(study, cpus=8))
    assert lines[0].startswith(f"tune: {shown}")
    assert lines[-2].startswith(estimated)


def test_the_plan_notes_other_processes_that_keep_this_machines_cpus_busy(monkeypatch):
    """A process spinning beside the plan as it times the steps: a note that the trials will share
    the CPUs; planning for another node (--cpus) says nothing of this machine's load."""
    import time

    def timed_slowly(study, seeds, compile_here):  # as long as a real plan's timing takes
        time.sleep(1.5)
        return timed_as(1.0)(study, seeds, compile_here)

    monkeypatch.setattr(plan, "architectures", timed_slowly)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        here = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300"])
        node = runner.invoke(app, ["plan", str(SMOKE), "--set", "data.n_images=300", "--cpus", "64"])
    finally:
        spinner.kill()
        spinner.wait()
    assert here.exit_code == 0 and node.exit_code == 0, here.output + node.output
    assert here.output.splitlines()[-1].startswith("note: other processes kept "), here.output
    assert "the trials will share the CPUs with them" in here.output
    assert "note: other processes" not in node.output


def test_the_plan_says_what_the_study_folder_already_holds_and_writes_nothing(monkeypatch, tmp_path):
    """Where the study's folder exists, as ``study run`` would find it: this study's networks so
    far (of those it plans), all of them, or another study."""
    import pandas as pd

    monkeypatch.setattr(plan, "architectures", timed_as(1.0))
    sets = ["data.n_images=300", "train.epochs=2"]

    def last_line() -> str:
        result = runner.invoke(app, ["plan", str(SMOKE), *(a for s in sets for a in ("--set", s)),
                                     "--results", str(tmp_path)])
        assert result.exit_code == 0, result.output
        return unloaded(result.output)[-1]

    assert last_line().startswith("use of the ")  # no folder: nothing more to say
    folder = tmp_path / "smoke"
    folder.mkdir()
    (folder / "study.yaml").write_text(loading.dump(loading.load(SMOKE, sets)))
    assert last_line() == (f"note: {folder} holds 0 of the 6 networks of this study (the estimate above is "
                           "the whole study's); study run with the same file and --set values and "
                           "--resume trains the rest")
    rows = pd.DataFrame({"trial_id": "a", "stage": "tune", "seed": [0, 1, 2], "status": "COMPLETED"})
    rows.to_parquet(folder / "trials.parquet")
    assert f"{folder} holds 3 of the 6 networks" in last_line()
    pd.concat([rows, rows.assign(trial_id="b")]).to_parquet(folder / "trials.parquet")
    assert last_line() == f"note: {folder} holds all 6 networks of this study: study analyze {folder}"
    (folder / "study.yaml").write_text(loading.dump(loading.load(SMOKE, ["train.epochs=3"])))
    assert last_line() == (f"note: {folder / 'study.yaml'} differs from {SMOKE} as given (in data, train); "
                           "resume with the same file and --set values, or give study run --name "
                           "NEW_NAME for a folder of its own")
    assert sorted(p.name for p in folder.iterdir()) == ["study.yaml", "trials.parquet"]


@pytest.mark.parametrize("layers", ["[]", "[0]"])
def test_the_activations_counted_without_storage_are_those_a_real_step_saves(layers):
    """``footprint`` counts on fake tensors at one and two images; a real forward of three seeds
    at 32 images each, on the path the trials take (AttConv's CPU kernel), saves that much, with
    what the kernel keeps for the backward: per image, every iteration's 25 planes of shares and 6
    of outputs, each of its 44·44 windows padded to 1,936 floats."""
    study = loading.load(SMOKE, [f"model.attention.layers={layers}"])
    saved = footprint.activations(study)
    net = Stacked([build_network(study.model, 48, 1) for _ in range(3)])
    real = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal real
        real += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(torch.rand(3, 32, 1, 48, 48))
    if layers == "[0]" and attconv_cpu.available():
        real += 3 * 32 * study.model.attention.iterations * (25 + 6) * 1936 * 4
    assert real == pytest.approx(3 * (saved.fixed + 32 * saved.per_image), rel=0.02)


@pytest.mark.parametrize(
    ("sets", "code", "expected"),
    [
        # Valid and large: timed on part of a step's images, scaled.
        (["train.batch_size=2049", "search.seeds=2"], 0, "of its images and scaled"),
        (["search.seeds=100", "train.compile=false"], 0, "ms per step of 100 seeds"),
        (["search.seeds=1000"], 2, "--set 'search.seeds=1000': search.seeds: Input should be less than or"),
        (["search.seeds={start: 2, step: 1, max: 100000000}"], 2, "search.seeds.max: Input should be less"),
        (["train.batch_size=100000"], 2, "study run would refuse this study: 3 networks per trial, training "
                                         "100000 images each"),
        (["resources.cpu=64"], 2, "study run would refuse this study: resources.cpu is 64 per trial"),
        (["data.n_images=100000000"], 2, "would refuse this study: data.n_images 100,000,000 needs"),
        (["data.canvas=512", "search.seeds=20"], 2, "would refuse this study: 20 networks per trial"),
    ],
)
@pytest.mark.slow
def test_planning_is_bounded_in_time_and_memory_whatever_the_settings(tmp_path, sets, code, expected):
    """Each takes under 15 s of each of 2 cores (its CPU time: wall time stretches with whatever
    else the machine runs), under 2 GB, one message and no traceback where it refuses, nothing
    written: the process's own CPU time and peak memory, measured by the parent that waits for it."""
    args = [str(BIN / "study"), "plan", str(SMOKE), *[a for s in sets for a in ("--set", s)],
            "--results", str(tmp_path / "results")]
    probe = ("import resource, subprocess, sys; "
             "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "used = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(done.returncode, used.ru_utime + used.ru_stime, used.ru_maxrss * 1024); "
             "print(done.stdout + done.stderr)")
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    (rc, seconds, peak), shown = out.stdout.split("\n", 1)[0].split(), out.stdout.split("\n", 1)[1]
    assert int(rc) == code and expected in shown, shown
    assert float(seconds) < 2 * 15 and int(peak) < 2 * 10**9, (seconds, peak)
    assert "Traceback" not in shown and not list(tmp_path.iterdir())
    if code:
        assert len(shown.strip().splitlines()) == 1  # one message
