"""One trial: fit a model, keep the epoch with the best validation loss, evaluate it per sample.

The whole dataset lives on the training device as uint8 tensors and batches are taken by index,
so there are no loader workers and no host-device copies inside the loop. ``fit`` knows nothing
of Ray: it calls ``report`` once per epoch with plain numbers.

Example:
    >>> from study.config import load
    >>> study = load("searchspaces/smoke.yaml", ["train.epochs=1", "data.n_images=300"])
    >>> result = fit(study, seed=0)
    >>> result.best_epoch, len(result.test_loss)
    (0, 30)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from study.config import Study
from study.data import Dataset, build
from study.models import build_network, forward_flops, n_params

EVAL_BATCH = 1024


@dataclass
class TrialResult:
    epochs: list[dict]  # one dict per epoch: epoch, train_loss, val_loss, seconds
    best_epoch: int
    best_val_loss: float
    best_state: dict[str, torch.Tensor]  # on the CPU
    test_loss: np.ndarray  # (n,) float32: mean BCE over the 10 classes, per test image
    test_logits: np.ndarray  # (n, 10) float32
    test_correct: np.ndarray  # (n,) bool: predicted digit set (logit > 0) == true set
    n_params: int
    flops: int
    device: str
    wall_s: float
    dataset: Dataset


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _on(device: torch.device, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return tensor if dtype is None else tensor.to(dtype)


def as_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 B×H×W (grayscale) or B×3×H×W (colour) → float B×C×H×W in [0, 1]."""
    return (images.unsqueeze(1) if images.dim() == 3 else images).float().div_(255)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor):
    """Per-sample losses (mean BCE over classes) and logits, in eval mode."""
    model.eval()
    losses, logits = [], []
    for lo in range(0, len(images), EVAL_BATCH):
        out = model(as_inputs(images[lo : lo + EVAL_BATCH]))
        target = targets[lo : lo + EVAL_BATCH]
        losses.append(F.binary_cross_entropy_with_logits(out, target, reduction="none").mean(1))
        logits.append(out)
    return torch.cat(losses), torch.cat(logits)


def fit(study: Study, seed: int, report: Callable[[dict], None] | None = None) -> TrialResult:
    """Train ``study``'s model (its space already resolved) with ``seed``; see module doc."""
    start = time.perf_counter()
    cfg = study.train
    device = pick_device(cfg.device)
    data = build(study.data)
    train_x, val_x, test_x = (_on(device, data[s].images) for s in ("train", "val", "test"))
    train_y, val_y, test_y = (
        _on(device, data[s].targets, torch.float32) for s in ("train", "val", "test")
    )

    torch.manual_seed(seed)
    canvas, channels = study.data.canvas, study.data.channels()
    model = build_network(study.model, canvas, channels).to(device)
    flops = forward_flops(model, canvas, channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator(device=device).manual_seed(seed)

    epochs: list[dict] = []
    best_val, best_epoch, best_state = float("inf"), -1, {}
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train_x), device=device, generator=order)
        # A final batch of one sample would break batch norm's statistics: it is skipped.
        n_used = len(perm) - (len(perm) % cfg.batch_size == 1)
        total = torch.zeros((), device=device)
        for lo in range(0, n_used, cfg.batch_size):
            idx = perm[lo : min(lo + cfg.batch_size, n_used)]
            loss = F.binary_cross_entropy_with_logits(model(as_inputs(train_x[idx])), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        val_loss = evaluate(model, val_x, val_y)[0].mean().item()
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        row = {
            "epoch": epoch,
            "train_loss": total.item() / n_used,
            "val_loss": val_loss,
            "seconds": time.perf_counter() - t0,
        }
        epochs.append(row)
        if report is not None:
            report({**row, "best_val_loss": best_val, "best_epoch": best_epoch})

    if best_epoch < 0:
        raise FloatingPointError(f"training diverged: validation loss was {val_loss} every epoch")
    model.load_state_dict(best_state)
    losses, logits = evaluate(model, test_x, test_y)
    predicted = logits > 0
    correct = (predicted == test_y.bool()).all(1)
    return TrialResult(
        epochs=epochs,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        best_state=best_state,
        test_loss=losses.float().cpu().numpy(),
        test_logits=logits.float().cpu().numpy(),
        test_correct=correct.cpu().numpy(),
        n_params=n_params(model),
        flops=flops,
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        wall_s=time.perf_counter() - start,
        dataset=data,
    )
