"""Reading specs: the one YAML loader, ``--set`` overrides, and one-line validation errors.

Trial specs (``tuning.trial.spec``) and sweep specs (``tuning.spec.sweep``) are pydantic models built on
``Strict`` and read through ``read_yaml`` + ``apply_overrides`` + ``validate``, so both read
``lr: 1e-3`` as a float (YAML 1.2), reject duplicate keys and ``!!python`` tags, and report every
problem as ``SpecError`` in one line: where (the file, or the ``--set`` override), the field path,
what is allowed and the value given.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class SpecError(ValueError):
    """A malformed spec; the message names the file (or override), the field and the value."""


# ---- YAML ----------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader (no tags that build objects) that reads 1e-3 as a float, as YAML 1.2 does, and
    rejects duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise SpecError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None


def read_yaml(path: Union[str, Path], what: str) -> dict:
    """The mapping in the YAML file at ``path`` (``what``: "trial spec", "sweep spec")."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no {what} at {path}")
    raw = parse_yaml(path.read_text(), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a {what} must be a mapping, but got {type(raw).__name__}")
    return raw


# ---- overrides -----------------------------------------------------------------------------------
def apply_overrides(raw: dict, overrides) -> tuple[dict, dict[tuple, str]]:
    """``"a.b=value"`` strings (values read as YAML) set into a copy of ``raw``.

    Returns the new dict and ``{("a", "b"): "a.b=value"}`` so that an error in that field can
    name the override rather than the file.
    """
    raw = copy.deepcopy(raw)
    origins: dict[tuple, str] = {}
    for text in overrides:
        key, sep, value = str(text).partition("=")
        path = tuple(part.strip() for part in key.split("."))
        if not sep or not all(path):
            raise SpecError(f"--set takes key=value (e.g. technique.lmbda=0.5 or num_samples=4), but got {text!r}")
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = parse_yaml(value, f"--set {text}")
        origins[path] = str(text)
    return raw, origins


# ---- validation ----------------------------------------------------------------------------------
class Strict(BaseModel):
    """Base of every spec section: strict types (no "3" for 3), unknown keys are errors."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; known: {list(cls.model_fields)}")
        return data


M = TypeVar("M", bound=BaseModel)
_PHRASES = (("Input should be", "must be"), ("Value error, ", ""), ("Assertion failed, ", ""))


def _path(loc: tuple) -> str:
    """A pydantic error location as a dotted field path (union tags and list indices dropped)."""
    return ".".join(str(p) for p in loc if isinstance(p, str) and not p.startswith(("<", "function-")))


def _where(loc: tuple, source: str, origins: dict[tuple, str]) -> str:
    fields = tuple(p for p in loc if isinstance(p, str))
    for path, text in origins.items():
        if fields[:len(path)] == path:
            return f"{source} (--set {text})"
    return source


def describe_error(err: ValidationError, source: str, origins: Optional[dict] = None) -> str:
    """The first error of ``err`` in one line: source, field path, what is allowed, the value."""
    e = err.errors(include_url=False)[0]
    msg = e["msg"]
    for old, new in _PHRASES:
        msg = msg.replace(old, new)
    path = _path(e["loc"])
    where = _where(e["loc"], source, origins or {})
    if not path and where == source:           # a rule across fields: blame an override it names, if any
        named = [text for fields, text in (origins or {}).items() if ".".join(fields) in msg]
        where = f"{source} (--set {named[0]})" if named else source
    if e["type"] in ("value_error", "assertion_error") or not path:   # our validators say it all
        sep = " " if msg.startswith("must") else ": "
        return f"{where}: {path + sep if path else ''}{msg}"
    return f"{where}: {path} {msg}, but got {e['input']!r}"


def validate(model: type[M], raw: Any, source: str, origins: Optional[dict] = None, **context) -> M:
    """``model`` validated from ``raw``; a ``SpecError`` in one line if anything is wrong."""
    try:
        return model.model_validate(raw, context={"source": source, **context})
    except ValidationError as err:
        raise SpecError(describe_error(err, source, origins)) from None
