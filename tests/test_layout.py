"""The package's shape: no import cycle (imports inside functions count), small modules,
short functions where the logic is densest (train/, graph/)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rtseg"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
SHORT_FUNCTION_DIRS = ("train", "graph")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (top level or in functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in modules else mod)
    out = set()
    for target in found:
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        if target in modules and target != name and target.startswith("rtseg"):
            out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_count(tmp_path):
    src = "def f():\n    from rtseg.b import x\n"
    mods = {"rtseg.a": tmp_path / "a.py", "rtseg.b": tmp_path / "b.py"}
    (tmp_path / "a.py").write_text(src)
    assert _imports("rtseg.a", mods["rtseg.a"], mods) == {"rtseg.b"}


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_limit():
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_long_function_in_train_and_graph():
    long = {}
    for folder in SHORT_FUNCTION_DIRS:
        for p in (PKG / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long[f"{p.relative_to(PKG.parent)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_shipped_model_is_found_where_the_package_keeps_it():
    """Every command without --model uses it: a move of the module that locates it must not
    silently fall back to the untrained network."""
    import json

    from rtseg.model.bundle import default_bundle_path
    from rtseg.runtime.loader import default_model_available

    assert default_bundle_path() == PKG / "assets" / "default_model"
    assert default_model_available()
    manifest = json.loads((default_bundle_path() / "manifest.json").read_text())
    assert manifest["arch"] == "efficientnet-lite1" and manifest["head"]["agree"] is True
