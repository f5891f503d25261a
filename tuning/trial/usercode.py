"""The user's own code in a spec: ``"package.module:callable"`` factories (``model.factory``,
``data.factory``), imported from the section's ``code`` folder (by default the spec file's folder)
or from PYTHONPATH, and the training function of a spec with ``function:`` (``import_callable``).

Every failure to import is a ``UserCodeError`` in one line naming the factory, the module and what
failed. ``user_code_paths(spec)`` lists the files and folders of the user's modules that a sweep ships
to its Ray workers (``runtime_env={"py_modules": ...}``); installed packages (timm, torchvision, ...)
and q3r-tune's own are already there.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

FACTORY = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
OWN = ("q3r", "tuning", "dashboards")           # q3r-tune's packages: on every worker already


class UserCodeError(ValueError):
    """A factory that cannot be imported, or that returned the wrong thing: one line."""


def parse_factory(text: str) -> tuple[str, str]:
    """``("package.module", "callable")`` of ``"package.module:callable"``."""
    m = FACTORY.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"must be 'package.module:callable' (a dotted module, a colon, a callable in it), "
                         f"but got {text!r}")
    return m["module"], m["attr"]


def check_reference(text: str) -> str:
    """``text`` if it has the form ``module:callable`` (a pydantic validator of ``function:``)."""
    parse_factory(text)
    return text


def on_path(folder: Optional[str]) -> None:
    """Put ``folder`` first on ``sys.path`` (once), so that modules in it import."""
    if folder:
        folder = str(Path(folder).resolve())
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def _forget_stale(module_name: str, code: Optional[str]) -> None:
    """Drop ``module_name``'s top-level module (and its submodules) from ``sys.modules`` when ``code`` holds
    a module of that name but the cached one was loaded from elsewhere: a spec names the module next to
    it, not one of the same name that this process imported earlier (another spec's, another folder's)."""
    if not code:
        return
    top = module_name.split(".")[0]
    cached = getattr(sys.modules.get(top), "__file__", None)
    folder = Path(code).resolve()
    if cached is None or not ((folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()):
        return
    if Path(cached).resolve().is_relative_to(folder):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def import_factory(text: str, code: Optional[str] = None, what: str = "factory") -> Callable:
    """The callable ``text`` names; ``code`` (a folder) is searched before PYTHONPATH."""
    module_name, attr = parse_factory(text)
    on_path(code)
    _forget_stale(module_name, code)
    where = f"{code} and PYTHONPATH" if code else "PYTHONPATH"
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise UserCodeError(f"{what} {text!r}: no module named {e.name!r} (searched {where})") from None
        raise UserCodeError(f"{what} {text!r}: importing module {module_name!r} failed: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
        raise UserCodeError(f"{what} {text!r}: importing module {module_name!r} failed: {_one_line(e)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserCodeError(f"{what} {text!r}: module {module_name!r} ({getattr(sys.modules[module_name], '__file__', '?')}) "
                                f"has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"{what} {text!r}: {attr!r} in module {module_name!r} is a {type(obj).__name__}, "
                            f"not a callable")
    return obj


def import_callable(ref: str, search_path: Iterable[Optional[str]] = ()) -> Callable:
    """The training function ``ref`` ("module:callable") names, its module imported with the folders of
    ``search_path`` first (the spec's ``code_dir``)."""
    folders = [f for f in search_path if f]
    for folder in reversed(folders[1:]):
        on_path(folder)
    return import_factory(ref, folders[0] if folders else None, "function")


def takes(fn: Callable, name: str) -> bool:
    """Whether ``fn`` (a function or a class) names the parameter ``name`` in its signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def with_facts(fn: Callable, kwargs: dict, facts: dict) -> dict:
    """``kwargs`` plus each fact (``num_classes``, ...) that ``fn`` names and ``kwargs`` does not set."""
    return {**{k: v for k, v in facts.items() if k not in kwargs and takes(fn, k)}, **kwargs}


def factory_refs(spec) -> list[tuple[str, Optional[str], str]]:
    """``(factory, code folder, field)`` of every factory a trial or sweep spec names."""
    refs = []
    for name in ("model", "data"):
        section = getattr(spec, name, None)
        if section is not None and getattr(section, "factory", None):
            refs.append((section.factory, getattr(section, "code", None), f"{name}.factory"))
    return refs


def check_imports(spec) -> None:
    """Import every factory of ``spec`` (a ``UserCodeError`` for the first that does not import)."""
    for text, code, what in factory_refs(spec):
        import_factory(text, code, what)


def _installed(path: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(path.is_relative_to(Path(r).resolve()) for r in roots if r)


def module_source(module_name: str, code: Optional[str] = None) -> Optional[Path]:
    """The file (a module) or folder (a package) of ``module_name``'s top-level module, when it is the
    user's own: neither installed nor one of q3r-tune's packages; else None."""
    top = module_name.split(".")[0]
    if top in OWN:
        return None
    on_path(code)
    spec = importlib.util.find_spec(top)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]).resolve()
    elif spec.origin and spec.origin not in ("built-in", "frozen"):
        path = Path(spec.origin).resolve()
    else:
        return None
    return None if _installed(path) else path


def user_code_paths(spec, extra: Iterable[tuple[str, Optional[str]]] = ()) -> list[str]:
    """The files and folders of the user's modules that ``spec``'s factories (and ``extra``
    ``(factory, code folder)`` pairs) import from: what a sweep ships to its Ray workers."""
    paths: list[str] = []
    for text, code in [*((t, c) for t, c, _ in factory_refs(spec)), *extra]:
        module_name, _ = parse_factory(text)
        path = module_source(module_name, code)
        if path is not None and str(path) not in paths:
            paths.append(str(path))
    return paths


def shipped_files(fn: Callable, folder: Optional[str] = None) -> list[str]:
    """The files or package folders a Ray worker needs to import ``fn``: the top-level module or package
    of ``fn``'s module, and of every module loaded from ``folder`` (the spec's), installed ones and
    q3r-tune's own packages left out."""
    names = {fn.__module__.split(".")[0]}
    root = Path(folder).resolve() if folder else None
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if root is not None and file and Path(file).resolve().is_relative_to(root):
            names.add(name.split(".")[0])
    out = []
    for name in sorted(names - set(OWN)):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file is None:
            continue
        path = Path(file).resolve()
        path = path.parent if path.name == "__init__.py" else path
        if not _installed(path):
            out.append(str(path))
    return out
