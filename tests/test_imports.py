"""The house's rules, checked on the source: data flows one way (no import loop among compress's modules) and
no module reaches into another's private names, so a module can be read, and changed, on its own."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "compress"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, names, inside a function) for each ``import`` and ``from ... import`` of compress modules."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("compress"):
                found.append((child.module, [a.name for a in child.names], inner))
            elif isinstance(child, ast.Import):
                found.extend((a.name, [], inner) for a in child.names if a.name.startswith("compress"))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    """compress's modules and the compress modules each imports (``from compress.x import y`` counts as
    compress.x.y when that is a module)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = set()
        for mod, names, _ in imports(path):
            subs = {f"{mod}.{n}" for n in names} & files.keys()
            targets |= subs or {mod}
        edges[name] = targets - {name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_import_graph_has_no_loop():
    edges = graph()
    assert len(edges) > 40 and "compress.search.run" in edges  # the walk sees the package
    loop = cycle(edges)
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_the_loop_finder_finds_a_loop():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_private_name_is_imported_from_another_module():
    offenders = [f"{path.relative_to(ROOT)} imports {mod}.{n}"
                 for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "examples").glob("*.py"),
                              *(ROOT / "benchmarks").glob("*.py")]
                 for mod, names, _ in imports(path) for n in names if n.startswith("_") and n != "__version__"]
    assert not offenders, "\n".join(offenders)


def test_compress_modules_import_each_other_at_the_top():
    """Imports inside functions hid the loops. Only the command line imports lazily: ``compress verify`` and
    ``predict`` run where torch is not installed."""
    inside = [f"{path.relative_to(ROOT)} imports {mod} inside a function"
              for path in PACKAGE.rglob("*.py") if path.name != "cli.py"
              for mod, _, nested in imports(path) if nested]
    assert not inside, "\n".join(inside)
