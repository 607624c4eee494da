"""Code completion by recall: write the `def` line of a function seen earlier in a long excerpt of its module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._stdlib import modules_filling
from ...evaluation.tasks.base import Draft, Slot, TaskFamily, prompt_length
from ._code import EXCERPT_INTRO, FunctionNode, defined_names, excerpt_around, first_line, source_lines

QUESTION = (
    "Write the `def` line of the {kind} `{name}` exactly as it is defined in the code above, its parameters on one "
    "line, and nothing else."
)


@dataclass(frozen=True)
class Signature:
    """A function's `def` line, and where the function's header is in its module.

    Attributes:
        name: The function's name, defined once in the module.
        kind: "method" or "function".
        def_line: The reference: the source's `def` line stripped, or for a header over several lines, the same
            header unparsed onto one.
        span: First line and end line (0-based, end excluded) of the header, decorators included, which every
            excerpt shows.
    """

    name: str
    kind: str
    def_line: str
    span: tuple[int, int]


def def_line(function: FunctionNode, lines: list[str]) -> str:
    line = lines[function.lineno - 1].strip()
    if line.endswith(":"):
        try:
            ast.parse(line + " pass")
            return line
        except SyntaxError:
            pass
    keyword = "async def" if isinstance(function, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(function.returns)}" if function.returns else ""
    return f"{keyword} {function.name}({ast.unparse(function.args)}){returns}:"


def has_parameters(function: FunctionNode, is_method: bool) -> bool:
    """Whether there is a parameter to recall besides a method's `self` or `cls`."""
    args = function.args
    count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) + bool(args.vararg) + bool(args.kwarg)
    return count > int(is_method)


@cache
def module_signatures(name: str) -> tuple[Signature, ...]:
    """The functions with parameters whose name is defined once in the module (so the question names one of them,
    wherever the excerpt is cut), in source order."""
    lines = source_lines(name)
    tree = ast.parse("\n".join(lines))
    defined = defined_names(tree)
    methods = {item for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for item in node.body}
    signatures = [
        Signature(
            name=node.name,
            kind="method" if node in methods else "function",
            def_line=def_line(node, lines),
            # The header ends on the line of the body's first statement at the latest.
            span=(first_line(node), node.body[0].lineno),
        )
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and defined[node.name] == 1
        and has_parameters(node, node in methods)
    ]
    return tuple(sorted(signatures, key=lambda signature: signature.span))


class SignatureCompletion(TaskFamily):
    """Code completion by recall: a long excerpt of a standard library module, and the request to write the `def`
    line of one of its functions, named, exactly as defined; the reference is that line, stripped, or for a header
    written over several lines, the header unparsed onto one line (`def name(args) -> returns:`).

    The function named is the only definition of that name in the whole module, so in any excerpt of it, and its
    header is inside the excerpt at every size, at a seeded depth. Functions without parameters (besides `self`
    or `cls`) are left out: their `def` line is guessed from the name alone.
    """

    name = "signature_completion"
    metric = "edit_similarity"
    max_new_tokens = 64
    description = "Recall the exact `def` line of a named function from a long excerpt of a stdlib module."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        for name in slot.in_turn(modules_filling(slot.context_length)):
            signatures = module_signatures(name)
            if not signatures:
                continue
            draft = self._draft(name, slot.rng.choice(signatures), slot.rng.random())
            context, question, _ = draft.render(1)
            if prompt_length(tokenizer, context, question) <= slot.context_length:
                yield draft

    def _draft(self, name: str, signature: Signature, before_share: float) -> Draft:
        excerpt, max_size = excerpt_around(source_lines(name), signature.span, before_share)
        intro = EXCERPT_INTRO.format(name=name)
        question = QUESTION.format(kind=signature.kind, name=signature.name)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            return intro + excerpt(size) + "\n```", question, (signature.def_line,)

        return Draft(render, max_size=max_size)
