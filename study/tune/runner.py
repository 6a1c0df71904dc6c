"""A study's stages and rounds through Ray Tune: the tuning stage, the confirmation stage where
the study selects, a sequential design's rounds, and what an interrupted study lacks.

Each Ray trial writes its own result files; a callback on the driver (``recorder``) keeps
``trials.parquet`` and ``epochs.parquet`` current and prints one line per trial. When the study
selects (its space varies more than the compared factor), a confirmation stage follows: each
level's selected configuration is trained on fresh seeds and marked ``stage: confirm``.
With a sequential design (``study.sequential``), the compared networks (the
confirmation stage, or the trials of a study that does not select) come in rounds: after each,
the design's decisions (``study.decisions``, from the result files alone) say which
levels train ``step`` more seeds. A level's retrained seeds are one trial, or several where the
study splits seeds over trials so that no slot idles (``Study.seed_groups``). Where the levels
are the configurations (the space varies only the compared factor), so are the first round's
(``Study.first_round``), and Optuna is told each level's result afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler, ResourceChangingScheduler
from ray.tune.search import BasicVariantGenerator, Searcher

from study import results
from study.arms import best_configurations
from study.config import Study
from study.data import build
from study.decisions import decisions, planned_networks
from study.errors import UserError
from study.preflight import check_resources, local_cpus
from study.schedule import start_share, threads
from study.sequential import seeds_in_words
from study.tune.interrupts import Interrupted, Interrupts, Stopped
from study.tune.nodes import check_nodes
from study.tune.progress import Progress
from study.tune.recorder import Recorder, TrialFailures
from study.tune.schedulers import FreedCPUs, PerLevelASHA, gpu_share, largest_node, reallocates
from study.tune.search import searcher, settle_interrupted, tell_levels
from study.tune.trainable import SEEDS, finish_stopped, params, trainable
from study.words import counted


def run(study: Study, study_dir: Path, address: str | None = None, verbose: bool = False,
        resume: bool = False, reallocate: bool | None = None) -> None:
    """Run every trial of ``study`` and leave the result files in ``study_dir``; with
    ``verbose``, Ray's own status tables and worker output are shown too. With ``resume``,
    continue an interrupted run there: the trials that finished stay, the ones that were
    running go on from their last epoch's checkpoint (``study.checkpoints``). What the trials
    lack is planned from the finished networks' rows, never from Optuna's view of them.
    ``reallocate``: whether the CPUs are shared out among the running trials (a stage's trials
    starting on even shares, a finished trial's CPUs going to those still running), as
    ``study.plan`` decided (default: as the study says); never across the nodes of a cluster.
    The caller holds the folder's lock."""
    study_dir = Path(study_dir).resolve()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # On Ctrl-C Ray advises `Tuner.restore(...)`; this tool's own resume command is what works.
    logging.getLogger("ray.tune.tune").addFilter(lambda record: "Resume " not in record.getMessage())
    # Nor its lines for the trials a Ctrl-C stopped before their first report: they have no results
    # yet, which the runner counts from the staged rows anyway.
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    analysis.addFilter(lambda record: "Failed to fetch metrics" not in record.getMessage())
    # Ray's own ResourceChangingScheduler reads a controller attribute Ray then warns about.
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    controller.addFilter(lambda record: "_reuse_actors" not in record.getMessage())
    started_here = not ray.is_initialized()
    failures = TrialFailures(study_dir / "ray" / "errors.log")  # this run's, removed at its end
    if not verbose:
        controller.addFilter(failures)
    try:
        if started_here:
            _start_ray(address, verbose)
        # A Ctrl-C from here on ends the study between its writes (Ray's start is before any)
        with Interrupts(f"terminated (SIGTERM): the networks that finished are kept in {study_dir}; "
                        "the same command with --resume continues the study") as interrupts:
            if address:  # a cluster's nodes are known only now: nothing is written yet
                check_resources(study, *largest_node(), where=f"the largest node of the cluster at {address}")
                check_nodes(study_dir)
            networks = results.finished(study_dir)  # a resumed study's that finished; a new one's none
            if resume:
                kept = f"{len(networks)} of {planned_networks(study, networks)} networks"
                print(f"resuming {study_dir}: {kept} finished before and kept (an estimate printed above "
                      "is the whole study's; the progress line counts what is left); "
                      f"{settle_resumed(study, study_dir, networks)}", flush=True)
            results.write_study(study_dir, study)
            data = build(study.data)  # warm the cache once, before trials race to generate it
            print(f"dataset {data.fingerprint}: {study.data.n_images:,} images "
                  f"({'cached' if data.cached else 'generated'} in {data.seconds:.1f} s)\n"
                  f"source: {data.source}", flush=True)
            _stages(study, study_dir, networks, verbose, reallocate, interrupts)
    except Interrupted:
        pass  # the CLI counts the networks that finished and says how to resume
    finally:
        controller.removeFilter(failures)
        if started_here:
            ray.shutdown()


def _start_ray(address: str | None, verbose: bool) -> None:
    """Start Ray here, or join the cluster at ``address``; the caller shuts it down, a start cut
    short included."""
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        # Without an address, a new embedded instance ("local"): never a cluster that `ray start`
        # left on this machine, running or stale; its token auth stays on, and it has the CPUs the
        # plan counted (Ray's own count takes all of the machine's where no container limits them).
        ray.init(address=address or "local", num_cpus=None if address else local_cpus(),
                 include_dashboard=False, log_to_driver=verbose,
                 logging_level="info" if verbose else "warning",
                 runtime_env={"worker_process_setup_hook": "study.startup.freeze_imports"})
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as err:
        if address is None:
            raise
        raise UserError(f"--address {address}: cannot join that Ray cluster: {err}. Is "
                        "`ray start --head` running there, and is its auth token here "
                        "(~/.ray/auth_token or RAY_AUTH_TOKEN)?") from None
    except SystemExit as exit_:  # how Ray's own handler ends a driver SIGTERM finds in ray.init
        if exit_.code != signal.SIGTERM:
            raise
        raise Stopped(signal.SIGTERM) from None
    finally:  # Ray's handler stays set and ends the driver without a word; the caller's stands
        signal.signal(signal.SIGTERM, sigterm)


@dataclass(frozen=True)
class Stages:
    """What every stage of one run shares: the study, its folder, each trial's GPU share, how many
    trials run at once, the progress line, whether Ray's own output shows and where Ctrl-C goes."""

    study: Study
    study_dir: Path
    gpu: float
    slots: int  # trials at once
    reallocate: bool  # the CPUs shared out among the running trials; else workers are reused
    progress: Progress
    verbose: bool
    interrupts: Interrupts


def settle_resumed(study: Study, study_dir: Path, networks: pd.DataFrame) -> str:
    """Settle what an interrupted run left in ``study_dir``, given the networks that finished
    (``results.finished``): the unfinished trials' files go, and the Optuna trials left running
    are told the value their rows hold or marked failed (``settle_interrupted``). Returns what
    was done, in words."""
    gone = results.discard_unfinished(study_dir)
    told, failed = settle_interrupted(study, study_dir, networks)
    if not (gone or told or failed):
        return "no trial was left unfinished"
    return (f"{counted(len(gone), 'unfinished trial')} discarded; of the Optuna trials left running, "
            f"{told} told the value their finished rows hold, {failed} marked failed")


def _stages(study: Study, study_dir: Path, networks: pd.DataFrame, verbose: bool,
            reallocate: bool | None, interrupts: Interrupts) -> None:
    """The tuning stage and, where the study selects, the confirmation stage; of an interrupted
    study (``networks``: the rows of those that finished), the trials it lacks."""
    search = study.search
    finished = networks.drop_duplicates("trial_id")  # a row per configuration
    configurations_tuned = [{k: row[k] for k in study.space}
                            for _, row in finished[finished["stage"] == "tune"].iterrows()]
    gpu, cluster = study.resources.gpu, ray.cluster_resources()
    if gpu == "auto":
        gpu = gpu_share(study.n_configurations()) if cluster.get("GPU", 0) > 0 else 0
    slots = study.trials_at_once(cluster.get("CPU", 1), cluster.get("GPU", 0), gpu)
    # The confirmation stage retrains each level in the space's order; the tuning stage's order is
    # the sampler's to choose.
    levels = [str(v) for v in study.space[study.compare_key()].levels()]
    first = study.first_round(slots, gpu)
    # Where the levels are the configurations, the first round trains them as a later round does
    # (the search has nothing to choose), its seeds split over trials where slots would idle, and
    # Optuna is told each level's result afterwards; so is a run that started that way.
    fixed = study.levels_are_configurations() and (len(first) > 1 or _split_before(study, networks))
    planned: list[list[tuple[str | None, int]]] = [
        [(level, len(group)) for level in levels for group in first] if fixed
        else [(None, study.looks()[0])] * study.n_configurations()]
    groups = study.seed_groups(study.retrained_seeds(), len(levels), slots, gpu)
    if study.confirms():
        planned.append([(level, len(group)) for level in levels for group in groups])
    reallocate = reallocates(study, gpu, reallocate)
    progress = Progress(planned, len(finished), study.train.epochs, slots, reallocate)
    stages = Stages(study, study_dir, gpu, slots, reallocate, progress, verbose, interrupts)
    where = "the confirmation stage" if study.confirms() else "each later round"
    split = f"; in {where}, a level's seeds split over {len(groups)} trials" if len(groups) > 1 else ""
    together = (f"each level's seeds split over {len(first)} trials" if fixed and len(first) > 1
                else "each configuration one trial training its seeds together")
    shared = ("a stage's trials start on even shares of the CPUs, and the CPUs a finished trial frees "
              "go to the running ones" if reallocate else "a finished trial's worker goes to the next")
    print(f"study {study.name}: {counted(study.n_configurations(), 'configuration')} × "
          f"{seeds_in_words(search.seeds)}, {together}{split}; {study.resources.cpu:g} CPU "
          f"and {gpu:g} GPU per trial; {shared}", flush=True)
    stages.progress.rounds_may_follow = study.design() is not None and not study.confirms()  # its round 1
    key = study.compare_key()
    level_configurations = {level: {key: level} for level in study.space[key].levels()}
    if fixed:
        _rounds(stages, "tune", level_configurations, networks)
        told = tell_levels(study, study_dir)
        if told:
            print(f"optuna: {counted(told, 'trial')} told, one per level: the mean best validation loss "
                  "of its first round's networks", flush=True)
        return
    missing = study.n_configurations() - len(configurations_tuned)
    if missing > 0:
        _trials(stages, "tune", searcher(study, study_dir, configurations_tuned), missing, None,
                study.seeds("tune"))
    if not study.confirms() and study.design() is None:
        return
    finished = results.finished(study_dir)  # with the tuning stage's trials
    if study.confirms():
        tuned = finished[finished["stage"] == "tune"]
        interrupts.check()
        print("confirmation: each level's selected configuration retrained on fresh seeds", flush=True)
        _rounds(stages, "confirm", best_configurations(study, tuned, study.compare_key()), finished)
    else:
        _rounds(stages, "tune", level_configurations, finished)


def _split_before(study: Study, finished) -> bool:
    """Whether an earlier run of the study split its first round's seeds (a trial of the tuning
    stage holds some of them, not all): its resume must go on that way, never retrain them all."""
    first = finished[(finished["stage"] == "tune") & finished["seed"].isin(study.seeds())]
    return bool(len(first)) and first.groupby("trial_id").size().lt(len(study.seeds())).any()


def _rounds(stages: Stages, stage: str, configurations: dict[Any, dict[str, Any]], finished) -> None:
    """The compared networks of ``stage``, round by round: each round trains, for every level still
    undecided (and the reference while any is), the round's seeds it lacks (``finished``: the
    network rows so far), as one trial per level, or several where the study splits seeds
    (``Study.seed_groups``); an interrupted round's trials run again. With a
    sequential design, the decisions after each round (``study.decisions``) say which
    levels go on."""
    study = stages.study
    key, design, looks = study.compare_key(), study.design(), study.looks(stage)
    going = list(configurations)
    for look in range(1, len(looks) + 1):
        seeds = study.seeds(stage, look)
        stages.progress.rounds_may_follow = design is not None and look < len(looks)
        if look > 1:
            groups = study.seed_groups(seeds, len(going), stages.slots, stages.gpu)
            stages.progress.extend([(str(level), len(group)) for level in going for group in groups])
        rows, lacking = finished[finished["stage"] == stage], {}
        for level in going:
            have = set(rows.loc[rows[key] == level, "seed"]) if len(rows) else set()  # none: no key column
            lacking.setdefault(tuple(s for s in seeds if s not in have), []).append(level)
        for needed, levels in lacking.items():
            if needed:
                stages.interrupts.check()  # a Ctrl-C during the look: no round announced that never trains
                groups = study.seed_groups(list(needed), len(levels), stages.slots, stages.gpu)
                print(f"round {look}: {', '.join(map(str, levels))} on seeds {needed[0]}..{needed[-1]}"
                      + (f", each level in {len(groups)} trials" if len(groups) > 1 else ""), flush=True)
                # The points are the whole trials; the param space only names the keys they fill.
                points = [{**configurations[level], SEEDS: ",".join(map(str, group))}
                          for level in levels for group in groups]
                _trials(stages, stage, BasicVariantGenerator(points_to_evaluate=points), len(points),
                        {**dict.fromkeys(study.space), SEEDS: None}, list(needed))
        if design is None or look == len(looks):
            return
        finished = results.finished(stages.study_dir)
        # Each look on the networks of its rounds (seeds up to this round's last): a resumed run
        # replays look 1 as the run took it, not on the networks of the rounds after it.
        decided = decisions(study, finished[finished["seed"] <= seeds[-1]])
        print(f"look {look} of {len(looks)}: " + "; ".join(
            f"{level}: {d.verdict} (diff {d.diff:+.4g}, repeated p {d.p:.3g}, {d.n} vs {d.n_reference})"
            for level, d in decided.items()), flush=True)
        going = [level for level, d in decided.items() if not d.settled()]
        if not going:
            return
        going.insert(0, next(iter(configurations)))  # the reference trains while any level is undecided


def _trials(stages: Stages, stage: str, search_alg: Searcher, trials: int, param_space: dict | None,
            seeds: list[int]) -> None:
    """``trials`` Ray trials of ``stage`` as ``search_alg`` chooses them, each training ``seeds``;
    ``Interrupted`` where they did not all end."""
    study, study_dir, gpu, verbose = stages.study, stages.study_dir, stages.gpu, stages.verbose
    # Ray's newer console output prints an experiment table and a TensorBoard hint at every
    # verbosity; its legacy reporter at verbosity 0 prints nothing, which quiet mode wants.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    # Tune warns when a callback takes over 0.5 s ("may be a performance bottleneck"): ours write
    # the result tables after each trial, which is the point, not a bottleneck a user can act on.
    logging.getLogger("ray.tune.utils.util").setLevel(logging.NOTSET if verbose else logging.ERROR)
    runs = study_dir / "ray"
    # A resumed study's Ray runs go beside the interrupted ones (tune, tune-2, ...).
    name = next(n for n in (stage, *(f"{stage}-{k}" for k in range(2, 1000))) if not (runs / n).exists())
    search = study.search
    asha = stage == "tune" and search.scheduler == "asha"  # never the networks that are compared
    scheduler = PerLevelASHA(study.compare_key(), study.train.epochs, search.grace_period,
                             search.reduction_factor) if asha else None
    reallocate = stages.reallocate
    # Sharing out the CPUs starts where the trials do: a stage of fewer trials than slots starts
    # each on an even share of them, not on one slot until a first epoch's checkpoint lets Ray
    # hand it more (``study.schedule`` lays them out so).
    cpus = study.resources.cpu * (start_share(stages.slots, trials) if reallocate else 1)
    # A checkpoint every epoch makes Ray save its experiment state as often, and warn.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    settings = {"study": study.model_dump(by_alias=True), "study_dir": str(study_dir), "stage": stage}
    fn = tune.with_parameters(trainable, **settings, seeds=seeds)
    ended_before = results.staged_trials(study_dir)
    tuner = tune.Tuner(
        tune.with_resources(fn, {"cpu": cpus, "gpu": gpu}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, num_samples=trials,
            # Without it Tune keeps one trial of a searcher pending at a time, and counts a trial
            # as pending until its worker has started: on a cluster the trials then ran one after
            # another, a node idle. As many as can run at once keep every node busy. (Fixed points,
            # a BasicVariantGenerator, have no such limit, and Tune warns when given one.)
            max_concurrent_trials=max(1, min(trials, stages.slots))
            if isinstance(search_alg, Searcher) else None,
            scheduler=ResourceChangingScheduler(scheduler or FIFOScheduler(), FreedCPUs(
                trials, study.train.epochs, study.resources.cpu, stages.slots))
            if reallocate else scheduler,
            # Reused actors spare each trial a new worker process (importing torch: seconds);
            # a trial given more CPUs needs a new one.
            reuse_actors=not reallocate),
        run_config=tune.RunConfig(
            name=name, storage_path=str(runs), verbose=2 if verbose else 0,
            callbacks=[Recorder(study, study_dir, stage, seeds, stages.progress, scheduler)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=study.resources.retries)),
    )
    grid = stages.interrupts.fit(tuner.fit)
    if scheduler is not None:
        _test_stopped(stages, grid, scheduler, {"num_cpus": study.resources.cpu, "num_gpus": gpu},
                      {**settings, "threads": threads(study.resources.cpu)})
    # On Ctrl-C, Tune ends the run and returns as if it were done: some trials then staged no rows.
    if len(results.staged_trials(study_dir) - ended_before) < trials:
        raise Interrupted


def _test_stopped(stages: Stages, grid: tune.ResultGrid, scheduler: PerLevelASHA,
                  resources: dict[str, float], settings: dict[str, Any]) -> None:
    """Test the best epochs of the trials ASHA stopped, from their last snapshots, as Ray tasks with
    a trial's resources, all at once; then remove every snapshot of the stage (a finished trial's
    weights are in ``weights/``)."""
    study, study_dir = stages.study, stages.study_dir
    stopped = {r.metrics["trial_id"]: r for r in grid if r.metrics.get("trial_id") in scheduler.stopped
               and r.checkpoint}
    tests = {trial_id: finish_stopped.options(**resources).remote(
        **settings, trial_id=trial_id, params=params(study, r.config), checkpoint=r.checkpoint,
        reason=scheduler.reason(trial_id)) for trial_id, r in stopped.items()}
    for trial_id, test in tests.items():
        try:
            ray.get(test)
        except ray.exceptions.RayError as err:  # only a tuning trial's test: the study goes on
            last = str(err).strip().splitlines()[-1]
            results.write_failed(study_dir, trial_id, "tune", study.seeds("tune"),
                                 params(study, stopped[trial_id].config),
                                 f"{scheduler.reason(trial_id)}; testing its best epochs then failed: {last}")
    if stopped:
        written = results.consolidate(study_dir)
        print(f"{stages.progress(written)} tested the best epochs of {len(stopped)} trial(s) ASHA stopped",
              flush=True)
    for r in grid:
        if r.checkpoint:
            shutil.rmtree(r.checkpoint.path, ignore_errors=True)
