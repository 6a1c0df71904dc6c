"""What a study will cost, known before it starts: stages, networks, steps, memory, time here.

``plan`` counts the trials and training steps of every stage, sizes the memory a trial needs, and
times a few real training steps of every distinct architecture on this machine, with the
threads a trial gets (``resources.cpu``) and its seeds stacked, eager and, where ``train.compile``
would compile, compiled (which also fills the compile cache the trials then read). From those it
projects each stage's wall time with ``resources.cpu`` per trial and as many trials at once as
the CPUs allow, in the order the trials start, with the CPUs of finished trials handed to the
running ones where the study reallocates them (``resources.reallocate``; ``auto`` where that
saves more time than reusing each finished trial's worker for the next), and how well the trials
use the CPUs. What it cannot see: other load on the machine, and a cluster's other nodes.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/smoke.yaml", ["data.n_images=300", "train.epochs=2"])
    >>> [(s.name, s.trials, s.networks, s.steps) for s in stages(study)]
    [('tune', 2, 6, 16)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from study import footprint
from study.compiled import GAIN, WARMUP_S, ShapeSpecialised, pays, start_compiling
from study.config import Study
from study.data.dataset import sample, split_sizes
from study.footprint import Network, dataset_bytes
from study.models import Stacked, attconv_cpu, build_network, n_params
from study.resolution import combinations, resolve, section_keys
from study.schedule import TRIAL_START_S, schedule, start_share, threads
from study.train import (
    as_images,
    eval_chunk,
    inference,
    make_optimizer,
    pick_device,
    snapshot_bytes,
    training_step,
)
from study.words import counted, duration

TIMED_STEPS = 4  # after two untimed ones
TIMED_S = 0.5  # a step's timing stops once this has passed (after one timed step at least)
PLAN_BYTES = 256 * 2**20  # activations a timed step may hold; a larger step is timed on fewer images, scaled
EVAL_TIMED = 64  # images whose evaluation is timed; the time per image scales to the splits
# A trial on the worker a finished trial left (Ray's reused actors, which reallocation rules out):
# 0.5-1 s between one LeNet-5 trial's end and the next one's first epoch, against 6-7 s for a new
# worker (2-core Intel Xeon, 2026-12-05).
REUSED_START_S = 0.5
STUDY_START_S = 15.0  # the embedded Ray's start and the dataset's cache (measured here)


@dataclass(frozen=True)
class Stage:
    kind: str  # tune or confirm
    round: int  # of a sequential design (1 for a fixed number of seeds)
    trials: int
    seeds: int  # networks per trial, trained together (the most, where a level's are split)
    networks: int
    steps: int  # training steps of one trial (every seed at once), all epochs

    @property
    def name(self) -> str:
        return self.kind if self.round == 1 else f"{self.kind} round {self.round} (if undecided)"


@dataclass(frozen=True)
class Architecture:
    """One distinct network of the space, timed here with a trial's seeds stacked."""

    label: str
    share: float  # of the tuning configurations that use it
    n_params: int
    step_ms: float  # one training step of all seeds, eager
    compiled_ms: float | None  # the same compiled, where the study compiles; else None
    warmup_s: float  # the compile's warm-up as measured now (short when the cache held it)
    eval_ms: float  # evaluating one image on every seed
    measured: bool  # compiled_ms timed here; else projected (GAIN, WARMUP_S)
    timed: float  # the share of a step's images timed (1: all; less where the step is too large)


def stages(study: Study, slots: int = 1, gpu: float = 0) -> list[Stage]:
    """The trials, networks and training steps of each stage ``study run`` runs with ``slots``
    trials at once, each with ``gpu`` of a GPU (where fixed configurations are retrained, a level's
    seeds may be split over several trials: ``Study.seed_groups``)."""
    n_train = split_sizes(study.data.n_images, study.data.split)[0]
    batch = study.train.batch_size
    per_epoch = math.ceil((n_train - (n_train % batch == 1)) / batch)  # a last batch of one is skipped
    steps = per_epoch * study.train.epochs
    out = _rounds(study, "tune", study.n_configurations(), steps, slots, gpu)
    if study.confirms():
        out += _rounds(study, "confirm", study.n_levels(), steps, slots, gpu)
    return out


def _rounds(study: Study, name: str, levels: int, steps: int, slots: int, gpu: float) -> list[Stage]:
    """A stage's rounds: one, or a sequential design's, each as if every level went on. The tuning
    stage's first round is ``Study.first_round``; the rest retrain fixed configurations, each
    level's seeds in ``seed_groups`` (a trial's seeds: the largest group)."""
    out = []
    for look in range(1, len(study.looks(name)) + 1):
        seeds = study.seeds(name, look)
        groups = (study.first_round(slots, gpu) if name == "tune" and look == 1
                  else study.seed_groups(seeds, levels, slots, gpu))
        out.append(Stage(name, look, levels * len(groups), len(groups[0]), levels * len(seeds), steps))
    return out


def architectures(study: Study, seeds: int, compile_here: bool) -> list[Architecture]:
    """Every distinct network the space can build, timed with ``seeds`` stacked; with
    ``compile_here``, compiled where the study would compile, else projected from the eager step."""
    return [_timed(net, seeds, compile_here) for net in footprint.networks(study)]


def _sized(study: Study, seeds: int, saved: footprint.Activations) -> tuple[int, int]:
    """Seeds and images per seed to time a step of ``seeds`` × ``train.batch_size`` on: the step
    itself where its activations (``saved`` per seed) fit ``PLAN_BYTES``, else fewer images (and,
    past one image per seed, fewer seeds) whose time scales with their count."""
    batch = study.train.batch_size
    fits = (PLAN_BYTES // seeds - saved.fixed) // max(1, saved.per_image)
    if fits >= 2:
        return seeds, min(batch, fits)
    return max(1, PLAN_BYTES // (saved.fixed + 2 * saved.per_image)), 2


def _timed(network: Network, seeds: int, compile_here: bool) -> Architecture:
    study, batch = network.study, network.study.train.batch_size
    device = pick_device(study.train.device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads(study.resources.cpu))
    try:
        canvas, channels = study.data.canvas, study.data.channels()
        saved = footprint.activations(study)
        timed_seeds, timed_batch = _sized(study, seeds, saved)
        timed = timed_seeds * timed_batch / (seeds * batch)
        nets = [build_network(study.model, canvas, channels).to(device) for _ in range(timed_seeds)]
        net = Stacked(nets)
        pool = max(timed_seeds * timed_batch, EVAL_TIMED)
        made = sample(study.data, pool)
        images, pool = as_images(made.images, device), len(made.images)
        targets = torch.from_numpy(made.targets).to(device, torch.get_default_dtype())
        optimizer = make_optimizer(net.parameters(), study.train)
        step = training_step(net, optimizer, images, targets)
        batches = (torch.randint(pool, (timed_seeds, timed_batch), device=device) for _ in iter(int, 1))
        step_ms = timed_ms(step, batches, device, budget_s=TIMED_S) / timed
        n_train = split_sizes(study.data.n_images, study.data.split)[0]
        epoch_s = step_ms / 1000 * n_train / batch
        compiles = study.train.compile is True or pays(study, epoch_s)
        compiled_ms, warmup = None, 0.0
        measured = compile_here and timed == 1  # a compile of another shape fills no cache a trial reads
        if compiles and not measured:
            compiled_ms, warmup = step_ms * (1 - GAIN), WARMUP_S
        elif compiles:
            start_compiling(torch.get_num_threads())
            fast = ShapeSpecialised(step)
            start = time.perf_counter()
            fast(next(batches))
            warmup = time.perf_counter() - start
            compiled_ms = timed_ms(fast, batches, device, budget_s=TIMED_S)
        net.eval()
        forward = inference(net)
        chunk = images[: max(1, min(EVAL_TIMED, eval_chunk(timed_seeds),
                                    PLAN_BYTES // (2 * timed_seeds * max(1, saved.largest))))]
        with torch.no_grad():
            eval_ms = timed_ms(lambda _: forward(chunk), batches, device, steps=2, warmup=1,
                               budget_s=TIMED_S) / len(chunk) * seeds / timed_seeds
        return Architecture(network.label, network.share, n_params(nets[0]), step_ms, compiled_ms, warmup,
                            eval_ms, measured=measured, timed=timed)
    finally:
        torch.set_num_threads(before)


def back_to_eager(study: Study, arch: Architecture) -> bool:
    """Whether a trial of ``arch`` goes back to eager after two compiled epochs: under
    ``train.compile: auto``, where its compiled step was timed no faster (``study.compiled``)."""
    return study.train.compile == "auto" and arch.compiled_ms is not None and arch.compiled_ms >= arch.step_ms


def timed_ms(fn: Callable, batches: Iterator, device: torch.device, steps: int = TIMED_STEPS,
             warmup: int = 2, budget_s: float | None = None) -> float:
    """Milliseconds per call of ``fn(next(batches))`` over ``steps`` calls, after ``warmup`` calls
    (on CUDA: waiting for the device, and past a CUDA graph's capture); with ``budget_s``, fewer
    calls where they take longer (one warm-up and one timed call at least).

    Example:
        >>> 0 < timed_ms(lambda batch: sum(batch), iter(lambda: range(100), None), torch.device("cpu"))
        True
    """
    def synced() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    began = synced()
    for k in range(warmup):
        if k and budget_s is not None and synced() - began > budget_s / 2:
            break
        fn(next(batches))
    start = done = synced()
    timed = 0
    while timed < steps and not (timed and budget_s is not None and done - began > budget_s):
        fn(next(batches))
        timed += 1
        done = synced()
    return (done - start) / timed * 1000


@dataclass(frozen=True)
class Plan:
    study: Study
    stages: list[Stage]
    architectures: dict[str, list[Architecture]]  # per stage
    slots: int  # trials at once
    device: str
    attconv_path: str | None  # how AttConv runs here, where the space has it and trains on the CPU
    reallocates: bool  # the CPUs shared out among the running trials (``schedule``)

    def trial_s(self, stage: Stage, arch: Architecture, reused: bool = False) -> float:
        """One trial of ``stage`` on ``arch``: start (on a new worker, or ``reused``: on one a
        finished trial left), every epoch's steps and validation, the test."""
        study, epochs = self.study, self.study.train.epochs
        per_epoch = stage.steps / epochs
        n_val, n_test = split_sizes(study.data.n_images, study.data.split)[1:]
        evaluated = epochs * n_val + n_test
        eager, compiled = arch.step_ms / 1000, (arch.compiled_ms or 0) / 1000
        if arch.compiled_ms is None:
            train = stage.steps * eager
        elif study.train.compile is True:
            train = arch.warmup_s + stage.steps * compiled
        elif back_to_eager(study, arch):  # two epochs compiled, the warm-up's and the one timed
            train = (stage.steps - 2 * per_epoch) * eager + arch.warmup_s + 2 * per_epoch * compiled
        else:  # auto: the first epoch eager
            train = per_epoch * eager + arch.warmup_s + (stage.steps - per_epoch) * compiled
        start = REUSED_START_S if reused else TRIAL_START_S
        return start + train + evaluated * arch.eval_ms / 1000

    def schedule(self, stage: Stage, reallocate: bool | None = None) -> tuple[float, float]:
        """The stage's wall time and its use of the CPUs (``schedule``): its trials, architectures
        taking turns, ``slots`` at a time, each waiting trial starting when one ends, on the worker
        of the one that ended unless CPUs are reallocated (``reallocate``; default: as the plan
        says)."""
        reallocate = self.reallocates if reallocate is None else reallocate
        archs = self.architectures[stage.name]
        # Each architecture's count of trials by its share, rounded so that they add up.
        exact = [a.share * stage.trials for a in archs]
        counts = [math.floor(e) for e in exact]
        for k in sorted(range(len(archs)), key=lambda k: counts[k] - exact[k])[: stage.trials - sum(counts)]:
            counts[k] += 1
        order = [a for turn in range(max(counts)) for a, n in zip(archs, counts, strict=True) if turn < n]
        seconds = [self.trial_s(stage, a, reused=not reallocate and k >= self.slots)
                   for k, a in enumerate(order)]
        return schedule(seconds, self.slots, reallocate)

    def wall(self, reallocate: bool | None = None) -> float:
        """The stages' wall time (``schedule``), the study's start left out."""
        return sum(self.schedule(stage, reallocate)[0] for stage in self.stages)

    def at_once(self) -> int:
        """The most trials that run at once: the slots, or a stage's trials where fewer."""
        return min(self.slots, max(s.trials for s in self.stages))

    def checkpoint_bytes(self) -> int:
        """Disk the checkpoints of the trials running at once take (the latest epoch of each)."""
        largest = max(snapshot_bytes(a.n_params, s.seeds) for s in self.stages
                      for a in self.architectures[s.name])
        return self.at_once() * largest

    def memory(self) -> int:
        """Bytes the trials running at once hold (``study.footprint``)."""
        return self.at_once() * footprint.trial_bytes(self.study)


def plan(study: Study, cpus: int, compile_here: bool = True) -> Plan:
    """The plan of ``study`` on this machine, with ``cpus`` CPUs for the trials; with
    ``compile_here``, the compiled steps are timed (a compile's warm-up each, which fills the cache
    the trials read), else projected from the eager ones."""
    device = pick_device(study.train.device)
    name = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)
    slots, gpu = study.trials_at_once(cpus), 0 if device.type == "cpu" else 1
    parts = stages(study, slots, gpu)
    by_seeds = {seeds: architectures(study, seeds, compile_here) for seeds in {s.seeds for s in parts}}
    timed = {s.name: by_seeds[s.seeds] for s in parts}
    keys = section_keys(study, "model")
    attention = any(resolve(study, params).model.attention.layers for params in combinations(study, keys))
    path = attconv_cpu.path() if attention and device.type == "cpu" else None
    p = Plan(study, parts, timed, slots, name, path, study.reallocates(gpu))
    if p.reallocates and study.resources.reallocate == "auto":
        # Moving CPUs restarts a trial on a new worker, and rules out reusing workers: for short
        # trials (a smoke study, a search of many quick ones) the workers' starts cost more.
        p = replace(p, reallocates=p.wall(True) < p.wall(False))
    return p


def lines(p: Plan) -> list[str]:
    """The plan as a person reads it."""
    study, out = p.study, []
    groups = _grouped(p.stages)
    for label, (stage, *more) in groups:
        most = "up to " if stage.trials * stage.seeds > stage.networks else ""  # seeds split unevenly
        share = start_share(p.slots, stage.trials) if p.reallocates else 1  # as the run starts them
        starts = f", each starting on {counted(threads(study.resources.cpu * share), 'thread')}" \
            if share > 1 else ""
        out.append(f"{label}{', each' if more else ''}: {counted(stage.trials, 'trial')} × "
                   f"{most}{counted(stage.seeds, 'seed')} = "
                   f"{stage.networks} networks{starts}; {stage.steps:,} training steps per trial "
                   f"({counted(study.train.epochs, 'epoch')})")
    if p.attconv_path:
        out.append(p.attconv_path)
    out.append(f"memory: {dataset_bytes(study) / 2**20:,.0f} MiB of images per process; "
               f"about {p.memory() / 2**30:.2f} GiB for the {counted(p.at_once(), 'trial')} at once")
    timed_seeds = set()
    for stage in p.stages:
        if stage.seeds in timed_seeds:
            continue  # as many seeds as a stage above (a later round, say): the same steps
        timed_seeds.add(stage.seeds)
        for a in p.architectures[stage.name]:
            how = "" if a.measured else " (projected)"
            part = "" if a.timed == 1 else f" (timed on {a.timed:.1%} of its images and scaled)"
            compiled = (f", compiled{how} {a.compiled_ms:.1f} ms after {a.warmup_s:.0f} s of warm-up"
                        if a.compiled_ms is not None else ", eager")
            if back_to_eager(study, a):
                compiled += " (no faster: eager again after two compiled epochs)"
            out.append(f"  {stage.name} {a.label}: {a.step_ms:.1f} ms per step of "
                       f"{counted(stage.seeds, 'seed')}{part}{compiled}; "
                       f"a trial ≈ {duration(p.trial_s(stage, a))}")
    out.append(f"checkpoints: about {p.checkpoint_bytes() / 2**20:,.0f} MiB on disk while the trials run "
               "(each trial's latest epoch; removed once its results are written)")
    schedules = {s.name: p.schedule(s) for s in p.stages}
    shown = [f"{duration(STUDY_START_S)} start"]
    for label, group in groups:
        each = schedules[group[0].name][0]
        shown.append(f"{len(group)} × {duration(each)} {label}" if len(group) > 1 else
                     f"{duration(each)} {label}")
    total = STUDY_START_S + sum(wall for wall, _ in schedules.values())
    cpus = p.slots * study.resources.cpu
    cpus_in_words = counted(cpus, "CPU")
    at_once = f"{cpus_in_words} shared out among the trials" if p.reallocates else \
        f"{counted(threads(study.resources.cpu), 'thread')} per trial, up to {p.at_once()} at once"
    out.append(f"estimated time on {p.device} ({at_once}): {' + '.join(shown)} = {duration(total)}")
    walls = sum(wall for wall, _ in schedules.values())
    use = sum(wall * share for wall, share in schedules.values()) / walls if walls else 1.0
    how = "the CPUs shared out: a stage's trials starting on even shares, those of finished trials " \
        "going to the running ones" if p.reallocates else \
        "each trial on its own CPUs to its end, the next reusing its worker"
    out.append(f"use of the {cpus_in_words}: {use:.0%} (the trials' "
               f"work over the CPUs' time), {how}")
    return out


def _grouped(stages: list[Stage]) -> list[tuple[str, list[Stage]]]:
    """The stages as lines: a sequential design's later rounds alike (the same trials and seeds)
    as one ("tune rounds 2–9 (if undecided)")."""
    groups: list[list[Stage]] = []
    for stage in stages:
        last = groups[-1][-1] if groups else None
        if last and last.round > 1 and (last.kind, last.round + 1, last.trials, last.seeds) == \
                (stage.kind, stage.round, stage.trials, stage.seeds):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return [(group[0].name if len(group) == 1 else
             f"{group[0].kind} rounds {group[0].round}–{group[-1].round} (if undecided)", group)
            for group in groups]
