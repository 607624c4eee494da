"""The package's modules import each other without cycles, so each layer of the data flow reads on its own.

The graph is read from the source: every `import` and `from ... import` of a package module, inside functions
too (a deferred import is still a dependency), importing a module's parent packages as Python does (but for the
packages the importing module belongs to), and the
implementations that a `Registry` names by string, which load on first use. A package's lazily re-exported names
(`lazy_attributes`) are not dependencies of the package: importing it does not import them. Imports under
`if TYPE_CHECKING:` are for type checkers only and are left out.
"""

import ast
from pathlib import Path

import lookahead_cache

PACKAGE_DIR = Path(lookahead_cache.__file__).parent
PACKAGE = PACKAGE_DIR.name


def module_files() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")[: len(module.split(".")) - (level - 1) - (0 if is_package else 1)]
    return ".".join(base + ([name] if name else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(child) for statement in node.body for child in ast.walk(statement))
    return hidden


def imports_of(module: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    tree = ast.parse(path.read_text())
    hidden = _type_checking_nodes(tree)
    targets = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _absolute(module, is_package, node.level, node.module)
            elif node.module and node.module.split(".")[0] == PACKAGE:
                base = node.module
            else:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else base)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry":
            # Entries of a registry of implementations, ".uniform:UniformAllocator", loaded on first use.
            for constant in ast.walk(node):
                if isinstance(constant, ast.Constant) and str(constant.value).startswith("."):
                    relative = constant.value.split(":")[0]
                    name = relative.lstrip(".")
                    targets.add(_absolute(module, is_package, len(relative) - len(name), name))
    # Importing `a.b.c` imports packages `a.b` and `a` first, except those the importing module is part of: they
    # are being imported already.
    own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1 + is_package)}
    with_parents = set()
    for target in targets:
        parts = target.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {target for target in with_parents - own_packages if target in modules and target != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imports_of(module, path, is_package, modules) for module, (path, is_package) in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    detail = "\n".join(
        f"{component}: " + "; ".join(f"{m} -> {sorted(graph[m] & set(component))}" for m in component)
        for component in found
    )
    assert not found, f"import cycles:\n{detail}"


def test_the_graph_sees_deferred_registry_and_parent_package_imports():
    # The reader must see what it checks, or the test above could pass on an empty graph.
    graph = import_graph()
    assert f"{PACKAGE}.allocation.lukv" in graph[f"{PACKAGE}.allocation"]  # a registry string
    assert f"{PACKAGE}.adapters.model" in graph[f"{PACKAGE}.allocation.lukv"]
    assert f"{PACKAGE}.adapters" in graph[f"{PACKAGE}.allocation.lukv"]  # the parent package of adapters.model
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
