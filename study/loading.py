"""Reading a study file: hardened YAML, ``--set`` overrides, validation, and every mistake as
one ``UserError`` naming the file (or the option), the key and what to do; ``dump`` writes the
resolved study back as ``study.yaml`` holds it.

Example:
    >>> study = load("searchspaces/smoke.yaml", ["train.epochs=1"])
    >>> study.train.epochs, dump(study).splitlines()[0]
    (1, 'name: smoke')
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from study.config import SEED_FORMS, Study
from study.errors import UserError
from study.resolution import combinations, resolve, set_dotted
from study.words import configuration, excerpt

# Settings that only ever had one value, since removed: files that still carry them at that value
# (every results folder's study.yaml written before) load as before; any other value is an error.
RETIRED = {("model", "family"): "lenet5", ("train", "select"): "best_val",
           ("search", "metric"): "best_val_loss", ("search", "mode"): "min"}


MAX_NODES = 100_000  # a study file is a few hundred values; aliases may not expand past this


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
            raise UserError(f"--set {excerpt(item)}: write KEY=VALUE, e.g. --set train.epochs=2")
        try:
            set_dotted(raw, key.strip(), _parse(text))
        except (ValueError, yaml.YAMLError) as err:
            raise UserError(f"--set {excerpt(item)}: {err}") from None
        given[key.strip()] = f"--set {excerpt(item)}"
    given |= {key: option for key, (option, text) in (verbatim or {}).items() if text is not None}
    for key, (_, text) in (verbatim or {}).items():
        if text is not None:
            set_dotted(raw, key, text)
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
        loc, msg = e["loc"], e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing" and loc and isinstance(loc[-1], int):  # a list of fixed length, short
            loc, msg = loc[:-1], f"too few items: item {loc[-1] + 1} is missing (got {excerpt(e['input'])})"
        key = ".".join(str(p) for p in loc if not str(p).startswith("function-") and p not in SEED_FORMS)
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against README.md's search-space reference"
        elif e["type"] not in ("value_error", "missing"):
            msg = f"{msg} (got {excerpt(e['input'])})"
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
