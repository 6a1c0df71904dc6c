"""The study file's schema: its top level (``name``, ``space``, ``search``, ``compare``,
``analysis``, ``resources``) over the sections of one configuration (``study.sections``).

A study file has fixed sections (``data``, ``model``, ``train``) holding one configuration, and a
``space`` whose dotted keys name the values Optuna chooses. Validation checks the whole file, every
choice included (``study.loading``), before anything runs, so a typo fails in a second, not after
an hour. A trial's study is resolved from Optuna's values by ``study.resolution``; what ``Study``
counts (levels, stages, seeds per round) is ``study.layout``'s.

Example:
    >>> study = Study.model_validate({"name": "lr", "space": {"train.lr": {"choice": [0.001, 0.01]}},
    ...                               "search": {"sampler": "grid"}})
    >>> study.space["train.lr"].levels(), study.n_configurations()
    ([0.001, 0.01], 2)
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from study.layout import Layout
from study.sections import MAX_SEEDS, DataConfig, Design, ModelConfig, Section, TrainConfig, feature_side
from study.words import excerpt

TUNABLE_SECTIONS = ("data", "model", "train")


class Distribution(Section):
    """One entry of ``space``: exactly one of ``choice``, ``uniform``, ``loguniform``, ``int``.

    ``choice`` is a list of values, or a mapping of labels to values: Optuna, the result files
    and reports then show the labels (``{none: [], conv1: [0]}``). A key naming a whole section
    (``model``) takes mappings as values and merges the chosen one into that section.
    """

    choice: list[Any] | dict[str, Any] | None = None
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
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        if isinstance(self.choice, list) and len(set(self.levels())) != len(self.choice):
            raise ValueError(f"choices must be distinct, got {self.choice}")
        return self

    def levels(self) -> list[Any]:
        """The choices as Optuna and the result files store them: labels, or encoded values."""
        if isinstance(self.choice, dict):
            return list(self.choice)
        return [encode(v) for v in self.choice or ()]

    def value(self, stored: Any) -> Any:
        """The value behind a stored level (a list, say); a ranged value passes through."""
        if self.choice is None:
            return stored
        for level, value in zip(self.levels(), self.choice.values() if isinstance(self.choice, dict)
                                else self.choice, strict=True):
            if level == stored:
                return value
        raise KeyError(f"{stored!r} is not one of the choices {self.levels()}")

    def candidates(self) -> list[Any]:
        """Stored values worth validating up front: every level, or both ends of a range."""
        return self.levels() or list(self.uniform or self.loguniform or self.int_)


SEED_FORMS = ("number", "design")  # the tags of _seeds' two forms, left out of a key's name


def _seeds(least: int) -> Any:
    """A number of seeds (at least ``least``) or a sequential ``Design``, told apart by their form,
    so that a mistake in either is reported against that form alone."""
    number, design = SEED_FORMS
    return Annotated[Annotated[int, Field(ge=least, le=MAX_SEEDS), Tag(number)]
                     | Annotated[Design, Tag(design)],
                     Discriminator(lambda v: design if isinstance(v, dict | Design) else number)]


class SearchConfig(Section):
    """How Optuna chooses configurations.

    With ``sampler`` tpe or random and a ``compare`` factor, every level of that factor is tuned
    by its own Optuna study with ``trials`` configurations, so no level is starved by a sampler
    that has found a better one (tuned per arm). A grid covers every level anyway.
    """

    sampler: Literal["tpe", "random", "grid"] = "tpe"
    trials: int | None = Field(None, ge=1, description="configurations to try (per compared level)")
    seeds: _seeds(1) = Field(1, description=(
        "networks per configuration (seeds 0..S−1), trained together; or, in a study that does not "
        "select, a sequential design {start, step, max} for its compared networks (study.sequential)"))
    confirm_seeds: _seeds(2) = Field(10, description=(
        "fresh seeds (S..S+C−1) retraining each level's selected configuration after tuning; or a "
        "sequential design {start, step, max} of them"))
    seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    storage: str | None = Field(None, description="Optuna storage: a SQLAlchemy URL or journal:PATH; "
                                "default sqlite:///<results>/optuna.db (see study.storage)")
    scheduler: Literal["fifo", "asha"] = Field("fifo", description="asha: Ray Tune's ASHA stops tuning "
                                               "trials whose validation loss trails their level's")
    grace_period: int = Field(1, ge=1, description="asha: epochs before a trial can be stopped")
    reduction_factor: float = Field(4, gt=1, description="asha: about 1 in this many trials goes on "
                                    "past each rung (grace_period × reduction_factor^k epochs)")

    @field_validator("storage")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not (url.startswith("journal:") and len(url) > 8 or "://" in url):
            raise ValueError(f"expected journal:PATH or a SQLAlchemy URL such as "
                             f"sqlite:///study.db or postgresql://host/db, got {url!r}")
        return url


class ResourcesConfig(Section):
    cpu: float = Field(1, gt=0)
    gpu: float | Literal["auto"] = Field("auto", description="GPU share per trial; auto: 0.25 if any")
    retries: int = Field(2, ge=0, description="times Ray restarts a trial whose worker or node died")
    reallocate: bool | Literal["auto"] = Field(
        "auto", description="on one node, a stage of fewer trials than CPUs starts each on an even share "
                            "of them, and once a stage's trials have all started, the CPUs a finished "
                            "trial frees go to the running ones (restarted from their last epoch with "
                            "more threads, on a new worker); auto: where trials train on CPUs and the "
                            "plan's schedule is shorter so than with the workers reused")
    split_seeds: bool | Literal["auto"] = Field(
        "auto", description="where fixed configurations are retrained (the confirmation stage, a "
                            "sequential design's later rounds), a level's seeds are split over as many "
                            "Ray trials as leave no slot idle, not stacked in one; auto: where trials "
                            "train on CPUs, on which stacking seeds does not pay")

    @field_validator("gpu")
    @classmethod
    def _share(cls, gpu: float | str) -> float | str:
        if gpu != "auto" and not 0 <= gpu <= 8:
            raise ValueError(f"must be 'auto' or a GPU count between 0 and 8, got {gpu}")
        return gpu


class AnalysisConfig(Section):
    """What ``study analyze`` counts as a difference worth finding: fixed with the study, before
    any result is seen, as a pre-registration would."""

    margin: float = Field(0.005, gt=0, description=(
        "the smallest difference in mean test loss that matters: arms closer than this are "
        "'equivalent' when two one-sided tests say so; power and seeds are given for it"))
    accuracy_margin: float = Field(0.02, gt=0, lt=1, description=(
        "the same for exact-set accuracy and digit F1, as proportions (0.02: two points)"))


class Study(Section, Layout):
    # `name: 2024` or --set name=2024 is a folder name, not a number
    model_config = ConfigDict(**Section.model_config, coerce_numbers_to_str=True)

    name: str = Field(description="the results folder's name: any name a folder can have")
    question: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    space: dict[str, Distribution]
    search: SearchConfig = SearchConfig()
    compare: str | None = None
    analysis: AnalysisConfig = AnalysisConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        reason = ("is empty" if not name else "is . or .., which name folders already" if name in (".", "..")
                  else "holds a / , which would make it a path" if "/" in name
                  else "holds a NUL or control character" if any(ord(c) < 32 for c in name)
                  else "is longer than the 255 bytes a folder name can have"
                  if len(name.encode()) > 255 else None)
        if reason:
            raise ValueError(f"{excerpt(name)} {reason}: the name becomes the results folder")
        return name

    @field_validator("space")
    @classmethod
    def _space_keys(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        if not space:
            raise ValueError("a study needs at least one parameter to vary")
        for key, spec in space.items():
            _check_path(key, spec)
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
        if self.compare is not None and self.space[self.compare].choice is None:
            raise ValueError(f"compare: {self.compare!r} must be a 'choice' key to have levels")
        (only, spec), *others = self.space.items()
        if self.search.sampler != "grid" and not others and spec.choice is not None:
            raise ValueError(
                f"sampler {self.search.sampler} samples configurations, and the space's only key "
                f"({only!r}) is a 'choice', so it could only propose its levels again, retrained on "
                "the same seeds; use sampler grid (search.seeds sets the networks per level), or add "
                "a key to tune (e.g. train.lr)"
            )
        self._check_scheduler()
        self._check_design()
        feature_side(self.data.canvas, self.model)
        return self

    def _check_scheduler(self) -> None:
        search = self.search
        if search.scheduler == "fifo":
            # study.yaml holds every default, so only a changed value betrays a mistake.
            changed = [key for key in ("grace_period", "reduction_factor")
                       if getattr(search, key) != SearchConfig.model_fields[key].default]
            if changed:
                raise ValueError(f"search.{changed[0]} is read only with search.scheduler: asha")
            return
        if not self.confirms():
            raise ValueError(
                "search.scheduler: asha stops trials early, which only a tuning stage may do; this "
                "study's trials are its compared networks (its space varies only the compared "
                f"factor {self.compare_key()!r}), so they must all train to the end: use fifo")
        if search.grace_period >= self.train.epochs:
            raise ValueError(f"search.grace_period ({search.grace_period}) must be below train.epochs "
                             f"({self.train.epochs}), or no trial can be stopped early")

    def _check_design(self) -> None:
        search = self.search
        if isinstance(search.seeds, Design) and self.confirms():
            raise ValueError(
                "search.seeds: a sequential design trains the compared networks in rounds, and this "
                "study's compared networks are the confirmation stage's (its space varies more than "
                f"the compared factor {self.compare_key()!r}): give the design as search.confirm_seeds "
                f"and a number as search.seeds, e.g. seeds: {search.seeds.start}")
        if isinstance(search.confirm_seeds, Design) and not self.confirms():
            raise ValueError(
                "search.confirm_seeds: this study has no confirmation stage (its space varies only the "
                f"compared factor {self.compare_key()!r}); give the sequential design as search.seeds")
        if self.design() is not None and self.n_levels() < 2:
            raise ValueError(f"a sequential design compares levels, and {self.compare_key()!r} has "
                             f"{self.n_levels()}: compare a 'choice' key with two or more")



def _check_path(key: str, spec: Distribution) -> None:
    section, _, rest = key.partition(".")
    if section not in TUNABLE_SECTIONS:
        raise ValueError(f"{key!r}: keys start with one of {', '.join(TUNABLE_SECTIONS)}")
    merges = isinstance(spec.choice, dict) and all(isinstance(v, dict) for v in spec.choice.values())
    if not rest:
        if not merges:
            raise ValueError(f"{key!r} names a whole section; name one of its settings, or give "
                             "labelled choices of settings to merge into it")
        return
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
        elif is_section and not merges:
            raise ValueError(f"{key!r} names a whole section; name one of its settings, or give "
                             "labelled choices of settings to merge into it")


def encode(value: Any) -> Any:
    """A choice value as Optuna and the result files store it: lists and dicts become JSON."""
    return json.dumps(value) if isinstance(value, list | dict) else value
