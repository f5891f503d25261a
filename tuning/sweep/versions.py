"""The versions of Ray, Optuna and MLflow q3r-tune was tested with, checked where a sweep starts.

q3r-tune declares a range for each (``ray[tune]>=2.40,<2.61`` in pyproject.toml). ``check_versions``
compares the installed versions with those ranges and, outside one, raises one line that says what to
install, before anything of Ray is imported. The ranges are read from the checkout's pyproject.toml when
q3r-tune runs from one (an editable install's metadata keeps the ranges of the day it was installed),
else from the installed package's metadata.
"""
from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path
from typing import Callable, Optional

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

CHECKED = ("ray", "optuna", "mlflow")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
_LOWER_FIRST = {">": 0, ">=": 0, "==": 1, "===": 1, "~=": 1, "!=": 2, "<=": 3, "<": 3}


class VersionError(RuntimeError):
    """An installed Ray, Optuna or MLflow outside the range q3r-tune was tested with."""


def installed_version(name: str) -> str:
    """The installed version of distribution ``name`` (``importlib.metadata``)."""
    return metadata.version(name)


def _dependencies(pyproject: Path) -> list[str]:
    if pyproject.is_file():
        try:
            import tomllib
        except ImportError:                                   # Python 3.10: the installed metadata only
            tomllib = None
        if tomllib is not None:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
            if project.get("name") == "q3r-tune":
                return list(project.get("dependencies", []))
    return metadata.requires("q3r-tune") or []


def declared(pyproject: Path = PYPROJECT) -> dict[str, Requirement]:
    """{name: requirement} of Ray, Optuna and MLflow as q3r-tune declares them (see the module docstring)."""
    out = {}
    for line in _dependencies(pyproject):
        requirement = Requirement(line)
        if requirement.name in CHECKED and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            out[requirement.name] = requirement
    return out


def show_range(requirement: Requirement) -> str:
    """``>=2.40,<2.61``: the specifiers, lower bounds first."""
    return ",".join(str(s) for s in sorted(requirement.specifier, key=lambda s: (_LOWER_FIRST[s.operator], s.version)))


def pip_line(requirement: Requirement) -> str:
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"pip install '{requirement.name}{extras}{show_range(requirement)}'"


def problem(requirement: Requirement, version: Callable[[str], str]) -> Optional[str]:
    """What is wrong with the installed ``requirement.name`` (None: it is in range)."""
    name = requirement.name
    try:
        found = version(name)
    except metadata.PackageNotFoundError:
        return f"{name} is not installed: {pip_line(requirement)}"
    try:
        ok = requirement.specifier.contains(Version(found), prereleases=True)
    except InvalidVersion:
        ok = False
    if ok:
        return None
    return f"{name} {found} is outside the range q3r-tune was tested with ({show_range(requirement)}): " \
           f"{pip_line(requirement)}"


def check_versions(version: Optional[Callable[[str], str]] = None, pyproject: Path = PYPROJECT) -> None:
    """Raise ``VersionError`` (one line) if an installed Ray, Optuna or MLflow is outside its declared range."""
    version = version or installed_version
    problems = [p for r in declared(pyproject).values() if (p := problem(r, version))]
    if problems:
        raise VersionError("; ".join(problems))
