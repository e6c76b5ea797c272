"""How a command's error ends: one line on stderr and an exit code, never a traceback.

Exit codes: 2 bad input (a file, row, field, option or index the user can fix; argparse uses 2
for bad options too), 1 an internal fault (a bug, an unreadable disk: the line says what, ``-vv``
shows the traceback), 75 (``EX_TEMPFAIL``) the index is busy with another writer (retry, or
``--wait``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys

EXIT_FAULT = 1
EXIT_BAD_INPUT = 2
EXIT_BUSY = 75
EXIT_INTERRUPTED = 130


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception a command raised."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}  # no import of the areas that define them
    if "IndexBusyError" in kinds:
        return EXIT_BUSY, one_line(exc)
    if "LaunchError" in kinds:
        return EXIT_BAD_INPUT, one_line(exc)
    if isinstance(exc, RecursionError):
        return EXIT_BAD_INPUT, "the input is nested too deeply"
    if isinstance(exc, ValueError | FileNotFoundError | NotADirectoryError | IsADirectoryError | TypeError):
        return EXIT_BAD_INPUT, one_line(exc)
    if isinstance(exc, OSError):  # permissions, a full disk: the machine, not the input
        return EXIT_FAULT, one_line(exc)
    if isinstance(exc, sqlite3.Error):
        return EXIT_FAULT, f"document table error ({one_line(exc)}); run with -vv for the traceback"
    return (
        EXIT_FAULT,
        f"internal error ({type(exc).__name__}: {one_line(exc)}); run with -vv for the traceback",
    )


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)``; an error ends in one line ``colzero CMD: error: ...`` and its exit
    code (``-vv`` re-raises it, for the traceback)."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"colzero {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if getattr(args, "verbose", 0) >= 2:
            raise
        code, message = classify(exc)
        print(f"colzero {args.command}: error: {message}", file=sys.stderr)
        return code
