"""`q3r-tune schema` gives editors the help for every field: each property of the sweep and trial spec
schemas, nested sections and search-space distributions included, carries a description."""
import json

import pytest

from tuning import cli


def undescribed(schema: dict) -> list[str]:
    """Every property of ``schema`` (``$defs`` included) without a non-empty description, as paths."""
    missing = []

    def walk(node, where: str):
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                if not (isinstance(prop, dict) and str(prop.get("description", "")).strip()):
                    missing.append(f"{where}.{name}".lstrip("."))
            for key, value in node.items():
                walk(value, f"{where}.{key}" if key != "properties" else where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    walk(schema, "")
    return missing


def test_the_walk_finds_a_property_without_description():
    schema = {"properties": {"a": {"type": "string", "description": "an a"}, "b": {"type": "integer"}},
              "$defs": {"Inner": {"properties": {"c": {"type": "number", "description": " "}}}}}
    assert undescribed(schema) == ["b", "$defs.Inner.c"]


@pytest.mark.parametrize("argv", [["schema"], ["schema", "sweep"], ["schema", "trial"]])
def test_every_property_of_the_printed_schema_has_a_description(capsys, argv):
    assert cli.main(argv) in (0, None)
    schema = json.loads(capsys.readouterr().out)
    assert len(schema["properties"]) >= 4 and "$defs" in schema
    missing = undescribed(schema)
    assert not missing, f"`q3r-tune {' '.join(argv)}`: properties without a description: {missing}"


def test_a_search_space_parameter_is_described_as_the_trial_field_it_searches(capsys):
    cli.main(["schema"])
    defs = json.loads(capsys.readouterr().out)["$defs"]
    cli.main(["schema", "trial"])
    trial_defs = json.loads(capsys.readouterr().out)["$defs"]
    period = trial_defs["TechniqueSpec"]["properties"]["period"]["description"]
    assert "reweightings" in period
    from tuning.spec.space import SPACES
    assert defs[SPACES["adamq3r"].__name__]["properties"]["period"]["description"] == f"{period}; a value or a distribution"
    assert "log-uniform" in defs["LogUniform"]["properties"]["loguniform"]["description"]
