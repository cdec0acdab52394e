"""The package layers, bottom to top: catalog <- operators <- codegen <- runtime <- planner <- sqlm.

A package imports only packages below it, at module level and inside functions alike, so there is
no upward edge and no cycle between packages (docs/ARCHITECTURE.md)."""
import ast
from pathlib import Path

import pytest

LAYERS = ("catalog", "operators", "codegen", "runtime", "planner", "sqlm")
ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package):
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for path in sorted((ROOT / package).rglob("*.py"))
              for line, target in imported_packages(path)
              if target in rank and rank[target] > rank[package]]
    assert not upward, "\n".join(upward)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from planner.sql import dialect\n")
    assert imported_packages(source) == [(2, "planner")]


def test_the_runtime_reaches_kernels_only_through_the_kernel_set():
    """codegen.kernel_set is the one seam: the runtime is handed a KernelSet and asks it for kernels by name."""
    seen = []
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("codegen"):
                if node.module != "codegen.kernel_set":
                    seen.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import):
                seen += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                         if a.name.startswith("codegen") and a.name != "codegen.kernel_set"]
    assert not seen, "\n".join(seen)
