"""The `lookahead-cache` command line.

Each subcommand's arguments live in a module of `lookahead_cache.commands`, listed in `COMMANDS` with its one-line
help (see that package for what a module provides); a new subcommand is one new module there and one entry here. Only the
chosen subcommand's module is imported, and none imports torch, so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging as std_logging
import sys
from collections.abc import Sequence

from .allocation import ALLOCATIONS
from .scorers import SCORERS

# Subcommand -> the module of its arguments, and its one-line help.
COMMANDS = {
    "demo": (
        "lookahead_cache.commands.demo",
        "Ask the embedded model for a needle hidden in a long document, with a full cache and with LookaheadCache.",
    ),
    "bench": (
        "lookahead_cache.commands.bench",
        "Measure prefill overhead, decode speed and memory of LookaheadCache against a full DynamicCache.",
    ),
    "eval": (
        "lookahead_cache.commands.eval",
        "Evaluate every method side by side on the offline long-context suite (RULER-style and real-text tasks).",
    ),
    "train": (
        "lookahead_cache.commands.train",
        "Train the lookahead embeddings and LoRA of a model on the offline training mix (resumable).",
    ),
    "profile": (
        "lookahead_cache.commands.profile",
        "Profile per-head budgets for allocation='lukv' (LU-KV) on offline calibration data (resumable).",
    ),
}
# `auto` first; future_queries needs the queries of an answer and cannot be picked by name alone.
SCORER_CHOICES = ["auto", *(name for name in SCORERS if name != "future_queries")]
ALLOCATION_CHOICES = list(ALLOCATIONS)
# The dtypes `train` and `profile` load a model in (torch's names).
DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def budget_value(text: str) -> int | float:
    """argparse type: a LookaheadCache budget, an int (tokens) or a float (fraction); the cache validates it."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{text!r} is neither a token count (int) nor a fraction (float)")


def require_extra(extra: str, *modules: str) -> None:
    """Raise, naming the install command, if a module that only the `extra` install brings is missing."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ValueError(
            f"this command needs {', '.join(missing)}, which the core install leaves out: "
            f"pip install 'lookahead-cache[{extra}]' (or pip install -e '.[{extra}]' in a clone)"
        )


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, except where there is none to show (None, or a flag's)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or action.default is argparse.SUPPRESS:
            return help_text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{help_text} (default: {shown.replace('%', '%%')})"


def version_text() -> str:
    """This package's version and those of the libraries it runs on, read without importing them."""
    versions = []
    for name in ("transformers", "peft", "torch"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    return f"lookahead-cache {importlib.metadata.version('lookahead-cache')} ({', '.join(versions)})"


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser by name; only `command`'s arguments are added."""
    parser = argparse.ArgumentParser(
        prog="lookahead-cache",
        description="Evict the KV cache of transformers causal LMs at the end of prefill.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, (module_name, summary) in COMMANDS.items():
        commands[name] = subparsers.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        if name == command:
            importlib.import_module(module_name).add_arguments(commands[name])
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lookahead-cache COMMAND [options]`; returns the exit status (argparse exits with 2 on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser, commands = build_parser(command)
    args = parser.parse_args(argv)
    _show_library_logs()
    runner = importlib.import_module(importlib.import_module(COMMANDS[args.command][0]).RUNNER)
    try:
        runner.check_arguments(args)
    except (ValueError, TypeError) as error:
        commands[args.command].error(str(error))
    return runner.run(args)


def _show_library_logs() -> None:
    """Progress messages of this library go to stderr; transformers' own logging keeps its settings."""
    from transformers.utils import logging

    library_logger = logging.get_logger("lookahead_cache")
    if not library_logger.handlers:
        handler = std_logging.StreamHandler(sys.stderr)
        handler.setFormatter(std_logging.Formatter("[lookahead-cache] %(message)s"))
        library_logger.addHandler(handler)
        library_logger.setLevel(std_logging.INFO)
        library_logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
