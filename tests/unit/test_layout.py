"""The test layout stays true: no test outside tests/system/ starts a daemon or a server.

A test is *system* when it, or a fixture, helper or constant it uses (transitively: within its
module, tests/conftest.py and tests/support/), names a fixture or helper that starts one
(``SYSTEM_NAMES``), runs ``python -m bgsyncd`` or a script that builds the daemon, or runs
promtool or prometheus. Such tests live under tests/system/, which tests/conftest.py marks
``system``: ``pytest -m "not system"`` is the fast unit run. The in-process emulator on
loopback is unit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT

TESTS = ROOT / "tests"
SYSTEM = TESTS / "system"
# conftest's fixtures and tests/support's helpers that start a daemon, a bgsyncd command,
# PostgreSQL or promtool; what uses them is found from these.
SYSTEM_NAMES = frozenset(
    {"daemons", "pg_server", "pg_dsn", "DaemonProcess", "run_cli", "promtool", "PgServer"}
)
SERVERS = frozenset({"promtool", "prometheus"})
# Starts the daemon itself: a script that builds it, the demo script (``bgsyncd demo``).
DAEMON_SCRIPT = "from bgsyncd.service.daemon import Daemon"
DEMO = "demo.sh"


def _annotations(node: ast.AST) -> set[int]:
    """The ids of the nodes inside annotations: a type named is not a thing started."""
    inside: set[int] = set()
    for n in ast.walk(node):
        for ann in (getattr(n, "annotation", None), getattr(n, "returns", None)):
            if isinstance(ann, ast.AST):
                inside.update(id(x) for x in ast.walk(ann))
    return inside


def _word(e: ast.expr) -> object:
    """A command line's word as written: ``sys.executable`` as ``<python>``, else the literal."""
    if isinstance(e, ast.Attribute) and e.attr == "executable":
        return "<python>"
    return e.value if isinstance(e, ast.Constant) else None


def _starts_bgsyncd(elts: list[ast.expr]) -> bool:
    """``[..., sys.executable, "-m", "bgsyncd", ...]``."""
    words = [_word(e) for e in elts]
    return any(words[i : i + 3] == ["<python>", "-m", "bgsyncd"] for i in range(len(words)))


def references(node: ast.AST) -> tuple[set[str], bool]:
    """The names ``node`` uses (its fixture parameters and getfixturevalue names included,
    annotations not), and whether it starts a daemon or a server by itself."""
    names: set[str] = set()
    starts = False
    skip = _annotations(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        names.update(a.arg for a in node.args.args + node.args.kwonlyargs)
    for n in ast.walk(node):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Name):
            names.add(n.id)
        elif isinstance(n, ast.Attribute):
            names.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            starts |= DAEMON_SCRIPT in n.value or n.value == DEMO
        elif isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant):
            called = n.func.attr if isinstance(n.func, ast.Attribute) else ""
            if called == "getfixturevalue":
                names.add(str(n.args[0].value))
            starts |= called == "which" and n.args[0].value in SERVERS
        elif isinstance(n, (ast.List, ast.Tuple)) and n.elts:
            first = n.elts[0]
            starts |= isinstance(first, ast.Constant) and first.value in SERVERS
            starts |= _starts_bgsyncd(n.elts)
    return names, starts


def definitions(tree: ast.Module) -> dict[str, ast.AST]:
    """A module's top-level functions, classes and constants, by name."""
    found: dict[str, ast.AST] = {}
    for st in tree.body:
        if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[st.name] = st
        elif isinstance(st, (ast.Assign, ast.AnnAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            found.update((t.id, st) for t in targets if isinstance(t, ast.Name))
    return found


def system_definitions(tree: ast.Module, known: frozenset[str]) -> set[str]:
    """The top-level names of ``tree`` that start something, given ``known`` from elsewhere."""
    uses = {name: references(node) for name, node in definitions(tree).items()}
    system = {name for name, (_, starts) in uses.items() if starts}
    grew = True
    while grew:
        grew = False
        for name, (names, _) in uses.items():
            if name not in system and names & (known | system | SYSTEM_NAMES) - {name}:
                system.add(name)
                grew = True
    return system


def known_system() -> frozenset[str]:
    """What tests/support/ and tests/conftest.py offer that starts something."""
    known: set[str] = set()
    for path in [*sorted((TESTS / "support").glob("*.py")), TESTS / "conftest.py"]:
        known |= system_definitions(ast.parse(path.read_text(encoding="utf-8")), frozenset(known))
    return frozenset(known | SYSTEM_NAMES)


def system_tests(source: str, known: frozenset[str]) -> list[str]:
    tree = ast.parse(source)
    return sorted(n for n in system_definitions(tree, known) if n.startswith("test_"))


def test_no_test_outside_tests_system_starts_a_daemon_or_a_server() -> None:
    known = known_system()
    assert {"start_daemon", "status_json", "wait_status", "pg_dsn"} <= known, known
    modules = [p for p in sorted(TESTS.rglob("test_*.py")) if SYSTEM not in p.parents]
    assert TESTS / "unit" / "jobs" / "test_worker.py" in modules, "the unit modules are found"
    modules.remove(Path(__file__))  # its samples below name every way on purpose
    found = {
        str(p.relative_to(ROOT)): system_tests(p.read_text(encoding="utf-8"), known)
        for p in modules
    }
    assert {path: tests for path, tests in found.items() if tests} == {}


def test_every_way_a_test_starts_one_is_seen() -> None:
    source = """
import shutil, subprocess, sys
SCRIPT = "from bgsyncd.service.daemon import Daemon"
def helper(config):
    return run_cli("status", "--config", str(config))
@pytest.fixture
def store(request):
    return request.getfixturevalue("pg_dsn")
@pytest.fixture
def started(daemons):
    return daemons
def test_fixture(daemons): ...
def test_helper_of_a_helper(tmp_path): helper(tmp_path)
def test_a_fixture_of_a_fixture(started): ...
def test_getfixturevalue(store): ...
def test_python_m_bgsyncd(): subprocess.run([sys.executable, "-m", "bgsyncd", "once"])
def test_a_daemon_script(): subprocess.run([sys.executable, "-c", SCRIPT])
def test_the_demo_script(): subprocess.run([str(ROOT / "scripts" / "demo.sh")])
def test_promtool(): shutil.which("promtool")
def test_prometheus(): subprocess.Popen(["prometheus", "--config.file=p.yml"])
def test_status(tmp_path): status_json(tmp_path / "c.toml")
def test_unit(emulator, tmp_path: DaemonProcess) -> None:
    subprocess.run([sys.executable, "-c", "print(1)"])
    assert "prometheus" == "prometheus"
    assert "import bgsyncd.service.daemon" in "a contract's sample"
"""
    assert system_tests(source, known_system()) == [
        "test_a_daemon_script",
        "test_a_fixture_of_a_fixture",
        "test_fixture",
        "test_getfixturevalue",
        "test_helper_of_a_helper",
        "test_prometheus",
        "test_promtool",
        "test_python_m_bgsyncd",
        "test_status",
        "test_the_demo_script",
    ]


def test_everything_under_tests_system_and_nothing_else_is_marked_system() -> None:
    def collected(marker: str) -> list[str]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                marker,
                "tests/system/test_crash.py",
                "tests/unit/jobs/test_backoff.py",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return sorted({line.split("::")[0] for line in result.stdout.splitlines() if "::" in line})

    assert collected("system") == ["tests/system/test_crash.py"]
    assert collected("not system") == ["tests/unit/jobs/test_backoff.py"]


def test_the_unit_and_system_folders_hold_the_tests() -> None:
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []
    folders = [TESTS / "system", TESTS / "unit", *(TESTS / "unit").glob("*/")]
    for folder in folders:
        if folder.is_dir() and folder.name != "__pycache__":
            assert (folder / "__init__.py").exists(), folder
    assert Path(__file__).parent == TESTS / "unit"
