"""Question answering over real code: an excerpt of a standard library module, and a question about one of its
definitions whose answer is a single identifier read from the code."""

from __future__ import annotations

import ast
import builtins
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._stdlib import STDLIB, modules_filling, parse
from ...evaluation.tasks.base import Draft, Slot, TaskFamily, prompt_length
from ._code import EXCERPT_INTRO, FunctionNode, defined_names, excerpt_around, first_line, source_lines

METHOD_OWNER = "Which class defines the method `{method}`? Answer with the class name only."
BASE_CLASS = "Which class does the class `{name}` directly inherit from? Answer with the base class only, as written."
RETURNED_NAME = "Which variable does the {kind} `{name}` return? Answer with the variable name only."
IMPORT_SOURCE = "From which module does the code import `{name}`? Answer with the module name only."
# Shorter answers would string-match inside almost any prediction.
MIN_ANSWER_CHARS = 3
# Bases and returned names a guess gets right without reading the code.
GUESSABLE = frozenset(dir(builtins)) | {"self", "cls", "result"}
# The code a question needs takes at most this many characters per token of prompt (about a third of the prompt at
# the usual 3.5 to 4.5 characters per token), so that most of the context is the code around it.
SPAN_CHARS_PER_TOKEN = 1.2


@dataclass(frozen=True)
class CodeQuestion:
    """A question about a module's code.

    Attributes:
        text: The question.
        answer: The identifier that answers it.
        span: First line and end line (0-based, end excluded) of the code that settles the answer, which every
            excerpt shows.
    """

    text: str
    answer: str
    span: tuple[int, int]


def own_nodes(function: FunctionNode) -> Iterator[ast.AST]:
    """The nodes of a function's body, leaving out those of the functions, lambdas and classes nested in it."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))


def is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def method_owners(classes: list[ast.ClassDef], defined: Counter[str]) -> Iterator[CodeQuestion]:
    for cls in classes:
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and defined[item.name] == 1:
                if not is_dunder(item.name):
                    yield CodeQuestion(METHOD_OWNER.format(method=item.name), cls.name, (first_line(cls), item.lineno))


def base_classes(classes: list[ast.ClassDef]) -> Iterator[CodeQuestion]:
    for cls in classes:
        if len(cls.bases) != 1 or cls.keywords or not isinstance(cls.bases[0], (ast.Name, ast.Attribute)):
            continue
        base = ast.unparse(cls.bases[0])
        if base.rsplit(".", 1)[-1] not in GUESSABLE:
            yield CodeQuestion(BASE_CLASS.format(name=cls.name), base, (first_line(cls), cls.bases[0].end_lineno))


def returned_names(functions: list[FunctionNode], methods: set[FunctionNode]) -> Iterator[CodeQuestion]:
    """Functions, generators left out, whose only `return` returns a variable: the whole function is shown, so
    that the one return is seen to be the only one."""
    for function in functions:
        nodes = list(own_nodes(function))
        if any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in nodes):
            continue
        returns = [node for node in nodes if isinstance(node, ast.Return)]
        if len(returns) == 1 and isinstance(returns[0].value, ast.Name) and returns[0].value.id not in GUESSABLE:
            kind = "method" if function in methods else "function"
            question = RETURNED_NAME.format(kind=kind, name=function.name)
            yield CodeQuestion(question, returns[0].value.id, (first_line(function), function.end_lineno))


def import_sources(tree: ast.Module, defined: Counter[str]) -> Iterator[CodeQuestion]:
    """Names imported, not renamed, by exactly one absolute `from ... import` and bound by no other import or
    definition (a fallback import in `except ImportError` binds the name twice); `__doc__` and the like left out."""
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    bound = Counter(
        alias.asname or (alias.name.split(".")[0] if isinstance(node, ast.Import) else alias.name)
        for node in imports
        for alias in node.names
    )
    for node in imports:
        if not isinstance(node, ast.ImportFrom) or node.level or node.module == "__future__":
            continue
        for alias in node.names:
            if alias.asname or alias.name == "*" or is_dunder(alias.name):
                continue
            if bound[alias.name] == 1 and not defined[alias.name]:
                question = IMPORT_SOURCE.format(name=alias.name)
                yield CodeQuestion(question, node.module, (node.lineno - 1, node.end_lineno))


@cache
def module_questions(name: str) -> dict[str, tuple[CodeQuestion, ...]]:
    """The questions a module's code answers unambiguously, by kind; definitions named twice in it (platform
    variants, overloads, property setters) are never asked about."""
    tree = ast.parse(parse(name, STDLIB / f"{name}.py").source)
    defined = defined_names(tree)
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and defined[node.name] == 1]
    functions = [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and defined[node.name] == 1
    ]
    methods = {item for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for item in node.body}
    kinds = {
        "method_owner": method_owners(classes, defined),
        "base_class": base_classes(classes),
        "returned_name": returned_names(functions, methods),
        "import_source": import_sources(tree, defined),
    }
    result = {}
    for kind, questions in kinds.items():
        kept = tuple(question for question in questions if len(question.answer) >= MIN_ANSWER_CHARS)
        if kept:
            result[kind] = kept
    return result


def span_chars(lines: Sequence[str], question: CodeQuestion) -> int:
    start, end = question.span
    return sum(len(line) + 1 for line in lines[start:end])


class CodeQA(TaskFamily):
    """Question answering over code: an excerpt of a standard library module around one definition, and a question
    about it answered by one identifier: which class defines a method, which class a class inherits from, which
    variable a function returns, or which module a name is imported from.

    The answer is unambiguous because the question names a method, class, function or import defined once in the
    whole module (so in any excerpt of it), and the code that settles it (from the class line to the method, the
    whole function, the import statement) is inside the excerpt at every size. Builtin bases and returned names a
    guess gets right (`Exception`, `self`, `result`) are never asked. The question's kind is drawn first, so that
    modules rich in imports do not make every question an import.
    """

    name = "code_qa"
    metric = "string_match"
    max_new_tokens = 16
    description = "One identifier answering a question about a definition in an excerpt of a stdlib module."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        max_span_chars = SPAN_CHARS_PER_TOKEN * slot.context_length
        for name in slot.in_turn(modules_filling(slot.context_length)):
            lines = source_lines(name)
            questions = {
                kind: short
                for kind, asked in module_questions(name).items()
                if (short := [question for question in asked if span_chars(lines, question) <= max_span_chars])
            }
            if not questions:
                continue
            question = slot.rng.choice(questions[slot.rng.choice(sorted(questions))])
            draft = self._draft(name, lines, question, slot.rng.random())
            context, text, _ = draft.render(1)
            if prompt_length(tokenizer, context, text) <= slot.context_length:
                yield draft

    def _draft(self, name: str, lines: list[str], question: CodeQuestion, before_share: float) -> Draft:
        excerpt, max_size = excerpt_around(lines, question.span, before_share)
        intro = EXCERPT_INTRO.format(name=name)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            return intro + excerpt(size) + "\n```", question.text, (question.answer,)

        return Draft(render, max_size=max_size)
