"""A user's own objective: a builder function named as `FILE.py:FUNCTION` or `package.module:FUNCTION`.

The builder returns a `Problem` or a `Graph`; its keyword arguments become the problem's parameters,
typed from their annotations, else from their defaults (else text). Every MPI rank loads and calls
the builder itself, so it must be deterministic (seed any random numbers it draws).
Every mistake is a ValueError with a one-line message naming the file and the function.

Which functions are builders. A reference may come from a command line, but also from a TOML file
or a trace being resumed, which someone else may have written: `problem = "os:system"` or
`"shutil:rmtree"` with chosen `[problem_args]` must not be called. So a reference is refused, before
the function is called, unless its function is
- in `FILE.py:FUNCTION`: defined in that file (a `def` there, not a name it imports), or annotated to
  return a Problem or a Graph; and the file is not part of the Python installation (the standard
  library, site-packages: name those as modules);
- in `package.module:FUNCTION`: annotated to return a Problem or a Graph (`-> Problem`, `-> Graph`).
This keeps library functions out; it is no sandbox: loading a reference imports its file or module
and runs its code, as `torch.load` runs a pickle's. Resume traces and use configs you trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import traceback
import typing

from pprs_mpi.graph import Graph
from pprs_mpi.problems import REQUIRED, Parameter, Problem, ProblemSpec

_SIMPLE_TYPES = (int, float, bool, str)
_loaded: dict[tuple, object] = {}  # modules loaded from files, by (path, mtime, size): each version runs once


def load_builder(reference: str) -> ProblemSpec:
    """The spec of the builder `reference`; a file path in it is made absolute so that a resume finds it."""
    where, _, function = reference.rpartition(":")
    if not where or not function.isidentifier():
        raise ValueError(f"problem {reference!r}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    from_file = where.endswith(".py") or os.sep in where
    if from_file:
        path = os.path.abspath(where)
        _refuse_installed_file(path, reference)
        module, reference = _module_from_file(path, reference), f"{path}:{function}"
    else:
        module = _module_by_name(where, reference)
    builder = getattr(module, function, None)
    if builder is None:
        raise ValueError(f"problem {reference!r}: {where} defines no function {function!r}")
    if not callable(builder):
        raise ValueError(f"problem {reference!r}: {function!r} in {where} is a {type(builder).__name__}, "
                         "not a function")
    if not _returns_a_problem(builder) and not (from_file and getattr(builder, "__module__", None) == module.__name__):
        raise ValueError(f"problem {reference!r}: {function!r} is not a builder: " + (
            f"it is not defined in {where} (only imported there) and not annotated -> Problem or -> Graph"
            if from_file else "a module's builder must be annotated to return a Problem or a Graph (-> Problem)"))
    doc = (inspect.getdoc(builder) or "").strip().splitlines()
    return ProblemSpec(builder, _parameters(builder, reference), doc[0] if doc else reference, reference)


def _refuse_installed_file(path: str, reference: str) -> None:
    """Files of the Python installation hold library functions, not builders: name their modules instead."""
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        root = os.path.realpath(paths.get(key) or "")
        if root and os.path.commonpath([os.path.realpath(path), root]) == root:
            raise ValueError(f"problem {reference!r}: {path} belongs to the Python installation ({key}); name an "
                             "installed builder as package.module:FUNCTION")


def _returns_a_problem(builder) -> bool:
    """Whether `builder` is annotated to return a Problem or a Graph (or an Optional/Union of them)."""
    try:
        annotation = typing.get_type_hints(builder).get("return")
    except Exception:  # noqa: BLE001 — unresolvable names: read the annotation's text
        annotation = getattr(builder, "__annotations__", {}).get("return") if callable(builder) else None
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _union_type()) else (
        annotation,)
    for option in options:
        if isinstance(option, type) and issubclass(option, (Problem, Graph)):
            return True
        if isinstance(option, str) and option.replace(" ", "").split("|")[0].rpartition(".")[2] in ("Problem", "Graph"):
            return True
    return False


def _module_from_file(path: str, reference: str):
    if not os.path.isfile(path):
        raise ValueError(f"problem {reference!r}: no such file {path}")
    stat = os.stat(path)
    version = (path, stat.st_mtime_ns, stat.st_size)  # an edited file is loaded again
    if version in _loaded:
        return _loaded[version]
    name = "pprs_user_" + "".join(c if c.isalnum() else "_" for c in path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that dataclasses and pickling inside the file work
    try:
        spec.loader.exec_module(module)
    except KeyboardInterrupt:
        sys.modules.pop(name, None)
        raise
    except BaseException as err:  # noqa: BLE001 — anything the user's file raises (even SystemExit) is bad input
        sys.modules.pop(name, None)
        raise ValueError(f"problem {reference!r}: importing {path} failed: {describe_error(err, path)}") from None
    _loaded[version] = module
    return module


def _module_by_name(name: str, reference: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise ValueError(f"problem {reference!r}: no module named {err.name!r}") from None
        raise ValueError(f"problem {reference!r}: importing {name} failed: {describe_error(err)}") from None
    except Exception as err:  # noqa: BLE001 — anything the user's module raises is bad input, in one line
        raise ValueError(f"problem {reference!r}: importing {name} failed: {describe_error(err)}") from None


def describe_error(err: BaseException, path: str | None = None) -> str:
    """'Type: message (line N)', the line being the deepest one in `path` (or in any file) where it arose."""
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    if isinstance(err, SyntaxError) and err.lineno:
        return f"{type(err).__name__}: {err.msg} (line {err.lineno})"
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if path is None or os.path.abspath(f.filename) == path]
    if mine:
        frame = mine[-1]
        return f"{text} ({os.path.basename(frame.filename)}, line {frame.lineno})"
    return text


def _parameters(builder, reference: str) -> dict[str, Parameter]:
    """Keyword parameters of `builder`, typed by annotation, else by default value, else text."""
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # noqa: BLE001 — unresolvable annotations: fall back to the defaults' types
        hints = {}
    params = {}
    for name, p in signature.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise ValueError(f"problem {reference!r}: argument {name!r} is positional-only; builders take keywords")
        default = REQUIRED if p.default is p.empty else p.default
        params[name] = Parameter(_type_of(hints.get(name), default), default)
    return params


def _type_of(annotation, default) -> type:
    """int, float, bool or str from an annotation (Optional[X] counts as X), else from the default."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _union_type()) else (
        annotation,)
    for option in options:
        if option in _SIMPLE_TYPES:
            return option
    if type(default) in _SIMPLE_TYPES:
        return type(default)
    return str


def _union_type():
    import types
    return getattr(types, "UnionType", typing.Union)
