"""The ``colzero`` command's logging: one handler for everything, its level set by ``-v``.

=========  ===============================================  =====================================
level      colzero's own records                            other libraries (transformers, bm25s,
                                                            datasets, faiss, ranx/numba warnings)
=========  ===============================================  =====================================
default    WARNING and up (what asks for action: a          ERROR and up; a transformers load
           prompt mismatch that is allowed, dropped         report that lists weights the
           qrels, a bad row)                                checkpoint lacks (other than BERT's
                                                            unused pooler) is kept; progress
                                                            bars of weight loading and saving off
``-v``     INFO and up                                      WARNING and up
``-vv``    DEBUG: everything, every library's               DEBUG, and their progress bars
                                                            (numba's compiler trace, tens of
                                                            thousands of lines per kernel: ``-vvv``)
=========  ===============================================  =====================================

The level lives on the handler, not on the loggers: a library that sets its own logger to DEBUG
(bm25s does) still passes through it. transformers' own stderr handler is replaced by
propagation to this one, and Python warnings are routed through logging (``py.warnings``), so
every line the command prints goes through one filter. On a terminal the handler writes through
the live view's console (``rich``), so log lines appear above the live view instead of inside it;
otherwise it writes plain ``time LEVEL logger: message`` lines to stderr.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import re
import sys
from typing import Any

#: loggers whose records are colzero's own (everything else is a library's)
OWN = ("colzero", "__main__")
#: a load report line naming a key the checkpoint did not provide (or provided with another shape)
_MISSING = re.compile(r"^\s*(\S+)\s*\|\s*(MISSING|MISMATCH)\b", re.MULTILINE)
#: keys a missing value of which asks nothing of the user: BERT's pooler, which no ColBERT or dense
#: forward uses (the trainer freezes it)
_UNUSED = re.compile(r"(^|\.)pooler\.")

_MARK = "_colzero_cli_handler"
#: libraries whose DEBUG records are an internal trace, and the ``-v`` count that shows them
TRACES = {"numba": 3}


def is_own(name: str) -> bool:
    """True for colzero's loggers."""
    return any(name == o or name.startswith(o + ".") for o in OWN)


def needs_action(record: logging.LogRecord) -> bool:
    """A library record that must reach the user whatever the level: a transformers load report
    that lists a missing or mismatched weight which some forward uses (the model is then partly
    random)."""
    message = record.getMessage()
    if "LOAD REPORT" not in message:
        return False
    return any(not _UNUSED.search(key) for key, _ in _MISSING.findall(message))


def _warning_is_own(record: logging.LogRecord) -> bool:
    """``py.warnings`` records start with the path of the code that warned."""
    head = record.getMessage().split(":", 1)[0]
    return "/colzero/" in head.replace("\\", "/")


class LevelFilter(logging.Filter):
    """colzero's records from ``own_level``, libraries' from ``library_level`` (module docstring)."""

    def __init__(self, own_level: int, library_level: int) -> None:
        super().__init__()
        self.own_level, self.library_level = own_level, library_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = is_own(record.name) or (record.name == "py.warnings" and _warning_is_own(record))
        if own:
            return record.levelno >= self.own_level
        return record.levelno >= self.library_level or (
            record.levelno >= logging.WARNING and needs_action(record)
        )


def levels(verbosity: int) -> tuple[int, int]:
    """(colzero's level, the libraries' level) for ``-v`` given ``verbosity`` times."""
    if verbosity <= 0:
        return logging.WARNING, logging.ERROR
    if verbosity == 1:
        return logging.INFO, logging.WARNING
    return logging.DEBUG, logging.DEBUG


def configure(verbosity: int, console: Any | None = None) -> logging.Handler:
    """Install the command's one handler on the root logger (replacing one an earlier call
    installed; handlers of others, e.g. pytest's, are left alone) and quiet the libraries.

    ``console``: a ``rich.console.Console`` on a terminal (log lines then go through it, above
    the live view); None writes plain lines to stderr.
    """
    own_level, library_level = levels(verbosity)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MARK, False):
            root.removeHandler(h)
    handler: logging.Handler
    if console is not None:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _MARK, True)
    handler.addFilter(LevelFilter(own_level, library_level))
    root.addHandler(handler)
    root.setLevel(min(own_level, library_level))
    logging.captureWarnings(True)
    for name, needed in TRACES.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity >= needed else logging.INFO)
    _quiet_transformers(verbosity)
    for library in _OWN_HANDLERS:
        if f"{library}.utils.logging" in sys.modules:
            adopt(library)
    if not any(isinstance(f, _AdoptOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AdoptOnImport())
    return handler


#: libraries that put their own stderr handler on their logger when their logging module loads
_OWN_HANDLERS = ("datasets", "huggingface_hub")


def adopt(library: str) -> None:
    """Remove ``library``'s own stderr handler: its records propagate to the command's handler."""
    logger = logging.getLogger(library)
    for h in list(logger.handlers):
        if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.__stderr__):
            logger.removeHandler(h)
    logger.propagate = True


class _AdoptOnImport(importlib.abc.MetaPathFinder):
    """datasets is imported late (by the first command that reads data): when its logging module
    has run, :func:`adopt` its handler, so its records too pass the command's one filter."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        library = fullname.split(".")[0]
        if library not in _OWN_HANDLERS or fullname != f"{library}.utils.logging":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = None if spec is None else spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            adopt(library)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _quiet_transformers(verbosity: int) -> None:
    """transformers logs through its own stderr handler and draws tqdm bars ("Loading weights",
    "Writing model shards"): route its records to the command's handler; bars only at ``-vv``."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a core dependency
        return
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.set_verbosity(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    if verbosity >= 2:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
