"""The ``colzero`` command. Each area registers its subcommands from its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

#: modules under colzero.cli that define ``register(subparsers)``; each adds its commands
COMMAND_MODULES = ("demo", "train", "recipe", "evaluate", "index", "data", "serve", "experiment")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colzero", description="Train, evaluate, index and serve ColBERT models."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging: -v colzero's INFO and the libraries' warnings, -vv everything (DEBUG, "
        "library progress bars)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"colzero.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"colzero.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from colzero.cli import logs, term

    parser = build_parser()
    args = parser.parse_args(argv)
    console = term.new_console()
    logs.configure(args.verbose, console if console.is_terminal else None)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from colzero.cli.errors import run_command

    return run_command(args)  # an error: one line, exit 2 (bad input) or 1 (internal fault)


if __name__ == "__main__":
    sys.exit(main())
