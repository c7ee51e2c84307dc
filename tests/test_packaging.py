"""Packaging: pyproject.toml and environment.yml install the same thing; the script is declared."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11+")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def parse_environment(text: str) -> dict:
    """The parts of a conda ``environment.yml`` that matter here, read line by line (PyYAML is a
    test dependency only; the test below checks this reading against it):
    ``{"name": str, "channels": [...], "conda": [...], "pip": [...]}``."""
    result: dict = {"name": None, "channels": [], "conda": [], "pip": []}
    section = None
    pip_indent = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            key, _, value = stripped.partition(":")
            section = key
            if key == "name":
                result["name"] = value.strip()
            pip_indent = None
            continue
        if not stripped.startswith("- "):
            raise ValueError(f"environment.yml: cannot read line {raw!r}")
        item = stripped[2:].strip().strip("'\"")
        if section == "channels":
            result["channels"].append(item)
        elif section == "dependencies":
            if pip_indent is not None and indent > pip_indent:
                result["pip"].append(item)
            elif item == "pip:":
                pip_indent = indent
            else:
                pip_indent = None
                result["conda"].append(item)
    return result


@pytest.fixture(scope="module")
def environment() -> dict:
    return parse_environment((ROOT / "environment.yml").read_text())


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_parser_reads_a_nested_pip_list():
    text = "name: e\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.10  # py\n  - pip\n  - pip:\n      - 'a>=1,<2'\n      - -e .\n  - numpy\n"
    assert parse_environment(text) == {
        "name": "e",
        "channels": ["conda-forge"],
        "conda": ["python>=3.10", "pip", "numpy"],
        "pip": ["a>=1,<2", "-e ."],
    }


def test_environment_installs_the_same_requirements_as_pyproject(pyproject, environment):
    project = pyproject["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["test"]
    requirements = [r for r in environment["pip"] if not r.startswith("-")]
    assert sorted(requirements) == sorted(expected)
    assert "-e ." in environment["pip"]  # and the package itself
    assert environment["name"] == "pyro-gmvae"
    assert "pip" in environment["conda"]
    python = [d for d in environment["conda"] if requirement_name(d) == "python"]
    assert python == ["python" + project["requires-python"]]


def test_environment_parser_agrees_with_yaml(environment):
    import yaml  # in the test extra: a skip here would hide a parser that reads the file wrong

    data = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = [d for d in data["dependencies"] if isinstance(d, dict)][0]["pip"]
    assert pip == environment["pip"]
    assert [d for d in data["dependencies"] if isinstance(d, str)] == environment["conda"]


def test_the_test_extra_installs_the_distributed_one(pyproject):
    """CI installs ``.[test]``: the two-process tests must find Lightning there."""
    extras = pyproject["project"]["optional-dependencies"]
    assert set(extras["distributed"]) <= set(extras["test"])


def test_dependencies_are_ranges(pyproject):
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    for req in project["dependencies"] + extras["test"] + extras["distributed"]:
        assert ">=" in req, f"{req} should give a lower bound"
        assert "==" not in req, f"{req} should be a range, not a pin"


def test_console_script_gmvae_is_declared_and_resolves(pyproject):
    target = pyproject["project"]["scripts"]["gmvae"]
    assert target == "pyro_gmvae.cli:main"
    module, _, attr = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_ruff_is_configured(pyproject):
    assert pyproject["tool"]["ruff"]["line-length"] == 100
    assert "select" in pyproject["tool"]["ruff"]["lint"]


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the README's test command verbatim, so the README's promise is what CI checks."""
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r'^TEST_COMMAND="(.+)"$', ci, flags=re.MULTILINE)
    assert match, ".ci/run should set TEST_COMMAND"
    command = match.group(1)
    readme_lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    assert command in readme_lines
    assert 'bash -euo pipefail -c "$TEST_COMMAND"' in ci
    assert "set -euo pipefail" in ci
    assert "ruff check ." in ci and "ruff format --check ." in ci


def test_readme_documents_every_train_flag():
    """The README's table of ``gmvae train`` flags names exactly the flags the parser has."""
    import argparse

    from pyro_gmvae.cli import build_parser

    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    flags = {
        s
        for action in subparsers.choices["train"]._actions
        for s in action.option_strings
        if s.startswith("--") and s != "--help"
    }
    rows = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `--")
    ]
    documented = {
        flag for row in rows for flag in re.findall(r"`(--[a-z-]+)`", row.split(" | ")[0])
    }
    assert documented == flags, (
        f"missing from README: {sorted(flags - documented)}; not flags: {sorted(documented - flags)}"
    )


def test_every_public_name_resolves_from_its_module():
    """The package imports its names on first use; each one in ``__all__`` must arrive, be the
    object its module defines, and be listed by ``dir()``."""
    import pyro_gmvae

    assert sorted(pyro_gmvae.__all__) == sorted(pyro_gmvae._SOURCES)
    assert len(set(pyro_gmvae.__all__)) == len(pyro_gmvae.__all__)
    for name in pyro_gmvae.__all__:
        module = importlib.import_module(f"pyro_gmvae.{pyro_gmvae._SOURCES[name]}")
        assert getattr(pyro_gmvae, name) is getattr(module, name), name
    assert set(pyro_gmvae.__all__) <= set(dir(pyro_gmvae))
    with pytest.raises(AttributeError, match="no_such_name"):
        pyro_gmvae.no_such_name  # noqa: B018 (the lookup is the test)
    # Submodules are still importable by name from the package, as the notebooks do.
    from pyro_gmvae import plots

    assert plots is importlib.import_module("pyro_gmvae.plots")


def test_the_package_version_is_the_distributions(pyproject):
    import pyro_gmvae

    assert pyro_gmvae.__version__ == pyproject["project"]["version"]


def _package_imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, at module level or inside
    functions (both count: a function-local import is a real edge of the graph)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "pyro_gmvae"
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        name = path.stem
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges.add(node.module.split(".")[0])
                else:  # from . import x
                    edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro_gmvae."):
                edges.add(node.module.split(".")[1])
        graph[name] = edges - {name}
    return graph


def test_the_package_has_no_import_cycle():
    """Data flows one way (STYLE.md): a cycle means two modules that cannot be read apart. The
    package's __init__ (lazy, it names every module) and __main__ are the roots, not part of it."""
    graph = {
        k: v - {"__init__"}
        for k, v in _package_imports().items()
        if k not in ("__init__", "__main__")
    }
    visiting, done, cycles = set(), set(), []

    def visit(module: str, path: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(path[path.index(module) :] + [module])
            return
        visiting.add(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_the_ground_floor_imports_nothing_of_the_package():
    graph = _package_imports()
    assert graph["errors"] == set()
    assert graph["files"] == set()
    assert graph["rng"] == set()
    assert graph["checkpoints"] <= {"errors", "files"}
    assert "runs" not in graph["model"] and "runs" not in graph["train"]


def test_tests_and_benchmarks_use_no_private_trainer_state():
    """The recipe is changed through public names; tests and benchmarks are held to that too."""
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\b(tr|trainer|self\.trainer|runner\.trainer)\._[a-z]")
    found = [
        f"{path.relative_to(root)}:{i}"
        for folder in ("tests", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
