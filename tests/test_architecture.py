"""The code as ARCHITECTURE.md describes it: contracts, one-way imports, short modules.

- Every signature in ARCHITECTURE.md's ```python blocks is imported and compared
  with the code (``inspect.signature``, dataclass fields, constants): the
  document cannot drift from the code without this failing.
- No import cycle among bgsyncd's modules at run time (the graph of the
  imports a module runs when it is imported, built with ``ast``).
- No module of bgsyncd/ is over 400 lines.
- Each outside library is imported only in its home (Pillow in imaging and
  the demo, watchdog in the watcher, httpx in the client...).
- No list of names (states, pause reasons, endpoints...) is written out in two
  modules: one module holds the fact, the others import it.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bgsyncd"
MAX_LINES = 400


# -- ARCHITECTURE.md's contracts ---------------------------------------------------------


def contract_blocks(text: str) -> list[tuple[str, ast.Module]]:
    """Each ```python block of ``text`` as (its module, its parsed stubs).

    A block's first line names its module: ``# bgsyncd.dispatch.pacer``.
    """
    blocks = []
    for body in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M):
        first = body.splitlines()[0]
        match = re.fullmatch(r"# (bgsyncd(?:\.\w+)*)", first.strip())
        assert match, f"a contract block must start with '# bgsyncd.<module>': {first!r}"
        blocks.append((match.group(1), ast.parse(body)))
    return blocks


def _kind(arg_kind: str) -> inspect._ParameterKind:
    return inspect._ParameterKind[arg_kind]


def documented_parameters(node: ast.FunctionDef) -> list[tuple[str, Any, str, str | None]]:
    """(name, kind, annotation, default) of each parameter written in the document.

    A default of ``...`` means "has a default, not a literal" (``time.time``).
    """
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += args.defaults
    out: list[tuple[str, Any, str, str | None]] = []

    def add(arg: ast.arg, kind: str, default: ast.expr | None) -> None:
        note = "" if arg.annotation is None else ast.unparse(arg.annotation)
        out.append((arg.arg, _kind(kind), note, None if default is None else ast.unparse(default)))

    for i, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        only = i < len(args.posonlyargs)
        add(arg, "POSITIONAL_ONLY" if only else "POSITIONAL_OR_KEYWORD", default)
    if args.vararg:
        add(args.vararg, "VAR_POSITIONAL", None)
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        add(arg, "KEYWORD_ONLY", kw_default)
    if args.kwarg:
        add(args.kwarg, "VAR_KEYWORD", None)
    return out


def actual_parameters(fn: Any) -> list[tuple[str, Any, str, str | None]]:
    """The same shape from the code (annotations are strings: postponed evaluation)."""
    out = []
    for p in inspect.signature(fn).parameters.values():
        note = "" if p.annotation is inspect.Parameter.empty else str(p.annotation)
        default = None
        if p.default is not inspect.Parameter.empty:
            default = repr(p.default) if _is_literal(p.default) else "..."
        out.append((p.name, p.kind, note, default))
    return out


def _is_literal(value: object) -> bool:
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError):
        return False


def _normal(default: str | None) -> str | None:
    """A documented default as the code's repr would print it (``...`` kept)."""
    if default is None or default == "...":
        return default
    return repr(ast.literal_eval(default))


def check_function(where: str, node: ast.FunctionDef, fn: Any) -> list[str]:
    """Differences between a documented ``def`` and the function in the code."""
    if isinstance(fn, property):
        fn = fn.fget
    if isinstance(fn, (staticmethod, classmethod)):
        fn = fn.__func__
    wanted = [(n, k, a, _normal(d)) for n, k, a, d in documented_parameters(node)]
    got = actual_parameters(fn)
    problems = []
    if wanted != got:
        problems.append(f"{where}{_show(wanted)} documented, the code has {where}{_show(got)}")
    returns = "" if node.returns is None else ast.unparse(node.returns)
    actual_returns = inspect.signature(fn).return_annotation
    actual = "" if actual_returns is inspect.Signature.empty else str(actual_returns)
    if returns != actual:
        problems.append(f"{where} returns {returns!r} documented, {actual!r} in the code")
    return problems


def _show(params: list[tuple[str, Any, str, str | None]]) -> str:
    parts = []
    for name, kind, note, default in params:
        text = name + (f": {note}" if note else "") + (f" = {default}" if default else "")
        parts.append(("*" if kind == inspect.Parameter.KEYWORD_ONLY else "") + text)
    return "(" + ", ".join(parts) + ")"


def check_class(module: Any, node: ast.ClassDef) -> list[str]:
    """Differences between a documented class (fields, methods) and the code's."""
    cls = getattr(module, node.name, None)
    where = f"{module.__name__}.{node.name}"
    if not inspect.isclass(cls):
        return [f"{where} is documented but not in the code"]
    problems = []
    fields = [s for s in node.body if isinstance(s, ast.AnnAssign)]
    if fields:
        assert dataclasses.is_dataclass(cls), f"{where}: fields are documented for dataclasses"
        wanted = [(ast.unparse(f.target), ast.unparse(f.annotation)) for f in fields]
        got = [(f.name, str(f.type)) for f in dataclasses.fields(cls)]
        if wanted != got:
            problems.append(f"{where} fields {wanted} documented, the code has {got}")
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef):
            member = inspect.getattr_static(cls, stmt.name, None)
            if member is None:
                problems.append(f"{where}.{stmt.name} is documented but not in the code")
            else:
                problems += check_function(f"{where}.{stmt.name}", stmt, member)
    return problems


def check_block(module_name: str, tree: ast.Module) -> list[str]:
    """Every difference between one documented block and its module."""
    module = importlib.import_module(module_name)
    problems = []
    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef):
            problems += check_class(module, stmt)
        elif isinstance(stmt, ast.FunctionDef):
            fn = getattr(module, stmt.name, None)
            if fn is None:
                problems.append(f"{module_name}.{stmt.name} is documented but not in the code")
            else:
                problems += check_function(f"{module_name}.{stmt.name}", stmt, fn)
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                name = ast.unparse(target)
                wanted = ast.literal_eval(stmt.value)
                if getattr(module, name, None) != wanted:
                    problems.append(f"{module_name}.{name} = {wanted!r} documented")
        elif not isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Expr)):
            problems.append(f"{module_name}: cannot check {ast.unparse(stmt)[:60]!r}")
    return problems


ARCHITECTURE = (ROOT / "ARCHITECTURE.md").read_text()
BLOCKS = contract_blocks(ARCHITECTURE)


def test_architecture_lists_contracts_for_the_main_modules() -> None:
    documented = {name for name, _ in BLOCKS}
    for name in (
        "bgsyncd.storage.contract",
        "bgsyncd.dispatch.pacer",
        "bgsyncd.api.client",
        "bgsyncd.inbox.watcher",
    ):
        assert name in documented


@pytest.mark.parametrize(("module_name", "tree"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_every_documented_signature_matches_the_code(module_name: str, tree: ast.Module) -> None:
    assert check_block(module_name, tree) == []


def test_a_signature_that_drifted_is_caught() -> None:
    # The checker itself: a wrong parameter, return, field and constant each show.
    doc = (
        "```python\n# bgsyncd.jobs.backoff\n"
        "def compute_backoff(attempt: int, base: float) -> int: ...\n"
        "```\n"
        "```python\n# bgsyncd.storage.contract\n"
        "STATES = ('pending',)\n"
        "class Found:\n    folder: str\n"
        "class JobStore:\n    def claim(self, lease_seconds: float) -> Job | None: ...\n"
        "```\n"
    )
    problems = [p for name, tree in contract_blocks(doc) for p in check_block(name, tree)]
    expected = [
        "compute_backoff(attempt: int, base: float) documented",
        "compute_backoff returns 'int' documented",
        "STATES = ('pending',) documented",
        "Found fields [('folder', 'str')] documented",
        "JobStore.claim(self, lease_seconds: float) documented",
    ]
    assert len(problems) == len(expected), problems
    for problem, text in zip(problems, expected, strict=True):
        assert text in problem


def test_every_module_of_bgsyncd_is_named_in_architecture() -> None:
    missing = [m for m in _module_names() if f"`{_short(m)}`" not in ARCHITECTURE]
    assert missing == []


def _short(module: str) -> str:
    """How ARCHITECTURE.md names a module: ``pacer.py``, ``emulator/``, ``imaging/codec.py``."""
    parts = module.split(".")[1:]
    if not parts:
        return "bgsyncd/"
    return "/".join(parts) + ("/" if (PACKAGE.joinpath(*parts) / "__init__.py").exists() else ".py")


# -- one place for each fact --------------------------------------------------------------


def written_name_lists(source: str, namespace: dict[str, Any]) -> dict[str, frozenset[str]]:
    """The constants of a module written out as a list of names, by value.

    ``NAMES = ("a", B)``: a tuple, list or set (or ``frozenset({...})``) of two
    or more string literals or names, assigned at module level, taken as the
    set of strings it holds at run time (``namespace``, the module's). Lists
    computed from others (comprehensions, calls) are derived, not written: left out.
    """
    found: dict[str, frozenset[str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Call) and ast.unparse(value.func) in ("frozenset", "set"):
            value = value.args[0] if len(value.args) == 1 else value
        if not isinstance(value, (ast.Tuple, ast.List, ast.Set)) or len(value.elts) < 2:
            continue
        if not all(isinstance(e, (ast.Constant, ast.Name)) for e in value.elts):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and not target.id.startswith("__"):
                names = namespace[target.id]
                if all(isinstance(n, str) for n in names):
                    found[target.id] = frozenset(names)
    return found


def copies(lists: dict[str, dict[str, frozenset[str]]]) -> list[list[str]]:
    """The ``module.NAME``s holding the same names, for each list written more than once."""
    holders: dict[frozenset[str], list[str]] = {}
    for module, found in lists.items():
        for name, names in found.items():
            holders.setdefault(names, []).append(f"{module}.{name}")
    return [sorted(where) for where in holders.values() if len(where) > 1]


def test_no_list_of_names_is_written_in_two_modules() -> None:
    lists = {
        m: written_name_lists(_source(m).read_text(), vars(importlib.import_module(m)))
        for m in _module_names()
    }
    assert lists["bgsyncd.storage.contract"]["STATES"], "the lists are found (the job states)"
    assert copies(lists) == []


def test_a_list_of_names_written_twice_is_caught() -> None:
    # The checker itself: a copy in another order, or spelled with names, is a copy.
    one = 'A = "a"\nB = "b"\nNAMES = (A, B)\nDERIVED = tuple(n for n in NAMES)\n'
    other = 'SAME = frozenset({"b", "a"})\nMORE = ["a", "b", "c"]\nONE = ("a",)\n'
    lists = {}
    for module, source in (("one", one), ("other", other)):
        namespace: dict[str, Any] = {}
        exec(source, namespace)
        lists[module] = written_name_lists(source, namespace)
    assert lists["one"] == {"NAMES": {"a", "b"}}
    assert copies(lists) == [["one.NAMES", "other.SAME"]]


# -- imports and sizes -------------------------------------------------------------------


def _module_names() -> Iterator[str]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":
            yield ".".join(parts)


def _source(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def run_time_imports(module: str, known: set[str]) -> set[str]:
    """The bgsyncd modules ``module`` imports when it is imported.

    Imports inside functions run later and ``if TYPE_CHECKING:`` never: both
    are left out. ``from pkg import sub`` needs only ``pkg.sub``.
    """
    tree = ast.parse(_source(module).read_text())
    package = module if _source(module).name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" in ast.unparse(node.test):
                    visit(node.orelse)
                else:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody):
                    visit(part)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                subs = {f"{base}.{a.name}" for a in node.names} & known
                found.update(subs)
                if len(subs) < len(node.names):
                    found.add(base)

    visit(tree.body)
    # Importing a.b.c runs a and a.b first (unless they are the importer's own packages).
    for name in list(found):
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {m for m in found & known if m != module and not module.startswith(m + ".")}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_among_bgsyncd_modules() -> None:
    known = set(_module_names())
    graph = {m: run_time_imports(m, known) for m in known}
    assert graph["bgsyncd.service.daemon"], "the graph is built (daemon imports its components)"
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


# Each outside library behind one module (or one family of modules): STYLE.md.
LIBRARY_HOMES = {
    "PIL": ("bgsyncd.imaging.*", "bgsyncd.commands.demo"),  # the demo draws its samples
    "watchdog": ("bgsyncd.inbox.watcher",),
    "prometheus_client": ("bgsyncd.ops.metrics",),
    "httpx": ("bgsyncd.api.client", "bgsyncd.api.deadline"),  # deadline: the client's sockets
    "httpcore": ("bgsyncd.api.deadline",),
    "sqlite3": ("bgsyncd.storage.sqlite.*",),
    "psycopg": ("bgsyncd.storage.postgres.*", "bgsyncd.fleet.*", "bgsyncd.service.backends"),
    "psycopg_pool": ("bgsyncd.storage.postgres.*", "bgsyncd.fleet.*", "bgsyncd.service.backends"),
    "structlog": ("bgsyncd.logs",),
}


def library_imports(source: str) -> set[str]:
    """The top-level names of every absolute import in ``source``, wherever it stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def strays(imports: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(library, module) for each module importing a library outside its homes."""
    return sorted(
        (library, module)
        for module, libraries in imports.items()
        for library in libraries & LIBRARY_HOMES.keys()
        if not any(fnmatch.fnmatchcase(module, home) for home in LIBRARY_HOMES[library])
    )


def test_each_outside_library_is_imported_only_in_its_home() -> None:
    imports = {m: library_imports(_source(m).read_text()) for m in _module_names()}
    assert "PIL" in imports["bgsyncd.imaging.codec"], "the imports are found"
    assert strays(imports) == []


def test_a_library_imported_outside_its_home_is_caught() -> None:
    source = "def f():\n    from PIL import Image\n    import httpx.Client\n"
    imports = {"bgsyncd.jobs.worker": library_imports(source), "bgsyncd.api.client": {"httpx"}}
    assert strays(imports) == [("PIL", "bgsyncd.jobs.worker"), ("httpx", "bgsyncd.jobs.worker")]


@pytest.mark.parametrize("module", list(_module_names()))
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = len(_source(module).read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


# -- tests share helpers through tests/support/, never through each other ------------------


def imported_test_modules(source: str) -> list[str]:
    """The ``tests.test_*`` modules ``source`` imports, wherever the import stands."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.extend(n for n in names if re.fullmatch(r"tests\.test_\w+", n))
    return found


def test_no_test_module_imports_another() -> None:
    files = sorted({*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("tests/**/conftest.py")})
    assert ROOT / "tests" / "conftest.py" in files, "the test modules are found"
    imports = {
        str(f.relative_to(ROOT)): imported_test_modules(f.read_text(encoding="utf-8"))
        for f in files
    }
    assert {f: found for f, found in imports.items() if found} == {}


def test_a_test_module_importing_another_is_caught() -> None:
    source = (
        "from tests.test_worker import make_worker\nimport tests.test_fleet\n"
        "from tests import test_fuzz\nfrom tests.support.helpers import wait_until\n"
        "def f():\n    from tests.test_dispatch import attempts\n"
    )
    assert sorted(imported_test_modules(source)) == [
        "tests.test_dispatch",
        "tests.test_fleet",
        "tests.test_fuzz",
        "tests.test_worker",
    ]
