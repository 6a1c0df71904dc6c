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
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from study.errors import UserError
from study.sections import DataConfig, ModelConfig, Section, TrainConfig, feature_side
from study.sequential import MAX_SEEDS, Design, looks
from study.words import configuration

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
        "auto", description="on one node, once a stage's trials have all started, the CPUs a finished "
                            "trial frees go to the running ones (restarted from their last epoch with "
                            "more threads); auto: where trials train on CPUs, not GPUs")

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


class Study(Section):
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
            raise ValueError(f"{_excerpt(name)} {reason}: the name becomes the results folder")
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

    def grid_size(self) -> int:
        return math.prod(len(d.choice or ()) for d in self.space.values())

    def tuned_per_level(self) -> bool:
        """Whether each level of ``compare`` gets its own Optuna study (see ``SearchConfig``)."""
        return self.search.sampler != "grid" and self.compare is not None

    def reallocates(self, gpu: float) -> bool:
        """Whether freed CPUs go to the running trials (``resources.reallocate``), given the GPU
        share each trial has: ``auto`` where the trials train on CPUs."""
        reallocate = self.resources.reallocate
        return gpu == 0 if reallocate == "auto" else reallocate

    def n_configurations(self) -> int:
        if self.search.sampler == "grid":
            return self.grid_size()
        if self.tuned_per_level():
            return self.search.trials * len(self.space[self.compare].choice)
        return self.search.trials

    def confirms(self) -> bool:
        """Whether ``study run`` ends with a confirmation stage: the space varies more than the
        compared factor, so each level's configuration is selected by validation loss, and the
        networks that won the selection must not also be the ones that are tested."""
        return len(self.space) > 1 and self.n_levels() > 0

    def n_levels(self) -> int:
        """Levels of the compared factor (none when it is a ranged key)."""
        return len(self.space[self.compare_key()].levels())

    def n_trials(self) -> int:
        """Ray trials the study runs: one per configuration, training all its seeds at once, and
        one per compared level in the confirmation stage."""
        return self.n_configurations() + (self.n_levels() if self.confirms() else 0)

    def trials_at_once(self, cpus: float, gpus: float = 0, gpu: float = 0) -> int:
        """Trials that fit at once on ``cpus`` CPUs and ``gpus`` GPUs, each taking
        ``resources.cpu`` CPUs and ``gpu`` of a GPU, at least one: the slots the run's progress,
        the plan and the memory check all count with (a study of fewer trials leaves some empty)."""
        fits = int(cpus // self.resources.cpu)
        if gpu:
            fits = min(fits, int(gpus // gpu))
        return max(1, fits)

    def n_networks(self) -> int:
        """Networks the study trains at most: every configuration once per seed, and each level's
        selected configuration once per confirmation seed (a sequential design's ``max``)."""
        confirming = self.n_levels() * self.looks("confirm")[-1] if self.confirms() else 0
        return self.n_configurations() * self.looks("tune")[-1] + confirming

    def compared_stage(self) -> str:
        """The stage whose networks ``study analyze`` compares: confirm where the study selects."""
        return "confirm" if self.confirms() else "tune"

    def design(self) -> Design | None:
        """The sequential design of the compared networks, where the study file gives one."""
        seeds = self.search.confirm_seeds if self.confirms() else self.search.seeds
        return seeds if isinstance(seeds, Design) else None

    def looks(self, stage: str = "tune") -> list[int]:
        """Networks per configuration of ``stage`` after each round: one round unless sequential."""
        return looks(self.search.seeds if stage == "tune" else self.search.confirm_seeds)

    def seeds(self, stage: str = "tune", look: int = 1) -> list[int]:
        """The training seeds of a stage's round ``look``: 0..S−1 for tuning, the ones after them
        for confirmation (fresh: no network of the selection is retrained); a sequential design's
        later rounds continue where the round before ended."""
        offset = 0 if stage == "tune" else self.looks("tune")[-1]
        ends = [0, *self.looks(stage)]
        return list(range(offset + ends[look - 1], offset + ends[look]))

    def compare_key(self) -> str:
        """The factor ``study analyze`` compares by default: ``compare``, else the first key."""
        return self.compare or next(iter(self.space))


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


def section_keys(study: Study, section: str) -> list[str]:
    """The keys of the space that change ``section`` (``data``, ``model`` or ``train``)."""
    return [key for key in study.space if key == section or key.startswith(f"{section}.")]


def combinations(study: Study, keys: list[str]) -> Iterator[dict[str, Any]]:
    """Every combination of the given space keys' candidates (their levels, or both ends of a
    range), as ``{key: stored value}`` in the keys' order."""
    for values in itertools.product(*(study.space[k].candidates() for k in keys)):
        yield dict(zip(keys, values, strict=True))


def resolve(study: Study, params: dict[str, Any]) -> Study:
    """The study with ``params`` (dotted keys, values as the result files store them) filled in."""
    raw = study.model_dump(by_alias=True)
    for key, stored in params.items():
        _set_dotted(raw, key, study.space[key].value(stored), merge=True)
    return Study.model_validate(raw)


def current(study: Study, key: str) -> Any:
    """What the file's own sections hold at ``key``, stored as the result files store choices.

    For labelled choices this is the first label that leaves the study unchanged, or None.
    """
    spec = study.space[key]
    if isinstance(spec.choice, dict):
        return next((level for level in spec.levels() if resolve(study, {key: level}) == study), None)
    return encode(get(study, key))


def get(study: Study, key: str) -> Any:
    """The value at a dotted key, e.g. ``get(study, "train.lr")``."""
    node: Any = study
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _set_dotted(raw: dict, key: str, value: Any, merge: bool = False) -> None:
    """Set ``value`` at a dotted key; with ``merge``, a mapping is merged into the section there."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key!r}: {part!r} holds a value, not settings")
    if merge and isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for name, inner in value.items():
            _set_dotted(node[leaf], name, inner, merge=True)
    else:
        node[leaf] = value


# Settings that only ever had one value, since removed: files that still carry them at that value
# (every results folder's study.yaml written before) load as before; any other value is an error.
RETIRED = {("model", "family"): "lenet5", ("train", "select"): "best_val",
           ("search", "metric"): "best_val_loss", ("search", "mode"): "min"}


MAX_NODES = 100_000  # a study file is a few hundred values; aliases may not expand past this
EXCERPT = 80  # characters of the user's input a message quotes, at most


def _excerpt(value: Any) -> str:
    """``repr(value)``, cut short: a message never echoes more than a line of the input."""
    text = repr(value)
    return text if len(text) <= EXCERPT else f"{text[:EXCERPT]}… ({len(text):,} characters)"


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document whose aliases expand past ``MAX_NODES`` values:
    an 838-byte "billion laughs" file otherwise expands to gigabytes once anything walks it."""

    def construct_document(self, node: yaml.Node) -> Any:
        sizes: dict[int, int] = {}

        def size(n: yaml.Node) -> int:  # values after expansion; each shared node sized once
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts once
                children = n.value if isinstance(n, yaml.SequenceNode) else \
                    [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else []
                sizes[id(n)] = min(MAX_NODES + 1, 1 + sum(size(c) for c in children))
            return sizes[id(n)]

        if size(node) > MAX_NODES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_NODES:,} values; a study file "
                                 "needs a few hundred: write the values out")
        return super().construct_document(node)


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader, bounded)


def load(path: str | Path, overrides: list[str] = (),
         verbatim: dict[str, tuple[str, str | None]] | None = None) -> Study:
    """Read, override and validate a study file; every mistake is one ``UserError``.
    ``verbatim`` maps dotted keys to (the option that gave it, text): the text is set as given,
    unparsed (``--name 2024``, ``--name 'a #2'``), and a mistake in it is blamed on the option."""
    path = Path(path)
    try:
        raw = _parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder; name a study file in it, e.g. searchspaces/smoke.yaml") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start} cannot be read); save the study "
                        "file as UTF-8") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (name, data, model, …)")
    for (section, key), only in RETIRED.items():
        if isinstance(raw.get(section), dict) and raw[section].get(key) == only:
            del raw[section][key]
    given: dict[str, str] = {}  # key → the option that set it: a mistake in its value is blamed on it
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {_excerpt(item)}: write KEY=VALUE, e.g. --set train.epochs=2")
        try:
            _set_dotted(raw, key.strip(), _parse(text))
        except (ValueError, yaml.YAMLError) as err:
            raise UserError(f"--set {_excerpt(item)}: {err}") from None
        given[key.strip()] = f"--set {_excerpt(item)}"
    given |= {key: option for key, (option, text) in (verbatim or {}).items() if text is not None}
    for key, (_, text) in (verbatim or {}).items():
        if text is not None:
            _set_dotted(raw, key, text)
    study = _validate(raw, path, given)
    _check_candidates(study, path)
    return study


def _validate(raw: dict, path: Path, given: dict[str, str]) -> Study:
    try:
        return Study.model_validate(raw)
    except ValidationError as err:
        raise UserError(_describe(err, path, given=given)) from None


def _check_candidates(study: Study, path: Path) -> None:
    """Every value the space can choose must make a valid study, checked before any trial runs."""
    for params in itertools.islice(combinations(study, list(study.space)), 10_000):
        try:
            resolve(study, params)
        except ValidationError as err:
            shown = configuration(params, short=False)
            raise UserError(_describe(err, path, f" (with space choice {shown})")) from None


def _describe(err: ValidationError, path: Path, context: str = "",
              given: dict[str, str] | None = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-") and p not in SEED_FORMS)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against README.md's search-space reference"
        elif e["type"] not in ("value_error", "missing"):
            msg = f"{msg} (got {_excerpt(e['input'])})"
        setter = next((k for k in sorted(given or {}, key=len, reverse=True)
                       if key == k or key.startswith(f"{k}.")), None)  # the most specific
        if setter is None:
            where = f"{path}: {key or '(top level)'}"
        else:
            by_name = setter == key and not given[setter].startswith("--set ")  # --name: its key
            where = given[setter] if by_name else f"{given[setter]}: {key}"
        lines.append(f"{where}: {msg}{context}")
    return "\n".join(lines)


def dump(study: Study) -> str:
    """The fully resolved study as YAML, defaults filled in: what ``study.yaml`` holds."""
    return yaml.safe_dump(study.model_dump(by_alias=True, mode="json"), sort_keys=False)
