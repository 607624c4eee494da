"""The `lookahead-cache` command line.

Each subcommand lives in its own module, listed in `COMMANDS`, which provides:

* `HELP`: one line for `lookahead-cache --help`;
* `add_arguments(parser)`: its options;
* `check_arguments(args)`: raises `ValueError`/`TypeError` on bad settings, before anything slow happens,
  and the message is shown as a usage error;
* `run(args) -> int`: does the work and returns the exit status.

A new subcommand (`eval`, `train`, ...) is one new module and one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging as std_logging
import sys
from collections.abc import Sequence

from transformers.utils import logging

COMMANDS = {
    "demo": "lookahead_cache.demo",
    "bench": "lookahead_cache.evaluation.benchmark",
    "eval": "lookahead_cache.evaluation.suite",
    "train": "lookahead_cache.training.command",
    "profile": "lookahead_cache.profiling.command",
}


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


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each subcommand's parser by name (to report its usage errors)."""
    parser = argparse.ArgumentParser(
        prog="lookahead-cache",
        description="Evict the KV cache of transformers causal LMs at the end of prefill.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        commands[name] = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(commands[name])
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lookahead-cache COMMAND [options]`; returns the exit status (argparse exits with 2 on bad usage)."""
    _show_library_logs()
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        module.check_arguments(args)
    except (ValueError, TypeError) as error:
        commands[args.command].error(str(error))
    return module.run(args)


def _show_library_logs() -> None:
    """Progress messages of this library go to stderr; transformers' own logging keeps its settings."""
    library_logger = logging.get_logger("lookahead_cache")
    if not library_logger.handlers:
        handler = std_logging.StreamHandler(sys.stderr)
        handler.setFormatter(std_logging.Formatter("[lookahead-cache] %(message)s"))
        library_logger.addHandler(handler)
        library_logger.setLevel(std_logging.INFO)
        library_logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
