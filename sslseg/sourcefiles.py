"""The package source files a stage runs, computed from what its entry point imports.

Snakemake does not track imported Python modules, so each rule declares the ``sslseg``
files its stage runs as inputs; this computes them instead of hand-kept lists. The
workflow is parsed in Snakemake's own environment, so this module imports only the
standard library and finds imports by parsing files with ``ast``, never by importing them.

Every ``import``/``from ... import`` statement anywhere in a file counts: module level,
inside functions, under ``if TYPE_CHECKING:`` or ``try:`` (a lazily imported module is
still code the stage may run; a TYPE_CHECKING-only import is over-counted, never missed).
``importlib.import_module("sslseg.x")`` / ``__import__("sslseg.x")`` with a literal absolute
name count too. Anything else dynamic, e.g. ``import_module(f"sslseg.objectives.{name}")``,
is invisible: the caller must add such modules to ``modules`` explicitly.
"""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path
from typing import Iterable

PACKAGE = "sslseg"
# How a job runs, never what it computes (like the `runtime:` settings): the warm-start hand-off
# and the GPU slot claim of `python -m sslseg`, the private folder both keep their files in, and
# this module (which files count as a stage's code; a training stage hashes them for its resume).
# Not stage code, so editing them reruns nothing.
NOT_CODE = frozenset({"sslseg.warm", "sslseg.gpus", "sslseg.userdir", "sslseg.sourcefiles"})


def command_files(entry: str, modules: Iterable[str], root: str | Path) -> list[str]:
    """The files a rule's command runs (`python -m sslseg` with its stage module `entry`, plus the
    `modules` it imports by name at run time, e.g. its objective): the workflow's code inputs of a
    rule, and what a training stage's resume must have been written by."""
    return module_files([entry, "sslseg.__main__", *modules], root)


def module_files(modules: Iterable[str], root: str | Path) -> list[str]:
    """Sorted root-relative POSIX paths of every ``sslseg`` file the dotted ``modules`` run.

    Transitive over imports; includes the modules themselves and each package
    ``__init__.py`` on the way. ``root`` is the folder holding the ``sslseg/`` directory.
    A name that is not an existing ``sslseg`` module under ``root`` is a ``ValueError``.
    """
    root = os.path.abspath(root)
    find = functools.lru_cache(maxsize=None)(functools.partial(_find, root))  # per call: files change
    seen: set[str] = set()  # module names already expanded
    files: set[str] = set()
    todo: list[str] = []
    for name in [modules] if isinstance(modules, str) else modules:
        if find(name) is None:
            raise ValueError(f"{name!r} is not a module of {PACKAGE!r} under {root}")
        todo.append(name)
    while todo:
        name = todo.pop()
        if name in NOT_CODE:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b, then a.b.c
            mod = ".".join(parts[:i])
            if mod in seen:
                continue
            seen.add(mod)
            found = find(mod)
            if found is None:  # broken import in the source: nothing more to track
                break
            path, is_pkg = found
            if path is None:  # namespace package: no file of its own
                continue
            files.add(os.path.relpath(path, root).replace(os.sep, "/"))
            st = os.stat(path)
            pkg = mod if is_pkg else mod.rpartition(".")[0]
            for target, names, level in _imports(path, st.st_mtime_ns, st.st_size):
                base = _absolute(pkg, target, level)
                if base is None or not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                    continue
                todo.append(base)
                for n in names:  # `from pkg import n`: n may be a submodule or an attribute
                    if n != "*" and find(f"{base}.{n}") is not None:
                        todo.append(f"{base}.{n}")
    return sorted(files)


def _absolute(pkg: str, target: str, level: int) -> str | None:
    """The absolute module name of an import found in a module whose package is ``pkg``."""
    if level == 0:
        return target
    parts = pkg.split(".") if pkg else []
    if level - 1 > len(parts) - 1:  # relative import beyond the top-level package
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _find(root: str, name: str) -> tuple[str | None, bool] | None:
    """(file, is_package) of a module under root, (None, True) for a namespace package."""
    parts = name.split(".")
    if parts[0] != PACKAGE or not all(p.isidentifier() for p in parts):
        return None
    base = os.path.join(root, *parts)
    if os.path.isfile(os.path.join(base, "__init__.py")):  # a package wins over a module
        return os.path.join(base, "__init__.py"), True
    if os.path.isfile(base + ".py"):
        return base + ".py", False
    if os.path.isdir(base):
        return None, True
    return None


@functools.lru_cache(maxsize=None)
def _imports(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, tuple[str, ...], int], ...]:
    """(module, imported names, relative level) of every import in one file (cached per version)."""
    with open(path, "rb") as f:
        source = f.read()
    tree = ast.parse(source, filename=path)
    # Imports are statements: walk statement bodies only (a third of the nodes), and whole
    # expressions only in the rare file that may call import_module/__import__.
    dynamic = b"import_module" in source or b"__import__" in source
    blocks = (ast.stmt, ast.excepthandler, ast.match_case)
    out = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            out += [(a.name, (), 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", tuple(a.name for a in node.names), node.level))
        elif dynamic and isinstance(node, ast.Call) and node.args:
            func, arg = node.func, node.args[0]
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if fname in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                if isinstance(arg.value, str) and not arg.value.startswith("."):
                    out.append((arg.value, (), 0))
        todo += [c for c in ast.iter_child_nodes(node) if dynamic or isinstance(c, blocks)]
    return tuple(out)
