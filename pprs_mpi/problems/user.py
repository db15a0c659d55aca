"""A user's own objective: a builder function named as `FILE.py:FUNCTION` or `package.module:FUNCTION`.

The builder returns a `Problem` or a `Graph`; its keyword arguments become the problem's parameters,
typed from their annotations, else from their defaults (else text). Every MPI rank loads and calls
the builder itself, so it must be deterministic (seed any random numbers it draws).
Every mistake is a ValueError with a one-line message naming the file and the function.

Which functions are builders. A reference may come from a command line, but also from a TOML file
or a trace being resumed, which someone else may have written: `problem = "os:system"`, pip's
`rmtree` or this package's own helpers with chosen `[problem_args]` must not be called. So only
functions marked as builders are: a `def` in the very file or module the reference names, decorated
`@pprs_mpi.builder` or annotated to return a Problem or a Graph (`-> Problem`, `-> Graph`). Where a
function is defined or installed does not count. The mark is looked for twice: in the source text,
before the file or module is imported (a file whose function is not marked is never run: a user's
cleanup script named by a trace stays unexecuted), and on the function the import defined, before it
is called. This is no sandbox: loading a marked builder imports its file or module and runs its code,
as `torch.load` runs a pickle's. Resume traces and use configs you trust.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
import typing

from pprs_mpi.graph import Graph
from pprs_mpi.problems import BUILDER_MARK, REQUIRED, Parameter, Problem, ProblemSpec

_SIMPLE_TYPES = (int, float, bool, str)
HOW_TO_MARK = "decorate it with @pprs_mpi.builder or annotate it to return a Problem or a Graph (-> Problem)"
_loaded: dict[tuple, object] = {}  # modules loaded from files, by (path, mtime, size): each version runs once


def load_builder(reference: str) -> ProblemSpec:
    """The spec of the builder `reference`; a file path in it is made absolute so that a resume finds it."""
    where, _, function = reference.rpartition(":")
    if not where or not function.isidentifier():
        raise ValueError(f"problem {reference!r}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    if where.endswith(".py") or os.sep in where:
        path = os.path.abspath(where)
        reference = f"{path}:{function}"
        _check_source(_file_source(path, reference), path, function, reference)
        module = _module_from_file(path, reference)
    else:
        _check_source(_module_source(where, reference), where, function, reference)
        module = _module_by_name(where, reference)
    builder = getattr(module, function, None)
    if not _marked(builder):  # the def was marked, but its name is bound to something else once imported
        raise ValueError(f"problem {reference!r}: {function!r} in {where} is not marked as a builder: {HOW_TO_MARK}")
    doc = (inspect.getdoc(builder) or "").strip().splitlines()
    return ProblemSpec(builder, _parameters(builder, reference), doc[0] if doc else reference, reference)


def _check_source(source: str, where: str, function: str, reference: str) -> None:
    """Refuses, before `where` is imported, a reference whose function is not a marked `def` in its source."""
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as err:
        raise ValueError(f"problem {reference!r}: importing {where} failed: {describe_error(err)}") from None
    defs = [node for node in _top_level(tree.body) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name == function]
    if not defs:
        raise ValueError(f"problem {reference!r}: {where} defines no function {function!r} (a builder is a def "
                         "in the file or module that the reference names, not a name imported there)")
    if not any(_marked_in_source(node) for node in defs):
        raise ValueError(f"problem {reference!r}: {function!r} in {where} is not marked as a builder: {HOW_TO_MARK}")


def _top_level(statements: list) -> typing.Iterator[ast.stmt]:
    """The statements of a module's body, those inside its if/try/with blocks included (not in functions)."""
    for node in statements:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _marked_in_source(node: ast.FunctionDef) -> bool:
    """Whether a def is decorated `builder` (`@builder`, `@pprs_mpi.builder`) or annotated -> Problem/Graph
    (the annotation's names are resolved once the module is imported, see `_marked`)."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if getattr(target, "id", None) == "builder" or getattr(target, "attr", None) == "builder":
            return True
    return node.returns is not None and bool({"Problem", "Graph"} & set(re.findall(r"\w+", ast.unparse(node.returns))))


def _marked(builder) -> bool:
    """Whether the function the import defined carries the mark of `pprs_mpi.builder` or a return annotation."""
    return callable(builder) and (getattr(builder, BUILDER_MARK, False) is True or _returns_a_problem(builder))


def _returns_a_problem(builder) -> bool:
    """Whether `builder` is annotated to return a Problem or a Graph (or an Optional/Union of them); the
    annotation must resolve to pprs_mpi's classes, so another library's `Graph` is no mark."""
    try:
        annotation = typing.get_type_hints(builder).get("return")
        options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _union_type()) else (
            annotation,)
    except Exception:  # noqa: BLE001 — an unresolvable argument annotation: resolve the return one alone
        options = _resolved(getattr(builder, "__annotations__", {}).get("return"), builder)
    return any(isinstance(option, type) and issubclass(option, (Problem, Graph)) for option in options)


def _resolved(annotation, builder) -> list:
    """The objects a return annotation names ('Problem', 'pprs_mpi.Graph | None' in the builder's module),
    looked up name by name, never evaluated."""
    if not isinstance(annotation, str):
        return [annotation]
    found = []
    for part in annotation.split("|"):
        value, *attributes = part.strip().split(".")
        value = getattr(builder, "__globals__", {}).get(value)
        for attribute in attributes:
            value = getattr(value, attribute, None)
        found.append(value)
    return found


def _file_source(path: str, reference: str) -> str:
    """The text of the builder's file, read (not run) to find the builder's mark."""
    if not os.path.isfile(path):
        raise ValueError(f"problem {reference!r}: no such file {path}")
    try:
        with open(path, "rb") as handle:
            return importlib.util.decode_source(handle.read())
    except (OSError, UnicodeDecodeError, SyntaxError) as err:
        raise ValueError(f"problem {reference!r}: cannot read {path} ({err})") from None


def _module_source(name: str, reference: str) -> str:
    """The source of module `name`, found without importing it (its parent packages are imported)."""
    try:
        spec = importlib.util.find_spec(name)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 — a parent package's own error (even SystemExit), in one line
        if isinstance(err, ModuleNotFoundError) and err.name and name.startswith(err.name):
            raise ValueError(f"problem {reference!r}: no module named {err.name!r}") from None
        raise ValueError(f"problem {reference!r}: importing {name} failed: {describe_error(err)}") from None
    if spec is None:
        raise ValueError(f"problem {reference!r}: no module named {name!r}")
    try:
        source = spec.loader.get_source(name) if hasattr(spec.loader, "get_source") else None
    except (ImportError, OSError, SyntaxError) as err:
        raise ValueError(f"problem {reference!r}: cannot read the source of {name} ({err})") from None
    if source is None:
        raise ValueError(f"problem {reference!r}: {name} has no Python source, so no builder can be found in it")
    return source


def _module_from_file(path: str, reference: str):
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
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 — anything the user's module raises (even SystemExit) is bad input
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
