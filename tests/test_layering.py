"""The layering rules, over every module of the project (walked, not listed).

- The science core (initmatters_core) imports neither Flower nor Hydra nor any edge package
  (flwr_datasets, a data library, is allowed), at module level or inside functions.
- No import cycle anywhere in the project's packages, counting imports inside functions too.
- Validating settings imports no torch (the task registry reads only the tasks' settings modules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from initmatters.launch import PROJECT_ROOT

CORE = "initmatters_core"
PACKAGES = (CORE, "initmatters", "client_app", "server_app", "strategies", "hydra_plugins")
EDGE = tuple(package for package in PACKAGES if package != CORE)
FORBIDDEN_IN_CORE = ("flwr", "hydra", "omegaconf", *EDGE)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name an `import` or `from ... import` in the file refers to (any depth in the code)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """module -> project modules it imports."""
    modules = module_files()
    return {name: {target for target in imported_names(name, path) if target in modules and target != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_finds_every_package() -> None:
    modules = module_files()
    assert {name.split(".")[0] for name in modules} == set(PACKAGES)
    assert "initmatters_core.tasks.synthetic.task" in modules and "initmatters_core.tasks.image.task" in modules


def test_no_import_cycle_anywhere() -> None:
    assert cycles(project_graph()) == []


def test_cycle_detection_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(name for name in module_files() if name.split(".")[0] == CORE))
def test_core_module_names_no_flower_hydra_or_edge_import(name: str) -> None:
    names = imported_names(name, module_files()[name])
    assert sorted(n for n in names if n.split(".")[0] in FORBIDDEN_IN_CORE) == []


def test_importing_the_whole_core_loads_neither_flower_nor_hydra() -> None:
    core = sorted(name for name in module_files() if name.split(".")[0] == CORE)
    code = (
        "import importlib, json, sys\n"
        f"for name in {core!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(FORBIDDEN_IN_CORE)!r})))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=300, check=True)
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []


def test_validating_settings_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from initmatters_core.tasks import TASK_PACKAGES, task_settings\n"
        "for task in TASK_PACKAGES: task_settings(task)\n"
        "print(sorted(m for m in ('torch', 'numpy', 'flwr', 'hydra') if m in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=300, check=True)
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [
    ["heterogeneity.h=1.5"],  # a bad setting
    ["strategy=fedadam", "strategy.eta=0.1", "--cfg", "job"],  # a valid strategy's options are checked too
    ["--help"],
])
def test_the_run_command_answers_before_importing_torch_flower_or_ray(argv: list[str]) -> None:
    """A bad setting, --help and --cfg job need only the settings: an answer in about a second."""
    code = (
        "import sys\n"
        "from initmatters import run\n"
        "try:\n"
        f"    run.main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'flwr', 'ray') if m in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                               timeout=300)
    assert completed.stdout.strip().splitlines()[-1] == "[]", completed.stdout[-2000:] + completed.stderr[-2000:]
