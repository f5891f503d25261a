"""The layers, lowest first: each package imports only its own layer and the layers below it.

    q3r -> tuning.trial -> tuning.spec -> tuning.analysis -> tuning.tracking -> dashboards
        -> tuning.artifacts -> tuning.sweep -> tuning.cli

Every module is read (``ast``), lazy imports inside functions included. ``import q3r`` loads torch and
none of the heavy stack; the pure analysis loads neither Ray, MLflow, Optuna nor torch; reading a sweep
back and drawing its report loads no Ray.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "transformers", "peft", "sklearn", "ray", "optuna", "mlflow")
LAYERS = ("q3r", "tuning.trial", "tuning.spec", "tuning.analysis", "tuning.tracking", "dashboards",
          "tuning.artifacts", "tuning.sweep", "tuning.cli")
# third-party packages a layer may not import at all (on top of the layer rule)
FORBIDDEN = {
    "q3r": HEAVY + ("pydantic", "yaml"),
    "tuning.trial": ("ray", "optuna", "mlflow"),
    "tuning.spec": ("ray", "optuna", "mlflow"),
    "tuning.analysis": ("ray", "optuna", "mlflow", "torch"),
    "tuning.tracking": ("optuna",),      # Ray only in callback.py (checked below)
    "dashboards": ("ray", "optuna"),
}


def loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def tops(mods, names) -> list[str]:
    return [m for m in mods if m.split(".")[0] in names]


def test_import_q3r_loads_torch_and_nothing_of_the_heavy_stack():
    mods = loaded_after("import q3r")
    assert "torch" in mods
    assert tops(mods, HEAVY + ("tuning", "dashboards", "pydantic", "yaml")) == []


def test_the_trial_harness_loads_no_sweep_machinery():
    mods = loaded_after("import tuning.trial.recipe, tuning.trial.demo, tuning.trial.spec")
    sweep = [m for m in mods if m.split(".")[0] in ("ray", "optuna", "mlflow", "dashboards")
             or (m.startswith("tuning.") and not m.startswith("tuning.trial"))]
    assert sweep == []


def test_the_analysis_is_pure():
    mods = loaded_after("import tuning.analysis.records, tuning.analysis.pareto, tuning.analysis.recommend, "
                        "tuning.analysis.confirm")
    assert tops(mods, ("ray", "optuna", "mlflow", "torch")) == []


def test_reading_a_sweep_and_its_report_load_no_ray():
    mods = loaded_after("import tuning.tracking.results, tuning.tracking.store, tuning.tracking.mirror, "
                        "dashboards.report, dashboards.ui")
    assert tops(mods, ("ray", "optuna")) == []


def test_the_ray_side_of_a_multi_worker_trial_loads_no_model_zoo():
    # the Tune actor of a multi-worker trial only waits on its trainer: it loads the module but never trains
    mods = loaded_after("import tuning.sweep.data_parallel, tuning.sweep.trainable")
    assert tops(mods, ("timm", "torchvision", "transformers", "sklearn", "peft")) == []


def test_a_model_that_is_not_a_vit_loads_no_timm():
    mods = loaded_after("import tuning.trial.recipe, tuning.trial.models")
    assert tops(mods, ("timm", "torchvision")) == []


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved, lazy ones included)."""
    names = set()
    parts = package.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)   # `from tuning import cli` imports tuning.cli
    return names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str):
    """The index of the layer a module belongs to (the longest matching prefix), None if it is not ours."""
    best = None
    for i, layer in enumerate(LAYERS):
        if name == layer or name.startswith(layer + "."):
            if best is None or len(layer) > len(LAYERS[best]):
                best = i
    return best


def package_modules():
    for top in ("q3r", "tuning", "dashboards"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path


def test_every_module_of_ours_has_a_layer():
    homeless = [str(p.relative_to(ROOT)) for p in package_modules()
                if layer_of(module_name(p)) is None and module_name(p) != "tuning"]
    assert homeless == [], f"modules outside the layers {LAYERS}: {homeless}"


@pytest.mark.parametrize("path", list(package_modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_layer_above_its_own(path):
    name = module_name(path)
    own = layer_of(name)
    if own is None:
        return                                   # tuning/__init__.py: a docstring
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for imported in imported_modules(path, package):
        other = layer_of(imported)
        assert other is None or other <= own, (
            f"{path.relative_to(ROOT)} (layer {LAYERS[own]}) imports {imported} (layer {LAYERS[other]}, above it)")
        top = imported.split(".")[0]
        assert top not in FORBIDDEN.get(LAYERS[own], ()), f"{path.relative_to(ROOT)} imports {imported}"
        if LAYERS[own] == "tuning.tracking" and path.name != "callback.py":
            assert top != "ray", f"{path.relative_to(ROOT)} imports {imported}: only callback.py may import Ray"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: an upward import, written as each kind of statement, is seen."""
    for line in ("import dashboards.report", "from tuning.sweep import driver", "from tuning import cli"):
        f = tmp_path / "m.py"
        f.write_text(f"def later():\n    {line}\n")
        found = {layer_of(m) for m in imported_modules(f, "tuning.analysis")} - {None}
        assert max(found) > LAYERS.index("tuning.analysis"), line
