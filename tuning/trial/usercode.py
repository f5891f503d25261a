"""The user's own code: ``"module:callable"`` references, found next to the spec and on PYTHONPATH.

``import_callable("loop:train", ["/path/to/spec/folder"])`` puts the folders first on ``sys.path``,
imports the module and returns the callable, or raises ``UserCodeError`` in one line.
``shipped_files(fn, folder)`` names the files a Ray cluster needs to import it on other machines
(the sweep layer hands them to Ray's runtime environment).
"""
from __future__ import annotations

import importlib
import re
import sys
import sysconfig
from pathlib import Path
from typing import Callable, Iterable, Optional

REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


OWN_PACKAGES = ("q3r", "tuning", "dashboards")      # q3r-tune itself: installed on the workers, never shipped


class UserCodeError(ImportError):
    """A ``module:callable`` reference that does not import or does not name a callable."""


def check_reference(ref: str) -> str:
    """``ref`` if it has the form ``module:callable`` (dotted names allowed on both sides)."""
    if not isinstance(ref, str) or not REFERENCE.match(ref):
        raise ValueError(f"must be 'module:callable' (e.g. 'my_loop:train'), but got {ref!r}")
    return ref


def add_to_path(folders: Iterable[Optional[str]]) -> None:
    """Put ``folders`` first on ``sys.path`` (each once), so that their modules win."""
    for folder in reversed([str(Path(f).resolve()) for f in folders if f]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def import_callable(ref: str, search_path: Iterable[Optional[str]] = ()) -> Callable:
    """The callable ``ref`` ("module:callable") names, its module imported with ``search_path`` first."""
    check_reference(ref)
    search_path = [f for f in search_path if f]
    add_to_path(search_path)
    module_name, _, attr = ref.partition(":")
    where = f" (searched {', '.join(search_path)} and PYTHONPATH)" if search_path else " (searched PYTHONPATH)"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UserCodeError(f"function {ref!r}: no module named {e.name!r}{where}") from None
        raise UserCodeError(f"function {ref!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:                      # noqa: BLE001 - the user's module raised while importing
        raise UserCodeError(f"function {ref!r}: importing {module_name!r} raised {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserCodeError(f"function {ref!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                                f"has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"function {ref!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def _installed(path: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    return any(path.is_relative_to(Path(r).resolve()) for r in roots)


def shipped_files(fn: Callable, folder: Optional[str] = None) -> list[str]:
    """The files or package folders a Ray worker needs to import ``fn``: the top-level module or package
    of ``fn``'s module, and of every module loaded from ``folder`` (the spec's); installed ones and
    q3r-tune's own packages left out."""
    names = {fn.__module__.split(".")[0]}
    root = Path(folder).resolve() if folder else None
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if root is not None and file and Path(file).resolve().is_relative_to(root):
            names.add(name.split(".")[0])
    out = []
    for name in sorted(names - set(OWN_PACKAGES)):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file is None:
            continue
        path = Path(file).resolve()
        path = path.parent if path.name == "__init__.py" else path
        if not _installed(path):
            out.append(str(path))
    return out
