"""The code as ARCHITECTURE.md describes it: contracts, modules named, short modules.

- Every signature in ARCHITECTURE.md's ```python blocks is imported and compared
  with the code (``inspect.signature``, dataclass fields, constants): the
  document cannot drift from the code without this failing.
- No module of bgsyncd/ is over 600 lines (a guideline kept by a test).
- The direction of imports (the parts' layers, the engines apart, each outside
  library inside one part, no cycle) is import-linter's: the contracts in
  pyproject.toml, checked by ``lint-imports`` in scripts/test.sh.
- No list of names (states, pause reasons, endpoints...) is written out in two
  modules: one module holds the fact, the others import it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

PACKAGE = ROOT / "bgsyncd"
MAX_LINES = 600


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


@pytest.mark.parametrize("module", list(_module_names()))
def test_no_module_is_over_600_lines(module: str) -> None:
    lines = len(_source(module).read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


# -- the import contracts (pyproject.toml, checked by lint-imports) -----------------------


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package under ``root``, with this project's contracts."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("files/fsops.py", "import bgsyncd.service.daemon", "Each part imports only the parts"),
        ("inbox/scanner.py", "import bgsyncd.storage.sqlite.db", "name the SQLite engine"),
        ("jobs/applier.py", "from PIL import Image", "Pillow inside imaging"),
        ("storage/sqlite/db.py", "import bgsyncd.storage.postgres.db", "know nothing of each"),
    ],
)
def test_an_import_against_a_contract_is_caught(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    shutil.copytree(PACKAGE, tmp_path / "bgsyncd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "bgsyncd" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert len(broken) >= 1 and any(contract in row for row in broken), result.stdout


# -- tests share helpers through tests/support/, never through each other ------------------


def imported_test_modules(source: str) -> list[str]:
    """The test modules (``tests[.*].test_*``) ``source`` imports, wherever the import stands."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.extend(n for n in names if re.fullmatch(r"tests(\.\w+)*\.test_\w+", n))
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
        "from tests.unit.jobs.test_worker import queue_one\nfrom tests.system import test_crash\n"
    )
    assert sorted(imported_test_modules(source)) == [
        "tests.system.test_crash",
        "tests.test_dispatch",
        "tests.test_fleet",
        "tests.test_fuzz",
        "tests.test_worker",
        "tests.unit.jobs.test_worker",
    ]
