"""Python's standard library as real code and documentation for the real-text families, read with `ast`.

Sources are parsed, never imported: importing every module would run their side effects (`antigravity` opens a
browser) and be slower. What is read depends on the Python version, so samples are reproducible per version.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Source bytes per token of prompt a module needs to fill it from its beginning: code takes 3.5 to 4.5 characters
# per token with common tokenisers.
BYTES_PER_TOKEN = 5


@dataclass(frozen=True)
class Function:
    """A documented public function, or method of a public class, as its documentation would show it.

    Attributes:
        module: Dotted name of the module that defines it (`email.utils`).
        qualname: `name` or `Class.name`.
        arguments: The parameter list as written, defaults included (`src, dst, *, follow_symlinks=True`).
        docstring: The docstring, indentation cleaned.
        defaults: `(parameter, default source)` for each parameter with a default.
    """

    module: str
    qualname: str
    arguments: str
    docstring: str
    defaults: tuple[tuple[str, str], ...]

    @property
    def summary(self) -> str:
        """The first paragraph of the docstring, what documentation pages show of it."""
        return re.split(r"\n\s*\n", self.docstring, maxsplit=1)[0]


@dataclass(frozen=True)
class ParsedFile:
    """What the families use of one source file; the syntax tree itself is not kept (it is large)."""

    source: str
    docstring: str | None
    docstring_lines: tuple[int, int] | None  # first and last line of the module docstring, 1-based
    string_lines: frozenset[int]  # lines, 1-based, of docstrings and inside multi-line strings
    functions: tuple[Function, ...]


@lru_cache(maxsize=1)
def module_names() -> tuple[str, ...]:
    """The public single-file modules of the standard library (packages and `_private` modules left out), sorted."""
    return tuple(sorted(path.stem for path in STDLIB.glob("*.py") if not path.stem.startswith("_")))


def modules_filling(num_tokens: int) -> list[str]:
    """The single-file modules long enough to fill `num_tokens` tokens of prompt from their beginning.

    Raises:
        ValueError: if there is none.
    """
    sizes = {name: (STDLIB / f"{name}.py").stat().st_size for name in module_names()}
    long_enough = [name for name, size in sizes.items() if size >= BYTES_PER_TOKEN * num_tokens]
    if not long_enough:
        raise ValueError(
            f"{num_tokens} tokens exceed the standard library's modules: filling them takes a module of "
            f"{BYTES_PER_TOKEN * num_tokens} bytes and the longest has {max(sizes.values())}. Use a shorter "
            "context_length."
        )
    return long_enough


def module_files(name: str) -> list[tuple[str, Path]]:
    """`(dotted module name, path)` of the sources of module or package `name`, tests left out."""
    path = STDLIB / f"{name}.py"
    if path.is_file():
        return [(name, path)]
    package = STDLIB / name
    if not (package / "__init__.py").is_file():
        raise ValueError(f"{name!r} is neither a module nor a package of the standard library in {STDLIB}.")
    files = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(STDLIB).with_suffix("").parts
        if not {"test", "tests"} & set(parts):
            files.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return files


@cache
def parse(module: str, path: Path) -> ParsedFile:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree)
    return ParsedFile(
        source=source,
        docstring=docstring,
        docstring_lines=None if docstring is None else (tree.body[0].lineno, tree.body[0].end_lineno),
        string_lines=_string_lines(tree),
        functions=tuple(_functions(module, tree)),
    )


def functions(name: str) -> tuple[Function, ...]:
    """The documented public functions and methods of module or package `name`."""
    return tuple(function for module, path in module_files(name) for function in parse(module, path).functions)


def _string_lines(tree: ast.Module) -> frozenset[int]:
    """Lines that hold prose rather than code: whole docstrings (and other strings used as statements), and the
    lines after the first of any multi-line string."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            lines.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))
        ):
            lines.update(range(node.lineno + 1, node.end_lineno + 1))
    return frozenset(lines)


def _functions(module: str, tree: ast.Module) -> Iterator[Function]:
    candidates = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            candidates += [(f"{node.name}.", item) for item in node.body]
        else:
            candidates.append(("", node))
    for prefix, node in candidates:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        docstring = ast.get_docstring(node)
        if not docstring:
            continue
        args = node.args
        positional = args.posonlyargs + args.args
        defaults = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
        defaults += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults) if default is not None]
        yield Function(
            module=module,
            qualname=prefix + node.name,
            arguments=ast.unparse(args),
            docstring=docstring,
            defaults=tuple((arg.arg, ast.unparse(default)) for arg, default in defaults),
        )
