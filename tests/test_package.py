"""The package's shape: folders by domain, each module saying what it is for, short functions,
and the layering that keeps the pipeline layer and the plumbing out of every stage's code."""

import ast

import pytest

from ddpm.pipeline.fingerprints import OUTSIDE, PACKAGE, import_closure
from ddpm.pipeline.stages import STAGES

MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
DOMAINS = {"data", "diffusion", "sampling", "training", "evaluation", "report"}


def test_the_package_is_folders_by_domain_with_only_the_command_line_on_top():
    top = {m for m in MODULES if "/" not in m}
    assert top == {"__init__.py", "__main__.py", "cli.py"}
    folders = {m.split("/")[0] for m in MODULES if "/" in m}
    assert folders == DOMAINS | {"pipeline", "plumbing"}


def test_the_tests_mirror_the_package():
    """A module's tests sit in the folder of the same name under tests/; at the top stay only
    the tests of the whole command line, of the package's shape and of the benchmarks."""
    tests = PACKAGE.parent / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == DOMAINS | {"pipeline", "plumbing"}
    assert all(any((tests / f).glob("test_*.py")) for f in folders), "no empty folder"
    top = {p.name for p in tests.glob("test_*.py")}
    assert top == {"test_bad_inputs.py", "test_package.py", "test_bench_gpu.py"}


@pytest.mark.parametrize("name", MODULES)
def test_each_module_starts_with_what_it_is_for(name):
    if name == "__main__.py":
        return  # two lines that call cli.main
    doc = ast.get_docstring(ast.parse((PACKAGE / name).read_text()))
    assert doc and len(doc.split("\n")[0]) > 20, f"{name}: its first line says what it is for"


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name in MODULES
        for node in ast.walk(ast.parse((PACKAGE / name).read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def _imports(name: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm."):
            out.add(node.module.split(".")[1])
    return out


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("plumbing/")])
def test_plumbing_imports_only_plumbing(name):
    """Plumbing sits under everything: it never reaches into a domain, so moving it out of the
    stages' code leaves nothing behind that they run."""
    assert _imports(name) <= {"plumbing"}


def test_every_stage_has_an_entry_module_of_its_own_in_its_domain():
    for stage in STAGES:
        folder, file = stage.entry.split("/")
        assert folder in DOMAINS and file == f"{stage.name}.py"
        assert (
            not any(
                other.entry in import_closure(stage.entry) for other in STAGES if other is not stage
            )
            or stage.name == "report"
        ), f"{stage.name} runs another stage's entry module"


def test_the_outside_folders_exist():
    for name in OUTSIDE:
        assert (PACKAGE / name).exists(), name


def test_the_package_ships_its_templates():
    assert (PACKAGE / "report/templates/report.html.j2").is_file()
    assert (PACKAGE / "pipeline/templates/config_readme.md.j2").is_file()
