"""The layers: library (q3r) -> one trial (tuning.trial) -> sweep (tuning) -> reports (dashboards).

Each layer imports only the layers below it; ``import q3r`` loads torch and none of the heavy stack.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "transformers", "peft", "sklearn", "ray", "optuna", "mlflow")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_import_q3r_loads_torch_and_nothing_of_the_heavy_stack():
    mods = loaded_after("import q3r")
    assert "torch" in mods
    assert [m for m in mods if m.split(".")[0] in HEAVY + ("tuning", "dashboards", "pydantic", "yaml")] == []


def test_the_trial_harness_loads_no_sweep_machinery():
    mods = loaded_after("import tuning.trial.recipe, tuning.trial.demo, tuning.trial.spec")
    sweep = [m for m in mods if m.split(".")[0] in ("ray", "optuna", "mlflow", "dashboards")
             or (m.startswith("tuning.") and not m.startswith("tuning.trial"))]
    assert sweep == []


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    names = set()
    parts = package.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


def package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] != "__init__" else parts[:-1])


@pytest.mark.parametrize("folder, forbidden", [
    ("q3r", ("tuning", "dashboards") + HEAVY),
    ("tuning/trial", ("dashboards", "ray", "optuna", "mlflow")),
])
def test_no_module_imports_a_layer_above_its_own(folder, forbidden):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imported_modules(path, package_of(path)):
            top = name.split(".")[0]
            above = top in forbidden or (folder == "tuning/trial" and name.startswith("tuning")
                                         and not name.startswith("tuning.trial"))
            assert not above, f"{path.relative_to(ROOT)} imports {name}"
