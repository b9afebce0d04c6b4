"""Test tiers: `make test` runs everything, `make test-fast` (`-m "not slow"`) is the quick loop.

Checks the wiring (marker registered and strict, the Makefile targets, CI on `make test`) and
that the fast tier keeps coverage: every test folder (one per package) keeps fast tests, and
slow tests stay a minority. Slow marks are read from the sources (AST) so this needs no
collection of the whole suite; `test_source_reading_agrees_with_pytest` checks that reading
against pytest's own marks for every test collected in the same session.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
MAX_SLOW_SHARE = 0.15  # of test functions (~13% today: the DDP, kill-and-resume, served-server and >= 1.5 s tests); the exception, not half the suite


def _mentions_slow(node: ast.AST) -> bool:
    """Any `slow` name in a decorator or `pytestmark` (pytest.mark.slow, pytest.param(marks=...))."""
    return any(isinstance(n, ast.Attribute) and n.attr == "slow" for n in ast.walk(node))


def _module_slow(tree: ast.Module) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets):
            if _mentions_slow(stmt.value):
                return True
    return False


def marked_functions(path: Path) -> dict[str, bool]:
    """`{name: slow}` for the test functions of one file (class methods as `Class::name`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_slow = _module_slow(tree)
    out: dict[str, bool] = {}

    def visit(body: list[ast.stmt], prefix: str, inherited: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                out[prefix + node.name] = inherited or any(_mentions_slow(d) for d in node.decorator_list)
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                slow = inherited or any(_mentions_slow(d) for d in node.decorator_list)
                visit(node.body, f"{prefix}{node.name}::", slow)

    visit(tree.body, "", module_slow)
    return out


def _test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _make_recipe(target: str) -> list[str]:
    """The command lines of one Makefile target."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(target)}\s*:", line)), None)
    assert start is not None, f"Makefile has no `{target}` target"
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def _pytest_argv(target: str) -> list[str]:
    """The argv after `pytest` of the target's one pytest command."""
    commands = [shlex.split(line) for line in _make_recipe(target) if "pytest" in line]
    assert len(commands) == 1, f"`make {target}` should run pytest once: {_make_recipe(target)}"
    argv = commands[0]
    return argv[argv.index("pytest") + 1 :]


def test_slow_marker_is_registered_and_strict():
    pytest_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.split(":")[0].strip() == "slow" for m in pytest_config["markers"])
    assert "--strict-markers" in pytest_config["addopts"].split()  # a misspelt mark is an error


def test_make_test_selects_every_test():
    argv = _pytest_argv("test")
    assert not any(a == "-m" or a.startswith("-m") and not a.startswith("--") for a in argv), argv
    assert not any(a in ("-k", "--lf", "--last-failed", "-x") for a in argv), argv
    assert "make test" in (REPO / ".ci" / "run").read_text()  # CI runs the full suite


def test_make_test_fast_deselects_slow_only():
    argv = _pytest_argv("test-fast")
    assert "-m" in argv and argv[argv.index("-m") + 1] == "not slow", argv
    assert not any(a == "-k" for a in argv), argv


def test_fast_tier_keeps_every_package_covered():
    """Each tests/<package>/ folder, and the top-level tests, keep fast tests."""
    fast_per_dir: dict[str, int] = {}
    slow = total = 0
    for path in _test_files():
        funcs = marked_functions(path)
        folder = str(path.parent.relative_to(TESTS))
        fast_per_dir[folder] = fast_per_dir.get(folder, 0) + sum(not s for s in funcs.values())
        slow += sum(funcs.values())
        total += len(funcs)
    package_dirs = {p.name for p in (REPO / "hiertrain").iterdir() if (p / "__init__.py").is_file()}
    mirrored = package_dirs & set(fast_per_dir)
    assert len(mirrored) >= 5, f"tests/ no longer mirrors hiertrain/: {sorted(fast_per_dir)}"
    empty = sorted(folder for folder, n in fast_per_dir.items() if n == 0)
    assert not empty, f"no fast test left in tests/{', tests/'.join(empty)}: the fast tier skips them"
    assert 0 < slow <= MAX_SLOW_SHARE * total, f"{slow} slow of {total} test functions"


def test_source_reading_has_teeth(tmp_path):
    """The AST reading sees each way of marking slow, and leaves unmarked tests fast."""
    path = tmp_path / "test_example.py"
    path.write_text(
        "import pytest\n\n"
        "@pytest.mark.slow\ndef test_a(): pass\n\n"
        "def test_b(): pass\n\n"
        "@pytest.mark.parametrize('x', [1, pytest.param(2, marks=pytest.mark.slow)])\ndef test_c(x): pass\n\n"
        "@pytest.mark.slow\nclass TestD:\n    def test_e(self): pass\n\n"
        "class TestF:\n    def test_g(self): pass\n"
    )
    assert marked_functions(path) == {"test_a": True, "test_b": False, "test_c": True, "TestD::test_e": True,
                                    "TestF::test_g": False}  # fmt: skip
    path.write_text("import pytest\n\npytestmark = [pytest.mark.slow]\n\ndef test_h(): pass\n")
    assert marked_functions(path) == {"test_h": True}


def test_source_reading_agrees_with_pytest(request):
    """Every collected test pytest marks slow is slow in the source reading (so "fast" above is)."""
    cache: dict[Path, dict[str, bool]] = {}
    missed = []
    for item in request.session.items:
        path = Path(str(item.path))
        if not item.get_closest_marker("slow") or TESTS not in path.parents:
            continue
        funcs = cache.setdefault(path, marked_functions(path))
        name = "::".join(p for p in item.nodeid.split("::")[1:]).split("[")[0]
        if not funcs.get(name, False):
            missed.append(item.nodeid)
    assert not missed, f"marked slow in a way the source reading misses: {missed}"
