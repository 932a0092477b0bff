"""The package's house rules (docs/ARCHITECTURE.md), checked on the code's own imports: every
import of the package, at the top of a module or inside a function, runs downhill; no module imports
another that imports it back; only the command line prints, parses arguments or draws bars."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixdaemon"
BOTTOM = {"mixdaemon", "mixdaemon.errors", "mixdaemon.files", "mixdaemon.progress", "mixdaemon.defaults",
          "mixdaemon.memory"}
# room → the rooms it may import (besides itself and the bottom modules)
ALLOWED = {
    "bottom": set(),
    "audio": set(),
    "fx": {"audio"},
    "nets": {"audio"},
    "mixing": {"audio", "fx", "nets"},
    "train": {"audio", "fx", "nets", "mixing"},
    "daemon": {"audio", "mixing"},
    "evaluation": {"audio", "mixing"},
    "cli": {"audio", "mixing", "daemon", "train", "evaluation"},
    "main": {"cli"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    if module in BOTTOM:
        return "bottom"
    if module == "mixdaemon.__main__":
        return "main"
    return module.split(".")[1]


def package_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package in the file, relative ones resolved."""
    module = module_name(path)
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mixdaemon"]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = ".".join(base.split(".")[:len(base.split(".")) - node.level + 1] + ([target] if target else []))
            if target.split(".")[0] != "mixdaemon":
                continue
            for alias in node.names:  # `from mixdaemon.audio import dsp` imports the module audio.dsp
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                              or (PACKAGE.parent / Path(*sub.split("."))).is_dir() else target))
    return found


FILES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(f): {m for _, m in package_imports(f)} - {module_name(f)} for f in FILES}


def test_the_package_is_read():
    assert len(FILES) > 40 and {"mixdaemon.mixing.engine", "mixdaemon.cli.main", "mixdaemon.audio.io"} <= set(GRAPH)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downhill(path):
    here = room(module_name(path))
    wrong = [f"line {line}: {target} ({room(target)}/)" for line, target in package_imports(path)
             if room(target) not in ALLOWED[here] | {here, "bottom"}]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({here}/) may import {sorted(ALLOWED[here])} and the bottom only: {wrong}"


def test_no_import_circles():
    """Depth-first search for a cycle in the module graph (every import, lazy ones too)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import circle: " + " → ".join(cycle))


def test_nothing_imports_the_command_line():
    importers = sorted(m for m, targets in GRAPH.items()
                       if any(room(t) == "cli" for t in targets) and room(m) not in ("cli", "main"))
    assert importers == []


@pytest.mark.parametrize("path", [f for f in FILES if room(module_name(f)) not in ("cli", "main")],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_command_line_prints_parses_or_draws_bars(path):
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"line {node.lineno}: print()")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] in ("argparse", "tqdm")]
    assert not found, f"{path.relative_to(PACKAGE)}: {found}"
