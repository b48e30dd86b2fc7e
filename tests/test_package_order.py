"""The package order of study/ (docs/development.md, "How the code is laid out"): imports run one way, down.

Read from the source with ast (nothing is imported), imports inside functions included: a
lazy import is still a dependency of the design. A module whose docstring's first line says
"compatibility shim" (a declared entry point kept for the original study) is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.helpers import REPO_ROOT

STUDY = REPO_ROOT / "study"
# Top to bottom; a package may import its own layer's packages (without a circle) and lower ones.
LAYERS = (
    ("cli",),
    ("sweep", "slurm", "ui", "api"),
    ("flow_matching",),
    ("runs", "data", "runtime"),
    ("errors", "secrets", "signals", "install", "plugins", "seeds"),
)
LAYER_OF = {name: depth for depth, names in enumerate(LAYERS) for name in names}
SHIMS = {"study.flow_matching.train"}  # `python -m study.flow_matching.train`: runs cli.train


def module_name(path: Path) -> str:
    parts = path.relative_to(STUDY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    """`cli` for study.cli.train, `errors` for study.errors; None for study itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(path: Path) -> set[str]:
    """Every study.* module or package `path` imports, at any depth of its code."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "study" or name.startswith("study.")}


def is_shim(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return "compatibility shim" in (doc.splitlines() or [""])[0].lower()


def package_edges() -> dict[tuple[str, str], list[str]]:
    """{(importing package, imported package): ["study.x.y -> study.z.w", ...]}."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(STUDY.rglob("*.py")):
        if is_shim(path):
            continue
        source = module_name(path)
        for target in imported_modules(path):
            src, dst = package_of(source), package_of(target)
            if src and dst and src != dst:
                edges.setdefault((src, dst), []).append(f"{source} -> {target}")
    return edges


def test_every_package_has_a_place_in_the_order():
    packages = {p.parent.name for p in STUDY.glob("*/__init__.py")}
    modules = {p.stem for p in STUDY.glob("*.py") if p.stem != "__init__"}
    assert packages | modules == set(LAYER_OF), (
        "expected every package of study/ in LAYERS (and no stale names), got "
        f"unplaced {sorted((packages | modules) - set(LAYER_OF))}, "
        f"missing {sorted(set(LAYER_OF) - packages - modules)}")


def test_a_lower_package_never_imports_a_higher_one():
    upward = [f"{line} ({dst} is above {src})"
              for (src, dst), lines in package_edges().items()
              if LAYER_OF[dst] < LAYER_OF[src] for line in lines]
    assert not upward, "expected imports to run down the package order, got:\n" + "\n".join(upward)


def test_packages_of_one_layer_form_no_circle():
    edges = package_edges()
    for names in LAYERS:
        graph = {src: {dst for (s, dst) in edges if s == src and dst in names} for src in names}
        for start in names:  # a circle through `start`: `start` reachable from its successors
            seen, todo = set(), list(graph[start])
            while todo:
                node = todo.pop()
                assert node != start, f"expected no package circle through {start}, got one"
                if node not in seen:
                    seen.add(node)
                    todo.extend(graph[node])


def test_runtime_imports_nothing_of_flowctl_but_errors():
    allowed = {"runtime", "errors"}
    assert {dst for (src, dst) in package_edges() if src == "runtime"} <= allowed


def test_the_check_sees_lazy_imports_and_only_the_declared_shims_are_left_out():
    """A known import inside a function is seen (so the checks above are not blind), and the
    shims are exactly the declared ones."""
    assert any("study.slurm.requeue -> study.runtime.ranks" in line
               for line in package_edges()[("slurm", "runtime")])
    assert {module_name(p) for p in STUDY.rglob("*.py") if is_shim(p)} == SHIMS
    assert "study.cli.train" in imported_modules(STUDY / "flow_matching" / "train.py")
