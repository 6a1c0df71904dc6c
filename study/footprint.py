"""What a trial holds in memory, estimated before anything large is allocated.

A trial's worker holds its process (Python, torch, Ray), the images twice (the arrays it loads and
the tensors it trains from), its seeds' states (weights, gradients, Adam's two moments, the best
epoch's copy) and, while it trains, the activations one step's forward saves for its backward, or
while it evaluates, one chunk's largest activations. The activations are counted, not modelled:
a network's forward runs on fake tensors of the study's device (torch's ``FakeTensorMode``:
shapes, dtypes and devices without storage) at batches of one and two images, taking the path
the trials take (AttConv's CPU kernel saves far less than its tensor operations), and every
tensor it saves for the backward is counted, with what the kernel keeps for it outside autograd;
the difference between the two is what each further image adds. Nothing of the study's size is
allocated to know its size.

Example:
    >>> from study.loading import load
    >>> study = load("searchspaces/smoke.yaml")
    >>> net = networks(study)[0]
    >>> 0 < activations(net.study).per_image < 2**20  # LeNet-5 on a 48-pixel canvas
    True
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from study.config import Study
from study.models import AttConv, Stacked, build_network, n_params
from study.resolution import combinations, resolve, section_keys
from study.signals import held
from study.train import EVAL_BATCH, pick_device
from study.words import configuration

PROCESS_BYTES = 600 * 2**20  # a trial's worker before its data: Python, torch, Ray (measured ~0.5 GB)
STATES = 5  # copies of the parameters a trial keeps per seed: weights, gradients, Adam's two, best


@dataclass(frozen=True)
class Network:
    """One distinct network of a study's space: the study resolved to it, its label, its share."""

    study: Study
    label: str
    share: float  # of the configurations that build it


@dataclass(frozen=True)
class Activations:
    """Bytes one network's training forward saves: ``fixed`` whatever the batch (weights saved for
    the backward), ``per_image`` for every image (with what AttConv's CPU kernel keeps for the
    backward), and ``largest`` the largest single tensor an image adds (what an evaluation holds at
    a time, twice: a layer's input and output)."""

    fixed: int
    per_image: int
    largest: int


def networks(study: Study) -> list[Network]:
    """Every distinct network the space can build (its model and canvas), with its share of the
    configurations and a label naming the choices that give it."""
    keys = section_keys(study, "model") + section_keys(study, "data")
    counts: Counter[str] = Counter()
    first: dict[str, tuple[Study, str]] = {}
    for params in combinations(study, keys):
        resolved = resolve(study, params)
        key = repr((resolved.model, resolved.data.canvas, resolved.data.channels()))
        counts[key] += 1
        label = configuration(params)
        first.setdefault(key, (resolved, label or "the study's network"))
    total = sum(counts.values())
    return [Network(resolved, label, counts[key] / total) for key, (resolved, label) in first.items()]


def activations(study: Study) -> Activations:
    """What one seed's training forward of ``study`` (resolved to one network) saves, counted at
    one image and at two on fake tensors of the study's device."""
    canvas, channels = study.data.canvas, study.data.channels()
    device = pick_device(study.train.device)
    with torch.device("meta"):
        net = Stacked([build_network(study.model, canvas, channels)])
    sizes, kept = [], []  # per batch: the tensors saved for the backward; what the kernel keeps
    layers = [m for m in net.template.modules() if isinstance(m, AttConv)]
    with held(), FakeTensorMode():  # a Ctrl-C raised in the mode's callbacks could abort the process
        net.params = {name: torch.empty(value.shape, device=device, requires_grad=value.requires_grad)
                      for name, value in net.params.items()}
        net.buffers = {name: torch.empty(value.shape, dtype=value.dtype, device=device)
                       for name, value in net.buffers.items()}
        for batch in (1, 2):
            saved: list[int] = []
            kept.append(0)

            def pack(tensor: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
                saved.append(tensor.numel() * tensor.element_size())
                return tensor

            def keep(layer: AttConv, inputs: tuple) -> None:
                kept[-1] += layer.kept_bytes(inputs[0])

            hooks = [layer.register_forward_pre_hook(keep) for layer in layers]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                net(torch.zeros(1, batch, channels, canvas, canvas, device=device))
            for hook in hooks:
                hook.remove()
            sizes.append(saved)
    one, two = sizes
    added = [b - a for a, b in zip(one, two, strict=True)]  # the same tensors in the same order
    return Activations(fixed=sum(one) - sum(added), per_image=sum(added) + kept[1] - kept[0],
                       largest=max(added, default=0))


def dataset_bytes(study: Study) -> int:
    """The images of every split as uint8, which each trial's worker holds (once as the arrays it
    loads, once as the tensors it trains from) and the driver builds."""
    data = study.data
    return data.n_images * data.channels() * data.canvas**2


def network_bytes(study: Study, seeds: int) -> int:
    """Bytes ``seeds`` stacked networks of ``study`` (resolved to one network) hold in a trial:
    their states, and the larger of a training step's activations (``train.batch_size`` images
    per seed) and an evaluation chunk's."""
    canvas, channels = study.data.canvas, study.data.channels()
    with torch.device("meta"):
        params = n_params(build_network(study.model, canvas, channels))
    saved = activations(study)
    train = seeds * (saved.fixed + study.train.batch_size * saved.per_image)
    evaluate = max(EVAL_BATCH, seeds) * 2 * saved.largest
    return seeds * STATES * 4 * params + max(train, evaluate)


def trial_bytes(study: Study, seeds: int | None = None) -> int:
    """Bytes one trial of ``seeds`` networks (default: the most any trial of the study trains at
    once) holds at most, over the space's networks."""
    seeds = seeds or most_seeds(study)
    largest = max(network_bytes(net.study, seeds) for net in networks(study))
    return PROCESS_BYTES + 2 * dataset_bytes(study) + largest


def most_seeds(study: Study) -> int:
    """The most networks one trial of ``study`` trains together, over its stages and rounds."""
    stages = ["tune", "confirm"] if study.confirms() else ["tune"]
    return max(len(study.seeds(stage, look)) for stage in stages
               for look in range(1, len(study.looks(stage)) + 1))
