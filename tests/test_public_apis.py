"""Only public APIs of Ray, Optuna and MLflow: no module, name or attribute of theirs whose name starts
with an underscore (dunders aside) is imported or read anywhere in our source, tests included.

Every module is read with ``ast``. Found: a private module or name in an import from the three; a private
attribute (or ``getattr``/``setattr``/``hasattr`` with a literal private name) of something of theirs:
an imported name, or a variable or attribute assigned from an expression rooted in one; ``self._x`` in a
class derived from one of their classes where our code never defines ``_x``; and any ``._x`` that our code
never defines but their code does (``self._x =``, a method or a class attribute of that name), whatever
object it is read from (``searcher.searchers["a"]._ot_study``). Attributes of other libraries' objects
(``torch._foreach_add_``) are not theirs.
"""
from __future__ import annotations

import ast
import functools
import re
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEIRS = ("ray", "optuna", "mlflow")
SCANNED = ("q3r", "tuning", "dashboards", "benchmarks", "tests")
GUARDED_CALLS = ("getattr", "setattr", "hasattr", "delattr")


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.lru_cache(maxsize=None)
def their_private_attributes() -> frozenset[str]:
    """Private attribute names their source defines: ``self._x =``, ``def _x`` and class-level ``_x =``."""
    pattern = re.compile(r"self\.(_[A-Za-z]\w*)\s*[:=]|^[ \t]+def (_[A-Za-z]\w*)|^[ \t]+(_[A-Za-z]\w*)\s*[:=]", re.M)
    names = set()
    for package in THEIRS:
        folder = Path(find_spec(package).origin).parent
        for path in folder.rglob("*.py"):
            for match in pattern.finditer(path.read_text(errors="replace")):
                names.add(next(g for g in match.groups() if g))
    return frozenset(n for n in names if private(n))


def chain(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name/Attribute chain (``None`` for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def root(node: ast.AST) -> str | None:
    """The longest Name/Attribute chain an expression is built on: ``optuna.create_study(...).trials[0]``
    -> ``optuna.create_study``."""
    while True:
        if isinstance(node, (ast.Call, ast.Subscript, ast.Starred, ast.Await)):
            node = node.func if isinstance(node, ast.Call) else node.value
        elif isinstance(node, ast.Attribute) and chain(node) is None:
            node = node.value
        else:
            return chain(node)


class Module:
    """What one of our modules binds from where, and the private accesses it makes."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.origin: dict[str, str] = {}            # local chain -> top-level package it came from
        self.findings: list[tuple[int, str]] = []

    def package_of(self, node) -> str | None:
        c = root(node)
        while c:
            if c in self.origin:
                return self.origin[c]
            c = c.rpartition(".")[0]
        return None

    def bind(self, target: ast.AST, package: str | None) -> bool:
        names = [chain(t) for t in (target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target])]
        new = [n for n in names if n and package and n not in self.origin and n not in ("self", "cls")]
        self.origin.update((n, package) for n in new)
        return bool(new)

    def read_bindings(self) -> None:
        """Imports, then (until nothing changes) what is assigned from them."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.origin[a.asname or a.name.split(".")[0]] = a.name.split(".")[0]
                    if a.name.split(".")[0] in THEIRS and any(map(private, a.name.split("."))):
                        self.findings.append((node.lineno, f"import {a.name}"))
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                top = node.module.split(".")[0]
                for a in node.names:
                    self.origin[a.asname or a.name] = top
                    if top in THEIRS and (any(map(private, node.module.split("."))) or private(a.name)):
                        self.findings.append((node.lineno, f"from {node.module} import {a.name}"))
        changed = True
        while changed:
            changed = False
            for node in ast.walk(self.tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    changed |= any([self.bind(t, self.package_of(node.value)) for t in targets])
                elif isinstance(node, (ast.For, ast.comprehension)):
                    changed |= self.bind(node.target, self.package_of(node.iter))
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    changed |= self.bind(node.optional_vars, self.package_of(node.context_expr))

    def their_classes(self) -> dict[ast.ClassDef, bool]:
        return {c: any(self.package_of(b) in THEIRS for b in c.bases)
                for c in ast.walk(self.tree) if isinstance(c, ast.ClassDef)}

    def check(self, ours: set[str]) -> list[tuple[int, str]]:
        self.read_bindings()
        derived = {id(n) for c, theirs in self.their_classes().items() if theirs for n in ast.walk(c)}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                owner, name = node.value, node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in GUARDED_CALLS
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str) and private(node.args[1].value)):
                owner, name = node.args[0], node.args[1].value
            else:
                continue
            package = self.package_of(owner)
            if package in THEIRS:
                why = f"of {package}"
            elif (package is not None and package not in SCANNED) or name in ours:
                continue                              # another library's, or our own
            elif isinstance(owner, ast.Name) and owner.id in ("self", "cls") and id(node) in derived:
                why = "inherited from a class of theirs"
            elif name in their_private_attributes():
                why = "never defined by us, defined by ray/optuna/mlflow"
            else:
                continue
            self.findings.append((node.lineno, f"{ast.unparse(node)[:80]} ({why})"))
        return sorted(set(self.findings))


def defined_privates(trees) -> set[str]:
    """Private names our code defines: attributes assigned, functions, classes, parameters, variables."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                names.add(str(node.args[1].value))
    return {n for n in names if private(n)}


def our_sources() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), filename=str(p))
            for top in SCANNED for p in sorted((ROOT / top).rglob("*.py"))}


def scan(sources: dict[Path, ast.Module], ours: set[str]) -> list[str]:
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {what}"
            for path, tree in sources.items() for line, what in Module(tree).check(ours)]


def test_our_source_uses_only_public_apis_of_ray_optuna_and_mlflow():
    sources = our_sources()
    found = scan(sources, defined_privates(sources.values()))
    assert found == [], "private APIs of ray/optuna/mlflow:\n" + "\n".join(found)


CAUGHT = {
    "from ray.tune.schedulers.async_hyperband import _Bracket": 1,
    "import mlflow.tracking._tracking_service.utils as u": 1,
    "from mlflow.tracking._tracking_service.utils import use_it": 1,
    "import optuna\nstudy = optuna.create_study()\nprint(study._storage)": 3,
    "import optuna\nfor t in optuna.create_study().trials:\n    t._trial_id": 3,
    "from mlflow import MlflowClient\nwith MlflowClient() as c:\n    c._tracking_client": 3,
    "import ray\nray._private.worker.global_worker": 2,
    "import optuna\ns = optuna.create_study()\ngetattr(s, '_storage')": 3,
    "from ray.tune.search.optuna import OptunaSearch\nclass S(OptunaSearch):\n"
    "    def f(self):\n        return self._mine_not_defined_anywhere": 4,
    "def f(searcher):\n    return searcher.searchers['a']._ot_study.sampler._n_startup_trials": 2,
    "from tuning.sweep.searcher import make_searcher\ns, _ = make_searcher(spec)\ns._ot_study": 3,
}
NOT_CAUGHT = [
    "class Ours:\n    def __init__(self):\n        self._lock = 1\n    def f(self):\n        return self._lock",
    "import torch\ntorch._foreach_add_",
    "import ray\nray.init(num_cpus=1).__dict__",
    "from tuning.analysis.recommend import _budget\n_budget(0.2)",
    "from ray.tune.search import Searcher\nclass S(Searcher):\n    def __init__(self):\n        self._mine = 1\n"
    "    def f(self):\n        return self._mine",
]


@pytest.mark.parametrize("code,line", CAUGHT.items(), ids=lambda x: str(x).splitlines()[-1][:50])
def test_the_scan_catches_a_private_api(tmp_path, code, line):
    path = tmp_path / "m.py"
    path.write_text(textwrap.dedent(code) + "\n")
    found = scan({path: ast.parse(path.read_text())}, {"_lock", "_budget", "_mine"})
    assert found and found[0].startswith(f"{path}:{line}: "), found


@pytest.mark.parametrize("code", NOT_CAUGHT, ids=lambda x: x.splitlines()[-1][:50])
def test_the_scan_leaves_our_own_privates_and_other_libraries_alone(tmp_path, code):
    path = tmp_path / "m.py"
    path.write_text(code + "\n")
    assert scan({path: ast.parse(path.read_text())}, {"_lock", "_budget", "_mine"}) == []
