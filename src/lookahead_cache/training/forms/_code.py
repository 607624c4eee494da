"""Excerpts of standard library modules around one of their definitions, for the forms asking about a definition
in its module's code."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable, Sequence

from ...evaluation.tasks._stdlib import STDLIB, parse

EXCERPT_INTRO = "Below is an excerpt of `{name}.py`, a module of the Python standard library.\n\n```python\n"

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def first_line(node: ast.ClassDef | FunctionNode) -> int:
    """The 0-based line where a definition starts, its decorators included."""
    return min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)]) - 1


def defined_names(tree: ast.Module) -> Counter[str]:
    """How many times each class, function and class attribute name is defined anywhere in the module: a name
    defined once designates one definition, wherever the excerpt is cut."""
    counts: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            counts[node.name] += 1
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, (ast.Assign, ast.AnnAssign)):
                    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                    counts.update(target.id for target in targets if isinstance(target, ast.Name))
    return counts


def source_lines(name: str) -> list[str]:
    # Split at newlines only, as `ast` numbers lines: `str.splitlines` would also split at form feeds.
    return parse(name, STDLIB / f"{name}.py").source.split("\n")


def excerpt_around(
    lines: Sequence[str], span: tuple[int, int], before_share: float
) -> tuple[Callable[[int], str], int]:
    """`(excerpt, max_size)`: `excerpt(size)` is `lines[span[0]:span[1]]` and `size - 1` lines around them, about
    `before_share` of them before and the rest after (the other side taking what a file boundary leaves), so that
    the span sits at a seeded depth and each size shows one more line than the last."""
    start, end = span
    room_before, room_after = start, len(lines) - end

    def excerpt(size: int) -> str:
        extra = size - 1
        after = min(room_after, extra - min(room_before, round(extra * before_share)))
        before = extra - after
        return "\n".join(lines[start - before : end + after])

    return excerpt, 1 + room_before + room_after
