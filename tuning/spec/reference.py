"""The spec reference in Markdown, written from the JSON Schemas (the fields' own descriptions).

``python -m tuning.spec.reference > docs/spec-reference.md`` writes it; ``tests/test_docs.py`` checks that
the file is what this prints, so the reference cannot drift from the schema editors get from
``q3r-tune schema``.
"""
from __future__ import annotations

import json

from pydantic import BaseModel

from tuning.spec import space, sweep
from tuning.spec.sweep import json_schema
from tuning.trial import spec as trial_spec

INTRO = """# Spec reference

Generated from the spec schemas by `python -m tuning.spec.reference > docs/spec-reference.md` (a test checks
that this file is current): the same descriptions an editor shows from `q3r-tune schema` (sweep specs) and
`q3r-tune schema trial` (trial specs). How specs are read, validated and overridden: [sweeps.md](sweeps.md).

A sweep spec holds the base trial's `data`, `model` and `train` sections (those of a trial spec), and for
each technique under `techniques` a search space: each parameter a plain value (fixed) or one
[distribution](#distributions). A parameter left out keeps the trial spec's default.
"""

TRIAL_SECTIONS = ("TrialSpec", "DataSpec", "ModelSpec", "TechniqueSpec", "TrainSpec", "MetricSpec")
SWEEP_SECTIONS = ("SweepSpec", "SchedulerSpec", "SearcherSpec", "ResourcesSpec", "ConfirmSpec", "TrackingSpec",
                  "TechniqueSpaces")   # then one search-space section per registered technique
DISTRIBUTIONS = ("LogUniform", "Uniform", "IntRange", "LogInt", "Choice")
TITLES = {"TrialSpec": "Trial spec (top level)", "SweepSpec": "Sweep spec (top level)",
          "DataSpec": "data", "ModelSpec": "model", "TechniqueSpec": "technique", "TrainSpec": "train",
          "MetricSpec": "metric",
          "SchedulerSpec": "scheduler", "SearcherSpec": "searcher", "ResourcesSpec": "resources",
          "ConfirmSpec": "confirm", "TrackingSpec": "tracking", "TechniqueSpaces": "techniques",
          **{cls.__name__: f"techniques.{name}" for name, cls in space.SPACES.items()}}
_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))


def _anchor(name: str) -> str:
    title = TITLES.get(name, name).lower()
    return "".join(c for c in title.replace(" ", "-") if c.isalnum() or c in "-_")


def _type(prop: dict) -> str:
    """A JSON Schema property as a short type: ``integer >= 1``, ``asha | fifo``, ``[scheduler](#scheduler)``."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{TITLES.get(name, name)}](#{_anchor(name)})"
    if "oneOf" in prop:
        return "value or distribution"
    if "anyOf" in prop:
        return " or ".join(dict.fromkeys(_type(p) for p in prop["anyOf"]))
    if "enum" in prop:
        return " \\| ".join(str(v) for v in prop["enum"])
    if "const" in prop:
        return str(prop["const"])
    kind = prop.get("type", "any")
    if kind == "array":
        items = _type(prop.get("items", {}))
        return f"list of {items}" if items != "any" else "list"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping to {_type(prop['additionalProperties'])}"
    bounds = [f"{op} {prop[key]}" for key, op in _BOUNDS if key in prop]
    return " ".join([kind, ", ".join(bounds)]).strip()


def _model(name: str) -> type[BaseModel]:
    generated = {cls.__name__: cls for cls in space.SPACES.values()}     # one per registered technique
    if name in generated:
        return generated[name]
    return next(getattr(m, name) for m in (trial_spec, sweep, space) if hasattr(m, name))


def _default(model: type[BaseModel], field: str, prop: dict) -> str:
    """The field's default as the YAML a user would write; a section's is its own fields' defaults."""
    info = model.model_fields.get(field)
    if info is None:                                        # added to the schema by hand (variants)
        return "`{}`"
    if info.is_required():
        return "required"
    if "$ref" in prop:
        return "its fields'"
    if issubclass(model, space.Space):
        return "the trial spec's"
    return f"`{json.dumps(info.get_default(call_default_factory=True))}`"


def _text(description: str) -> str:
    """Markdown-safe: a pipe would end the table cell, an angle bracket start an HTML tag."""
    return description.replace("|", "\\|").replace("<", "\\<")


def _section(name: str, schema: dict, level: str = "##") -> list[str]:
    lines = [f"{level} {TITLES.get(name, name)}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].replace("``", "`").split()), ""]
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for field, prop in schema.get("properties", {}).items():
        lines.append(f"| `{field}` | {_type(prop)} | {_default(_model(name), field, prop)} | "
                     f"{_text(prop.get('description', ''))} |")
    return lines + [""]


def markdown() -> str:
    """The whole reference: trial spec sections, sweep spec sections, distributions."""
    trial, sweep = json.loads(json_schema("trial")), json.loads(json_schema("sweep"))
    out = [INTRO]
    out += _section("TrialSpec", trial)
    out += [line for name in TRIAL_SECTIONS[1:] for line in _section(name, trial["$defs"][name], "###")]
    out += _section("SweepSpec", sweep)
    out += [line for name in SWEEP_SECTIONS[1:] for line in _section(name, sweep["$defs"][name], "###")]
    for cls in space.SPACES.values():
        out += _section(cls.__name__, sweep["$defs"][cls.__name__], "###")
    out += ["## Distributions", "",
            "A searched parameter is a one-key mapping; bounds and choices are checked against the "
            "parameter's type (an integer parameter takes `int`, `logint` or `choice`).", ""]
    for name in DISTRIBUTIONS:
        (key, prop), = sweep["$defs"][name]["properties"].items()
        out.append(f"- `{{{key}: ...}}`: {prop['description']}")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
