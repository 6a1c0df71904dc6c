"""One trial: a configuration trained for all its seeds at once, each seed keeping its
best-validation epoch, then evaluated per test sample.

The S networks of a trial are stacked (``study.models.Stacked``) and trained as one computation.
Seed s gets the network a one-seed run with seed s gets: the same initialisation (drawn from
``torch.manual_seed(s)``), the same batch order (its own generator), its own best epoch; the
numbers agree to float rounding, because a grouped convolution sums in another order than S
separate ones. The whole dataset lives on the training device as uint8 tensors and batches are
taken by index, so nothing crosses from host to device inside the loop. The step and the
evaluation go through ``torch.compile`` where that pays (``train.compile``; ``study.compiled``),
and on CUDA the step is captured once as a CUDA graph and replayed (``train.cuda_graphs``;
``study.cuda_graph``).
A network whose loss stops being finite or diverges (``failure``) stops counting: its best
epoch stays where it was, the others train on, and the trial stops early when none is left.
``fit`` knows nothing of Ray: it calls ``report`` once per epoch with plain numbers and a way to
take a ``Snapshot`` of everything the loop needs to go on. ``fit(..., resume=snapshot)`` continues
an interrupted trial from the epoch after it, to the networks an uninterrupted one trains (the
same numbers where the machine and thread count are the same), and ``conclude`` finishes a trial
that a scheduler stopped early from its snapshot.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/smoke.yaml", ["train.epochs=1", "data.n_images=300"])
    >>> result = fit(study, seeds=[0, 1])
    >>> [(n.seed, n.best_epoch, len(n.test_loss)) for n in result.networks]
    [(0, 0, 30), (1, 0, 30)]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from study.compiled import ShapeSpecialised, pays, start_compiling
from study.config import Study
from study.cuda_graph import Replayed
from study.data import Dataset, build
from study.models import Stacked, build_network, forward_flops, n_params
from study.sections import TrainConfig

# Images × seeds per evaluation chunk. Per image, AttConv holds several C·k²·L tensors: at 1024
# images for each of 10 seeds one of them is 2 GB, and a trial on a CPU ran out of memory.
EVAL_BATCH = 1024
# A network has diverged when its training or validation loss exceeds this multiple of the
# untrained network's validation loss (BCE near 0.69; a diverged one is orders of magnitude above).
DIVERGED = 10.0


@dataclass
class Network:
    """What one seed's network leaves behind."""

    seed: int
    failure: str | None  # why it stopped counting (diverged, loss not finite); None if it trained
    epochs: list[dict]  # one dict per epoch: epoch, train_loss, val_loss, seconds
    best_epoch: int
    best_val_loss: float
    best_state: dict[str, torch.Tensor]  # a single network's state_dict, on the CPU
    test_loss: np.ndarray  # (n,) float32: mean BCE over the 10 classes, per test image
    test_logits: np.ndarray  # (n, 10) float32
    test_correct: np.ndarray  # (n,) bool: predicted digit set (logit > 0) == true set


@dataclass
class TrialResult:
    networks: list[Network]  # one per seed, in the order the seeds were given
    n_params: int  # of one network
    flops: int  # forward FLOPs of one network for one image
    device: str
    wall_s: float  # the whole trial, every seed together
    dataset: Dataset
    stopped: str | None = None  # why a scheduler stopped the trial before train.epochs, if it did


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def as_images(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N×H×W (grayscale) or N×3×H×W (colour) → uint8 N×C×H×W on ``device``."""
    images = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return images.unsqueeze(1) if images.dim() == 3 else images


def as_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float in [0, 1], the networks' input."""
    return images.to(torch.get_default_dtype()).div_(255)


def losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample loss: binary cross-entropy averaged over the 10 classes."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)


def inference(net: Stacked) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward(images)``: every seed's logits (S×n×10) for the same uint8 images."""
    return lambda images: net(as_inputs(images), shared=True)


def eval_chunk(seeds: int) -> int:
    """Images per evaluation chunk of ``seeds`` stacked networks: ``EVAL_BATCH`` in all."""
    return max(1, EVAL_BATCH // seeds)


@torch.no_grad()
def evaluate(net: Stacked, images: torch.Tensor, targets: torch.Tensor,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every seed's per-sample losses (S×n) and logits (S×n×10) on the same images, in eval mode,
    ``eval_chunk`` images at a time through ``forward`` (default: ``inference(net)``)."""
    net.eval()
    forward, chunk = forward or inference(net), eval_chunk(net.seeds)
    logits = torch.cat([forward(images[lo : lo + chunk]) for lo in range(0, len(images), chunk)], 1)
    return losses(logits, targets.expand(net.seeds, -1, -1)), logits


def failure(train_loss: float, val_loss: float, untrained: float, epoch: int) -> str | None:
    """Why a network stops counting after ``epoch``, or None: a loss that is not finite, or a
    training or validation loss above ``DIVERGED`` times the untrained network's validation loss
    (near 0.69). The training loss counts too: a network blown up by too large a step can fall
    back to predicting the class frequencies, a validation loss that looks sane."""
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        return f"loss not finite at epoch {epoch} (train {train_loss:.3g}, val {val_loss:.3g})"
    worst, which = max((train_loss, "training"), (val_loss, "validation"))
    if worst > DIVERGED * untrained:
        return (f"diverged at epoch {epoch}: {which} loss {worst:.3g} is over {DIVERGED:g} × the "
                f"untrained network's validation loss {untrained:.3g}")
    return None


def make_optimizer(params: list[torch.Tensor], cfg: TrainConfig,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """The optimiser ``train.optimizer`` names. All three act element-wise, so stacked seeds stay
    independent. ``capturable`` keeps Adam's step count on the device, for CUDA graphs."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, capturable=capturable)


def training_step(net: Stacked, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``step(idx)``: one optimiser step of every seed on its own batch, ``idx`` (S×B) indexing
    ``images`` and ``targets``; returns each seed's mean loss on its batch."""

    def step(idx: torch.Tensor) -> torch.Tensor:
        loss = losses(net(as_inputs(images[idx])), targets[idx]).mean(1)  # S
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # seeds share no parameter: each gets its own loss's gradient
        optimizer.step()
        return loss.detach()

    return step


@dataclass
class Snapshot:
    """A trial as far as it has trained: what ``conclude`` needs to finish it, should a scheduler
    stop it before ``train.epochs``, and what ``fit`` needs to go on from the next epoch, should
    the trial be interrupted. Plain values and tensors, so ``torch.load`` reads it back with
    ``weights_only``."""

    seeds: list[int]
    best_state: dict[str, torch.Tensor]  # every seed's best-validation state, stacked, on the CPU
    best_epoch: list[int]
    best_val_loss: list[float]
    failures: list[str | None]
    history: list[list[dict]]  # per seed, one dict per epoch trained
    seconds: float  # since the trial started
    epochs: int  # epochs trained: the next one to train
    state: dict[str, torch.Tensor]  # every seed's state now, stacked, on the CPU
    optimizer: dict  # the optimiser's state_dict
    orders: list[torch.Tensor]  # each seed's batch-order generator state
    untrained: list[float]  # each seed's validation loss before training (the divergence rule's base)
    compiled: bool  # the step was compiled (train.compile: auto decides after the first epoch, and
    # once more after the third: study.compiled)

    def save(self, path: Path) -> None:
        torch.save(vars(self), path)

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        return cls(**torch.load(path, weights_only=True))


def snapshot_bytes(n_params: int, seeds: int) -> int:
    """About what a ``Snapshot`` of ``seeds`` networks of ``n_params`` takes on disk: each seed's
    state now and at its best epoch, and Adam's two moments, in float32."""
    return 4 * 4 * n_params * seeds


def _networks(study: Study, seeds: Sequence[int], device: torch.device) -> list[torch.nn.Module]:
    """One network per seed, each initialised from ``torch.manual_seed(seed)``."""
    canvas, channels = study.data.canvas, study.data.channels()
    networks = []
    for seed in seeds:
        torch.manual_seed(seed)
        networks.append(build_network(study.model, canvas, channels).to(device))
    return networks


def fit(study: Study, seeds: Sequence[int],
        report: Callable[[dict, Callable[[], Snapshot]], None] | None = None,
        resume: Snapshot | None = None) -> TrialResult:
    """Train ``study``'s model (its space already resolved) once per seed; see the module doc.
    ``report(metrics, snapshot)`` is called after every epoch; ``snapshot()`` returns the trial so
    far, for a caller that may be stopped or interrupted before the end (``conclude`` finishes a
    stopped one; ``fit(..., resume=snapshot)`` goes on with an interrupted one)."""
    start = time.perf_counter()
    cfg = study.train
    device = pick_device(cfg.device)
    data = build(study.data)
    train_x, val_x = (as_images(data[s].images, device) for s in ("train", "val"))
    train_y, val_y = (torch.from_numpy(data[s].targets).to(device, torch.get_default_dtype())
                      for s in ("train", "val"))

    net = Stacked(_networks(study, seeds, device))
    graphed = device.type == "cuda" and cfg.cuda_graphs
    optimizer = make_optimizer(net.parameters(), study.train, capturable=graphed)
    orders = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    S, n = len(seeds), len(train_x)
    history: list[list[dict]] = [[] for _ in seeds]
    best_val, best_epoch = [float("inf")] * S, [-1] * S
    best_state = {name: value.detach().clone() for name, value in net.state().items()}
    failures: list[str | None] = [None] * S
    first, compiled = 0, cfg.compile is True
    if resume is None:
        untrained = evaluate(net, val_x, val_y)[0].mean(1).tolist()
    else:  # where an interrupted run of this trial left off, to the last bit it saved
        if resume.seeds != list(seeds):
            raise ValueError(f"a snapshot of seeds {resume.seeds} cannot resume seeds {list(seeds)}")
        net.load_state({name: value.to(device) for name, value in resume.state.items()})
        best_state = {name: value.to(device) for name, value in resume.best_state.items()}
        optimizer.load_state_dict(resume.optimizer)
        for generator, saved in zip(orders, resume.orders, strict=True):
            generator.set_state(saved)
        history, failures = [list(h) for h in resume.history], list(resume.failures)
        best_val, best_epoch = list(resume.best_val_loss), list(resume.best_epoch)
        untrained, first, compiled = list(resume.untrained), resume.epochs, resume.compiled
        if all(failures):  # it had stopped early: no network was left to train
            first = cfg.epochs
        start -= resume.seconds

    eager = training_step(net, optimizer, train_x, train_y)

    def prepared(compiled: bool) -> tuple[Callable, Callable]:
        """The step and the evaluation's forward, compiled or not (``study.compiled``)."""
        if compiled:
            start_compiling(torch.get_num_threads())
        step = ShapeSpecialised(eager, compiled)
        return Replayed(step) if graphed else step, ShapeSpecialised(inference(net), compiled)

    step, forward = prepared(compiled)
    # A final batch of one sample would break batch norm's statistics: it is skipped.
    n_used = n - (n % cfg.batch_size == 1)

    def snapshot(epochs: int) -> Snapshot:
        def cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {name: value.detach().to("cpu", copy=True) for name, value in tensors.items()}

        optimizer_state = optimizer.state_dict()
        optimizer_state["state"] = {k: cpu(v) for k, v in optimizer_state["state"].items()}
        return Snapshot(list(seeds), cpu(best_state), list(best_epoch), list(best_val), list(failures),
                        [list(h) for h in history], time.perf_counter() - start, epochs, cpu(net.state()),
                        optimizer_state, [g.get_state().cpu() for g in orders], list(untrained), compiled)

    for epoch in range(first, cfg.epochs):
        t0 = time.perf_counter()
        net.train()
        perms = torch.stack([torch.randperm(n, device=device, generator=g) for g in orders])
        total = torch.zeros(S, device=device)
        for lo in range(0, n_used, cfg.batch_size):
            idx = perms[:, lo : min(lo + cfg.batch_size, n_used)]
            total += step(idx) * idx.shape[1]
        val_loss = evaluate(net, val_x, val_y, forward)[0].mean(1)
        train_loss, seconds = (total / n_used).tolist(), time.perf_counter() - t0
        # Once a trial, at its third epoch where this process compiled its second (the warm-up's:
        # compiled is set only after epoch 0 or by the snapshot it started from): a compiled epoch
        # no faster than the eager first sends the rest back to eager.
        if (cfg.compile == "auto" and compiled and epoch == 2 and first <= 1
                and seconds >= history[0][0]["seconds"]):
            compiled = False
            step, forward = prepared(False)
        if epoch == 0 and not compiled and pays(study, seconds):
            compiled = True
            step, forward = prepared(True)
        for s in range(S):
            failures[s] = failures[s] or failure(train_loss[s], float(val_loss[s]), untrained[s], epoch)
        healthy = torch.tensor([f is None for f in failures], device=device)
        improved = (val_loss < torch.tensor(best_val, device=device)) & healthy
        for name, value in net.state().items():
            best_state[name][improved] = value.detach()[improved]
        val_loss = val_loss.tolist()
        for s, better in enumerate(improved.tolist()):
            if better:
                best_val[s], best_epoch[s] = val_loss[s], epoch
            history[s].append({"epoch": epoch, "train_loss": train_loss[s], "val_loss": val_loss[s],
                               "seconds": seconds})
        if report is not None:  # a configuration that lost a network has no value: Optuna fails it
            report({"epoch": epoch, "train_loss": float(np.mean(train_loss)),
                    "val_loss": float(np.mean(val_loss)),
                    "best_val_loss": float(np.mean(best_val)) if all(healthy.tolist()) else float("nan"),
                    "seconds": seconds}, partial(snapshot, epoch + 1))
        if not any(healthy.tolist()):
            break
    return conclude(study, snapshot(len(history[0])), data=data)


def conclude(study: Study, snapshot: Snapshot, stopped: str | None = None,
             data: Dataset | None = None) -> TrialResult:
    """Every seed's best-validation state evaluated per test sample: how ``fit`` ends, and how a
    trial stopped early by a scheduler (``stopped`` says why) is finished from its last snapshot."""
    start = time.perf_counter()
    device = pick_device(study.train.device)
    data = data or build(study.data)
    test_x = as_images(data["test"].images, device)
    test_y = torch.from_numpy(data["test"].targets).to(device, torch.get_default_dtype())
    networks = _networks(study, snapshot.seeds, device)
    canvas, channels = study.data.canvas, study.data.channels()
    size, flops = n_params(networks[0]), forward_flops(networks[0], canvas, channels)
    net = Stacked(networks)
    net.load_state(snapshot.best_state)
    test_loss, test_logits = evaluate(net, test_x, test_y)
    correct = ((test_logits > 0) == test_y.bool()).all(-1)
    results = [
        Network(seed=seed, failure=snapshot.failures[s], epochs=snapshot.history[s],
                best_epoch=snapshot.best_epoch[s], best_val_loss=snapshot.best_val_loss[s],
                best_state=net.state_dict(s), test_loss=test_loss[s].float().cpu().numpy(),
                test_logits=test_logits[s].float().cpu().numpy(), test_correct=correct[s].cpu().numpy())
        for s, seed in enumerate(snapshot.seeds)
    ]
    return TrialResult(
        networks=results, n_params=size, flops=flops,
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        wall_s=snapshot.seconds + time.perf_counter() - start, dataset=data, stopped=stopped,
    )
