"""The arguments of each `lookahead-cache` subcommand, one module each.

A module here provides `add_arguments(parser)` and `RUNNER`: the module that does the work, with `check_arguments(args)` (raises `ValueError`/`TypeError` on bad settings before
anything slow happens; the message is shown as a usage error) and `run(args) -> int`. These modules import neither
torch nor transformers, so that `--help` answers at once; the runner is imported once the arguments are parsed.
"""
