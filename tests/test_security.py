"""What docs/operations.md's security section promises, checked on the code: checkpoints are loaded with
``weights_only=True``, YAML only through the safe loader, and the UI listens on loopback by default."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("q3r", "tuning", "dashboards")


def calls(name: str):
    """(file, line, ast.Call) of every call of ``<anything>.name(...)`` or ``name(...)`` in the packages."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    f = node.func
                    called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                    if called == name:
                        yield path.relative_to(ROOT), node.lineno, node


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only():
    found = list(calls("load"))
    torch_loads = [(p, line, c) for p, line, c in found
                   if isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)
                   and c.func.value.id == "torch"]
    assert len(torch_loads) >= 2                               # the recipe's resume and the export
    for path, line, call in torch_loads:
        value = keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{line}: torch.load without " \
                                                                        f"weights_only=True"


def test_yaml_is_read_only_through_the_safe_loaders():
    for bad in ("unsafe_load", "full_load", "load_all"):
        assert not list(calls(bad)), bad
    for path, line, call in calls("load"):
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "yaml":
            loader = keyword(call, "Loader")
            assert isinstance(loader, ast.Name) and loader.id == "_Loader", f"{path}:{line}: yaml.load, not the " \
                                                                             f"project's SafeLoader"
    from tuning.trial.specio import _Loader
    import yaml
    assert issubclass(_Loader, yaml.SafeLoader)


def test_the_ui_and_its_server_listen_on_loopback_by_default():
    from dashboards import ui
    from tuning.cli import build_parser

    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"
    command = ui.server_command("sqlite:////x/mlruns.db")
    assert command[command.index("--host") + 1] == "127.0.0.1"
