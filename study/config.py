"""The search-space file: its schema, loading with ``--set`` overrides, and resolving a trial.

A study file has fixed sections (``data``, ``model``, ``train``) holding one configuration, and a
``space`` whose dotted keys name the values Optuna chooses. ``load`` validates the whole file
(every choice included) before anything runs, so a typo fails in a second, not after an hour.

Example:
    >>> study = load("searchspaces/smoke.yaml", ["train.epochs=1"])
    >>> trial = resolve(study, {"model.attention.layers": "[0]"})
    >>> trial.model.attention.layers
    [0]
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from study.errors import UserError

TUNABLE_SECTIONS = ("data", "model", "train")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: Literal["embedded"] = "embedded"
    n_images: int = Field(86_000, ge=30, description="images in all three splits together")
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    canvas: int = Field(48, ge=28, le=512, description="side of the square canvas in pixels")
    digits: int = Field(3, ge=1, le=10, description="distinct digits per image")
    outline: bool = Field(False, description="draw a thin dark outline around each digit")
    seed: int = Field(0, ge=0)

    @field_validator("split")
    @classmethod
    def _fractions(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(split) <= 0 or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
            raise ValueError(f"must be three positive fractions summing to 1, got {list(split)}")
        return split


class AttentionConfig(_Section):
    layers: list[int] = Field(default_factory=list, description="conv positions that are AttConv")
    iterations: int = Field(4, ge=1, le=64)

    @field_validator("layers")
    @classmethod
    def _positions(cls, layers: list[int]) -> list[int]:
        if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"must be distinct conv positions counted from 0, got {layers}")
        return sorted(layers)


class ModelConfig(_Section):
    family: Literal["lenet5"] = "lenet5"
    channels: list[int] = Field(default_factory=lambda: [6, 16], min_length=1)
    kernel: int = Field(5, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [120, 84])
    batchnorm: bool = True
    attention: AttentionConfig = AttentionConfig()

    @model_validator(mode="after")
    def _layers_exist(self) -> ModelConfig:
        bad = [i for i in self.attention.layers if i >= len(self.channels)]
        if bad:
            raise ValueError(
                f"attention.layers {bad} name conv positions that do not exist: the network has "
                f"{len(self.channels)} conv layers (positions 0..{len(self.channels) - 1})"
            )
        return self


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    optimizer: Literal["adam"] = "adam"
    lr: float = Field(3.0e-4, gt=0, lt=1)
    select: Literal["best_val"] = "best_val"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Distribution(_Section):
    """One entry of ``space``: exactly one of ``choice``, ``uniform``, ``loguniform``, ``int``."""

    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("choice", "uniform", "loguniform", "int_") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, int")
        bounds = self.uniform or self.loguniform or self.int_
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"the lower bound must be below the upper, got {list(bounds)}")
        if self.loguniform and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        if self.choice and len({encode(v) for v in self.choice}) != len(self.choice):
            raise ValueError(f"choices must be distinct, got {self.choice}")
        return self

    def candidates(self) -> list[Any]:
        """Values worth validating up front: every choice, or both ends of a range."""
        return list(self.choice or self.uniform or self.loguniform or self.int_)


class SearchConfig(_Section):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    trials: int | None = Field(None, ge=1, description="configurations to try; grid: all of them")
    seeds: int = Field(1, ge=1, description="independently trained replicates per configuration")
    metric: Literal["best_val_loss"] = "best_val_loss"
    mode: Literal["min"] = "min"
    scheduler: Literal["fifo"] = "fifo"
    seed: int = Field(0, ge=0, description="seed of the Optuna sampler")


class ResourcesConfig(_Section):
    cpu: float = Field(1, gt=0)
    gpu: float | Literal["auto"] = Field("auto", description="GPU share per trial; auto: 0.25 if any")

    @field_validator("gpu")
    @classmethod
    def _share(cls, gpu: float | str) -> float | str:
        if gpu != "auto" and not 0 <= gpu <= 8:
            raise ValueError(f"must be 'auto' or a GPU count between 0 and 8, got {gpu}")
        return gpu


class Study(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    question: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    space: dict[str, Distribution]
    search: SearchConfig = SearchConfig()
    compare: str | None = None
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("space")
    @classmethod
    def _space_keys(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        if not space:
            raise ValueError("a study needs at least one parameter to vary")
        for key in space:
            _check_path(key)
        return space

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        if self.compare is not None and self.compare not in self.space:
            raise ValueError(f"compare: {self.compare!r} is not a key of space ({list(self.space)})")
        if self.search.sampler == "grid":
            ranged = [k for k, d in self.space.items() if d.choice is None]
            if ranged:
                raise ValueError(f"search.sampler grid needs 'choice' for every key; not {ranged}")
            if self.search.trials not in (None, self.grid_size()):
                raise ValueError(
                    f"search.trials is {self.search.trials} but the grid has {self.grid_size()} "
                    "configurations; remove search.trials to run them all"
                )
        elif self.search.trials is None:
            raise ValueError(f"search.trials is required with sampler {self.search.sampler}")
        feature_side(self.data.canvas, self.model)
        return self

    def grid_size(self) -> int:
        return math.prod(len(d.choice or ()) for d in self.space.values())

    def n_configurations(self) -> int:
        return self.grid_size() if self.search.sampler == "grid" else self.search.trials

    def n_trials(self) -> int:
        """Ray trials the study runs: every configuration, once per seed."""
        return self.n_configurations() * self.search.seeds

    def compare_key(self) -> str:
        """The factor ``study analyze`` compares by default: ``compare``, else the first key."""
        return self.compare or next(iter(self.space))


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


def _check_path(key: str) -> None:
    section, _, rest = key.partition(".")
    if section not in TUNABLE_SECTIONS or not rest:
        raise ValueError(f"{key!r}: keys start with one of {', '.join(TUNABLE_SECTIONS)}")
    model: type[BaseModel] = Study.model_fields[section].annotation
    parts = rest.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            raise ValueError(f"{key!r}: {part!r} is not a setting (known: {', '.join(fields)})")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(parts) - 1:
            if not is_section:
                raise ValueError(f"{key!r}: {part!r} holds a value, not settings")
            model = annotation
        elif is_section:
            raise ValueError(f"{key!r} names a whole section; name one of its settings")


def encode(value: Any) -> Any:
    """A choice value as Optuna and the result files store it: lists and dicts become JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def decode(spec: Distribution, stored: Any) -> Any:
    """The choice value (a list, say) behind what ``encode`` stored; ranges pass through."""
    if spec.choice is None:
        return stored
    for value in spec.choice:
        if encode(value) == stored:
            return value
    raise KeyError(f"{stored!r} is not one of the choices {spec.choice}")


def resolve(study: Study, params: dict[str, Any]) -> Study:
    """The study with ``params`` (dotted keys, values as ``encode`` stores them) filled in."""
    raw = study.model_dump(by_alias=True)
    for key, stored in params.items():
        _set_dotted(raw, key, decode(study.space[key], stored))
    return Study.model_validate(raw)


def get(study: Study, key: str) -> Any:
    """The value at a dotted key, e.g. ``get(study, "train.lr")``."""
    node: Any = study
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key!r}: {part!r} holds a value, not settings")
    node[leaf] = value


def load(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read, override and validate a study file; every mistake is one ``UserError``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (name, data, model, …)")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: write KEY=VALUE, e.g. --set train.epochs=2")
        try:
            _set_dotted(raw, key.strip(), yaml.safe_load(text))
        except (ValueError, yaml.YAMLError) as err:
            raise UserError(f"--set {item!r}: {err}") from None
    study = _validate(raw, path)
    _check_candidates(study, path)
    return study


def _validate(raw: dict, path: Path) -> Study:
    try:
        return Study.model_validate(raw)
    except ValidationError as err:
        raise UserError(_describe(err, path)) from None


def _check_candidates(study: Study, path: Path) -> None:
    """Every value the space can choose must make a valid study, checked before any trial runs."""
    keys = list(study.space)
    values = [[encode(v) for v in study.space[k].candidates()] for k in keys]
    for combination in itertools.islice(itertools.product(*values), 10_000):
        params = dict(zip(keys, combination, strict=True))
        try:
            resolve(study, params)
        except ValidationError as err:
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            raise UserError(_describe(err, path, f" (with space choice {shown})")) from None


def _describe(err: ValidationError, path: Path, context: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against README.md's search-space reference"
        elif e["type"] not in ("value_error", "missing"):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{path}: {key or '(top level)'}: {msg}{context}")
    return "\n".join(lines)


def dump(study: Study) -> str:
    """The fully resolved study as YAML, defaults filled in: what ``study.yaml`` holds."""
    return yaml.safe_dump(study.model_dump(by_alias=True, mode="json"), sort_keys=False)
