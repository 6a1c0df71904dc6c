"""The ``study`` command: parses arguments and hands over to the modules that do the work."""

from __future__ import annotations

import json
import os
import shlex
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from study import cache, config, loading, resolution
from study.errors import UserError
from study.words import configuration, counted

if TYPE_CHECKING:
    import pandas as pd

    from study.plan import Plan

# Plain help, as click wraps it: rich's markup mode keeps the docstrings' line breaks.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Hyperparameter studies of top-down attention in LeNet-style networks.")

Space = Annotated[Path, typer.Argument(help="search-space YAML, e.g. searchspaces/smoke.yaml")]
Sets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="override a dotted key, e.g. --set train.epochs=2 (repeatable)")]
ResultsDir = Annotated[Path, typer.Option("--results", help="where studies write")]
Download = Annotated[bool, typer.Option(
    "--download", help="fetch MNIST into data.root first (data.source: mnist; needs network)")]
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Look at a study's dataset.")
app.add_typer(data_app, name="data")


def main() -> None:
    """The ``study`` command (its console script, and ``python -m study``)."""
    from study.startup import freeze_imports

    freeze_imports()  # before the commands' imports: torch, Ray Tune, pandas
    app(prog_name="study")


def _fail(err: UserError) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2)


def _load(space: Path, sets: list[str] | None, download: bool,
          verbatim: dict[str, tuple[str, str | None]] | None = None) -> config.Study:
    """The study, with MNIST fetched first when asked, its source digits checked and the cache
    it builds datasets and AttConv's kernel in writable."""
    study = loading.load(space, sets or [], verbatim)
    cache.check_writable()
    from study.data import source

    if download and study.data.source == "mnist":
        source.download_mnist(study.data.root)
    source.load(study.data)  # a missing or corrupt MNIST folder fails here, before anything runs
    return study


def _shared(results: Path) -> None:
    """Inside a Ray job the working directory is Ray's temporary copy of the uploaded one, which
    the other nodes do not see and Ray deletes: results need a path every node shares."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and not results.is_absolute():
        raise UserError(f"--results {results}: a relative path inside a Ray job lands in Ray's temporary "
                        "copy of the job's working directory; give a folder every node of the cluster "
                        "sees, e.g. --results /shared/results")


def _same_study(study: config.Study, space: Path, study_dir: Path) -> None:
    """An interrupted run in ``study_dir`` must be of this very study to be resumed."""
    stored = study_dir / "study.yaml"
    before = loading.load(stored)
    if before != study:
        was, now = before.model_dump(), study.model_dump()
        differ = [key for key in now if was.get(key) != now[key]]
        raise UserError(f"{stored} differs from {space} as given (in {', '.join(differ)}); resume "
                        "with the same file and --set values")


@app.command()
def run(
    space: Space,
    sets: Sets = None,
    results: ResultsDir = Path("results"),
    name: Annotated[str | None, typer.Option(help="study name (default: the file's)")] = None,
    address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", show_envvar=False, help=(
        "existing Ray cluster, e.g. 127.0.0.1:6379, or auto (default: $RAY_ADDRESS, which a Ray job "
        "sets; else an embedded Ray)"))] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="also show Ray's status tables and the workers' output")] = False,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage: journal:PATH or a SQLAlchemy URL (default: sqlite in the results)")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="continue an interrupted study in its folder (same file and --set)")] = False,
    resume_or_start: Annotated[bool, typer.Option(
        "--resume-or-start", help="--resume where the study's folder holds one, else start it: for "
        "batch jobs that may run again (requeued, resubmitted)")] = False,
    download: Download = False,
) -> None:
    """Run a study: Ray Tune schedules the trials, Optuna chooses them."""
    from study import lock
    from study.tune.interrupts import Stopped, stoppable

    study_dir = None
    try:
        with stoppable():  # the runner's own handlers take over while Ray Tune runs
            study = _load(space, sets, download, verbatim={"name": ("--name", name),
                                                                 "search.storage": ("--storage", storage)})
            _shared(results)
            # Building every model first makes a baseline that cannot be matched fail here, not in a trial.
            models = _models(study, space)
            study_dir = results / study.name
            resume = resume or (resume_or_start and (study_dir / "study.yaml").exists())
            from study import preflight

            preflight.check_run(study, study_dir, address, n_params=int(models["n_params"].max()))
            with lock.held(study_dir, fresh=not resume):
                if resume:
                    _same_study(study, space, study_dir)
                    if _nothing_left(study, study_dir):
                        _outcome(study, study_dir)
                        return
                typer.echo(_shown(models))
                reallocate = None  # on a cluster, as the study says: its nodes are not this machine
                if not address:  # compiling here would wait: projected
                    reallocate = _print_plan(study, compile_here=False).reallocates
                _run(study, study_dir, address, verbose, resume, reallocate)
                _outcome(study, study_dir)
    except UserError as err:
        _fail(err)
    except Stopped as stop:  # a new study's folder has gone again (lock.held)
        if study_dir is None or not (study_dir / "study.yaml").exists():
            typer.echo(f"{stop} before the study started: the same command runs it again", err=True)
        else:
            typer.echo(f"{stop}: the networks that finished are kept in {study_dir}; continue with: "
                       f"{_resume_command()}", err=True)
        raise typer.Exit(128 + stop.signum) from None


def _nothing_left(study: config.Study, study_dir: Path) -> bool:
    """Whether a study to resume already holds all its networks. Then no step is timed, no Ray
    starts and nothing trains: what its run left unsettled is settled, as a resume would. Read
    from ``trials.parquet`` as it is: rows a killed driver staged but did not add there are the
    runner's to take in (``results.finished``), by the resume that follows."""
    from study import tune

    networks, planned = _so_far(study, study_dir)
    if len(networks) < planned:
        return False
    typer.echo(f"{study_dir} holds all {planned} networks of this study, nothing left to train; "
               f"{tune.settle_resumed(study, study_dir, networks)}")
    return True


def _run(study: config.Study, study_dir: Path, address: str | None, verbose: bool, resume: bool,
         reallocate: bool | None) -> None:
    """``tune.run``; a write that failed for want of space is a message with the way on."""
    from study import preflight, results, tune

    try:
        tune.run(study, study_dir, address=address, verbose=verbose, resume=resume, reallocate=reallocate)
    except UserError:
        raise
    except Exception as err:
        full = preflight.disk_full(study_dir)
        if full is None:
            raise
        try:  # Optuna's trials left RUNNING are settled here if the storage can still write
            tune.settle_interrupted(study, study_dir, results.finished(study_dir))
            settled = "no Optuna trial is left running"
        except Exception:
            settled = "--resume settles the Optuna trials left running"
        while err.__cause__ or err.__context__:  # the innermost error names the failed write best
            err = err.__cause__ or err.__context__
        last = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        raise UserError(f"{full}: a write failed ({last}). Every result file is whole or absent and "
                        f"{settled}; free space, then continue with: {_resume_command()}") from None


def _outcome(study: config.Study, study_dir: Path) -> None:
    """What the run leaves: the next command, or how to resume, and the networks that failed."""
    from collections import Counter

    from study.results import failures

    rows, expected = _so_far(study, study_dir)  # as the run left them
    counts = Counter(rows.get("status", []))
    completed, failed = counts["COMPLETED"] + counts["STOPPED"], counts["ERROR"]
    if completed + failed < expected:  # Ray Tune returns early when interrupted (Ctrl-C)
        typer.echo(f"interrupted: {completed + failed} of {expected} networks finished; their results "
                   f"are in {study_dir}. Continue with: {_resume_command()}", err=True)
        raise typer.Exit(130)
    typer.echo(f"results in {study_dir}; next: study analyze {study_dir}")
    if failed:
        typer.echo(f"{failed} of {expected} networks failed (status ERROR, reason in trials.parquet); "
                   "the study went on without them:", err=True)
        for line in failures(rows):
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)


def _so_far(study: config.Study, study_dir: Path) -> tuple[pd.DataFrame, int]:
    """The network rows ``trials.parquet`` holds (each finished trial's; none where it is absent),
    and how many networks the study plans given them."""
    import pandas as pd

    from study.decisions import planned_networks

    trials = study_dir / "trials.parquet"
    rows = pd.read_parquet(trials) if trials.exists() else pd.DataFrame()
    return rows, planned_networks(study, rows)


def _resume_command() -> str:
    """This very command line with ``--resume``."""
    return " ".join(shlex.quote(a) for a in ["study", *sys.argv[1:]] if a != "--resume") + " --resume"


@app.command()
def trial(
    space: Space,
    sets: Sets = None,
    results: ResultsDir = Path("results"),
    seeds: Annotated[list[int] | None, typer.Option(
        "--seed", help="training seed, repeatable (default: 0..search.seeds-1, trained together)")] = None,
    download: Download = False,
) -> None:
    """One trial in this process, without Ray.

    The file's sections as they stand (after --set): the space is not sampled. Writes
    results/<name>-trial/ like a one-trial study."""
    from study import lock
    from study.tune.interrupts import Stopped, stoppable

    try:
        with stoppable():
            study = _load(space, sets, download)
            folder = results / f"{study.name}-trial"
            with lock.held(folder, fresh=True, elsewhere="--set name=NEW_NAME", discard=True) as study_dir:
                failed = _one_trial(study, study_dir, seeds or study.seeds())
    except UserError as err:
        _fail(err)
    except Stopped as stop:  # its folder has gone again, with any result written (lock.held)
        typer.echo(f"{stop}: the trial did not finish; the same command runs it again", err=True)
        raise typer.Exit(128 + stop.signum) from None
    if failed:
        raise typer.Exit(1)


def _one_trial(study: config.Study, study_dir: Path, seeds: list[int]) -> bool:
    """Train ``seeds`` of ``study`` as one trial, write its results to ``study_dir`` and print
    them; whether a network failed."""
    from study import results as result_files
    from study.train import fit
    from study.tune.interrupts import raise_if_dropped

    params = {key: resolution.current(study, key) for key in study.space}
    trial_id = f"trial-{uuid.uuid4().hex[:8]}"
    typer.echo(f"trial {trial_id}: {configuration(params, short=False)}, seeds {seeds}")

    def progress(row: dict, _snapshot: object) -> None:
        raise_if_dropped()  # a stop Python ignored ends the trial here, not after its last epoch
        typer.echo(f"  epoch {row['epoch']:3d}  train {row['train_loss']:.4f}  "
                   f"val {row['val_loss']:.4f}  (mean of {len(seeds)} seeds; {row['seconds']:.1f} s)")

    outcome = fit(study, seeds, report=progress)
    result_files.write_study(study_dir, study)
    result_files.write_trial(study_dir, trial_id, "tune", params, outcome, result_files.ran_on(study))
    result_files.consolidate(study_dir)
    for network in outcome.networks:
        typer.echo(f"seed {network.seed}: FAILED, {network.failure}" if network.failure else
                   f"seed {network.seed}: best epoch {network.best_epoch}, val {network.best_val_loss:.4f}, "
                   f"test {network.test_loss.mean():.4f}, exact {network.test_correct.mean():.3f}")
    typer.echo(f"on {outcome.device} in {outcome.wall_s:.1f} s -> {study_dir}")
    return any(network.failure for network in outcome.networks)


def _models(study: config.Study, space: Path) -> pd.DataFrame:
    """Every model the space can produce (``study.models.catalogue``); one that cannot be built
    (a baseline that cannot be matched) is a message."""
    from study.models.catalogue import catalogue

    try:
        return catalogue(study)
    except ValueError as err:
        raise UserError(f"{space}: {err}") from None


def _shown(table: pd.DataFrame) -> str:
    return table.astype(object).where(table.notna(), "").to_string(index=False)


def _print_plan(study: config.Study, compile_here: bool, cpus: int | None = None) -> Plan:
    """Prints the plan, and returns it; for this machine (no ``cpus``), with a note where other
    processes kept its CPUs busy as the steps were timed."""
    from study import busy, plan, preflight

    others = None if cpus else busy.Others()  # another node's load is not this machine's
    planned = plan.plan(study, cpus or preflight.local_cpus(), compile_here)
    for line in plan.lines(planned):
        typer.echo(line)
    note = others and others.note()
    if note:
        typer.echo(note)
    return planned


@app.command(name="plan")
def plan_(space: Space, sets: Sets = None, results: ResultsDir = Path("results"),
          cpus: Annotated[int | None, typer.Option(
              "--cpus", min=1, help="plan for a node of this many CPUs (default: this machine's); the "
                                    "steps are still timed here")] = None) -> None:
    """What a study would train, and how long it would take here.

    Stages, trials, networks, steps, memory and the time on this machine, from a few real timed
    steps of every distinct architecture. First the checks study run makes before it starts: a
    study it would refuse is that message, and no plan."""
    from study.tune.interrupts import Stopped, stoppable

    try:
        with stoppable():
            study = _load(space, sets, download=False)
            models = _models(study, space)
            from study import preflight

            try:
                preflight.check_run(study, results / study.name, None, int(models["n_params"].max()), cpus)
            except UserError as err:
                raise UserError(f"study run would refuse this study: {err}") from None
            _print_plan(study, compile_here=True, cpus=cpus)
            held = _held(study, space, results / study.name)
            if held:
                typer.echo(held)
    except UserError as err:
        _fail(err)
    except Stopped as stop:  # planning writes nothing a later plan or run would find half-done
        typer.echo(f"{stop}: no plan; the same command plans it again", err=True)
        raise typer.Exit(128 + stop.signum) from None


def _held(study: config.Study, space: Path, study_dir: Path) -> str | None:
    """What ``study_dir`` already holds, as ``study run`` would find it: another study, or this
    one's networks so far (read as they are: planning writes nothing)."""
    if not (study_dir / "study.yaml").exists():
        return None
    try:
        _same_study(study, space, study_dir)
    except UserError as err:
        return f"note: {err}, or give study run --name NEW_NAME for a folder of its own"
    rows, planned = _so_far(study, study_dir)
    if len(rows) >= planned:
        return f"note: {study_dir} holds all {planned} networks of this study: study analyze {study_dir}"
    return (f"note: {study_dir} holds {len(rows)} of the {planned} networks of this study (the estimate "
            "above is the whole study's); study run with the same file and --set values and --resume "
            "trains the rest")


@app.command()
def models(space: Space, sets: Sets = None) -> None:
    """Every model the space can produce.

    Its widths, parameters and forward FLOPs, and how closely each baseline matches."""
    try:
        study = _load(space, sets, download=False)
        typer.echo(_shown(_models(study, space)))
    except UserError as err:
        _fail(err)


@data_app.command()
def preview(
    space: Space,
    sets: Sets = None,
    out: Annotated[Path | None, typer.Option(help="where to write (default: results/<name>-data)")] = None,
    download: Download = False,
) -> None:
    """Sample grids of each split, and the dataset's statistics.

    A PNG per split, each image shown with its labels."""
    try:
        study = _load(space, sets, download)
    except UserError as err:
        _fail(err)
    from study.data import preview as data_preview

    sources: set[str] = set()

    def built(label: str, dataset) -> None:
        if dataset.source not in sources:  # one line per distinct source, not per setting
            sources.add(dataset.source)
            typer.echo(f"source: {dataset.source}")
        images = sum(len(split.images) for split in dataset.splits.values())
        typer.echo(f"dataset {label + ' ' if label else ''}{dataset.fingerprint}: {images:,} images")
        for imbalance in data_preview.imbalances(dataset):
            typer.echo(f"warning: {imbalance}; a comparison across these splits also measures class "
                       f"frequency (flagged above {data_preview.IMBALANCE:.0%} and beyond chance)")

    out = out or Path("results") / f"{study.name}-data"
    try:
        table = data_preview.write(study, out, built)
    except UserError as err:
        _fail(err)
    index = ["setting", "split"] if "setting" in table else ["split"]
    typer.echo(table.set_index(index).astype(object).T.to_string())  # counts stay integers
    typer.echo(f"grids and statistics.csv in {out}")


@app.command()
def analyze(
    results_dir: Annotated[Path, typer.Argument(help="a study's results, e.g. results/smoke")],
    by: Annotated[str | None, typer.Option(help="space key to compare by")] = None,
    split: Annotated[str | None, typer.Option(
        help="a property of the test image to split the tables by: withheld, digits, colours, or "
             "occlusion (in quartiles)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the tables as one JSON object")] = False,
    out: Annotated[Path | None, typer.Option(
        help="where the report goes (default: RESULTS_DIR/report), for results one cannot write")] = None,
) -> None:
    """Compare each level with the reference; write report/.

    Retrained networks are the unit; the original's per-image Wilcoxon test is reported beside."""
    from study import analysis, report

    try:
        result = analysis.analyze(results_dir, by, split)
        where = report.write(result, results_dir, out)
    except UserError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    typer.echo(f"study {result.study.name}: {result.study.question}")
    typer.echo(f"data: {result.data_source} (fingerprint {result.data_fingerprint})")
    typer.echo(f"factor {result.factor}; seed level: Welch's t on each network's mean test loss, "
               f"Holm over {counted(result.family, 'level')}")
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    for line in report.reading(result):
        typer.echo(f"  {line}")
    if result.subgroups is not None:
        typer.echo(f"subgroups by {split}: {where / 'subgroups.csv'}")
    typer.echo(f"report: {where / 'report.md'}")
