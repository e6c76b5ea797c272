"""The index folder and its generations: the CURRENT pointer, one writer at a time, leftovers.

Layout (format 3)::

    idx/
      CURRENT        {"format_version": 3, "base": "base-<id>", "generation": N}: what readers
                     open; replaced by one atomic rename
      .lock          the writers' lock (``fcntl.flock``); holds the writing process's id
      base-<id>/     one build: metadata.json, codec files, docs.sqlite, seg-*/ (``storage.py``),
                     and ``.readers``, on which every reader holds a shared lock while it uses
                     the base

Generations. Every change (build, add, delete) publishes generation N + 1 by replacing
``CURRENT``, after everything it names is on disk: a build writes a new base (as
``.base-<id>.tmp-PID``, renamed to ``base-<id>`` when complete); an add writes a segment folder
into the current base and its rows into the base's document table; a delete marks rows. Rows and
segments carry the generation that added (and deleted) them, so a reader at generation N sees
exactly what N published, however far the table has moved on (``storage.py``). The rename of
``CURRENT`` is the only commit point: a process killed at any instant leaves the previous
generation published, and the next writer rolls back what an unpublished change left (rows,
segment folders) and removes the temporary entries of dead processes (``.NAME.tmp-PID`` whose
PID is gone; a live process's are never touched). A base no generation names any more is
removed by a later writer once no reader holds it.

Readers never wait: they read ``CURRENT``, hold ``.readers`` of its base (shared), and open it;
document-table reads go through SQLite's write-ahead log, which never blocks a reader. Writers
queue on ``.lock``: the second waits up to ``wait`` seconds, then stops with
:class:`IndexBusyError` naming the first's process id.

Folders written by earlier versions (format 1 and 2: metadata.json and docs.sqlite at the top,
no ``CURRENT``) open as base ``"."`` at generation 0; the first writer converts them in place.
An earlier version's replace killed between its two renames (the index moved to
``.idx.old-*``, the new one complete in ``.idx.tmp-*``) is finished on open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from colzero.data.readers import pid_alive, remove_stale_temps, temp_name, temp_owner
from colzero.index.storage import IndexCorruptError

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
LOCK = ".lock"
READERS = ".readers"
LEGACY_BASE = "."
POINTER_VERSION = 3


class IndexBusyError(RuntimeError):
    """Another process is writing to the index (its process id is in the message)."""


@dataclass(frozen=True)
class Pointer:
    """What ``CURRENT`` names: a base folder (``"."``: a format 1/2 folder) and a generation."""

    base: str
    generation: int


Stamp = tuple[int, int, int] | None


# ---------------------------------------------------------------------------- the pointer
def stamp(path: Path) -> Stamp:
    """A cheap fingerprint of ``CURRENT`` (inode, size, mtime): it changes with every publish,
    since each one renames a new file into place. None when there is none."""
    try:
        st = os.stat(path / CURRENT)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_pointer(path: Path) -> Pointer | None:
    """The published generation of the index folder ``path``; None when it holds no index."""
    file = path / CURRENT
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Pointer(LEGACY_BASE, 0) if (path / "metadata.json").is_file() else None
    try:
        data = json.loads(text)
        base, generation = data["base"], data["generation"]
    except (ValueError, KeyError, TypeError):
        raise IndexCorruptError(f"{file}: not an index pointer ({text[:80]!r})") from None
    if not isinstance(base, str) or "/" in base or not isinstance(generation, int) or generation < 0:
        raise IndexCorruptError(f"{file}: not an index pointer ({text[:80]!r})")
    return Pointer(base, generation)


def publish(path: Path, pointer: Pointer) -> None:
    """Make ``pointer`` the published generation: write, fsync, rename over ``CURRENT``."""
    tmp = path / temp_name(CURRENT)
    data = {"format_version": POINTER_VERSION, "base": pointer.base, "generation": pointer.generation}
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / CURRENT)
    fsync_folder(path)


def fsync_folder(path: Path) -> None:
    """Make the folder's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def base_dir(path: Path, pointer: Pointer) -> Path:
    return path if pointer.base == LEGACY_BASE else path / pointer.base


def new_base(path: Path) -> tuple[str, Path]:
    """(name, temporary folder) of a new base; the folder is renamed to ``path / name`` when complete."""
    name = f"base-{uuid.uuid4().hex[:12]}"
    tmp = path / temp_name(name)
    tmp.mkdir()
    (tmp / READERS).touch()
    return name, tmp


def published_metadata(path: Path) -> dict:
    """metadata.json of the published generation's base (which model built it, its settings)."""
    from colzero.index.storage import read_metadata

    if not path.exists():
        recover_legacy_replace(path)
    pointer = read_pointer(path) if path.is_dir() else None
    if pointer is None:
        return read_metadata(path)  # raises the error that says what is missing
    return read_metadata(base_dir(path, pointer))


# ---------------------------------------------------------------------------- writers
@contextlib.contextmanager
def writer_lock(path: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the index folder's writer lock (creating the folder). Another writer holding it: wait
    up to ``wait`` seconds, then :class:`IndexBusyError` naming its process id."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                raise IndexBusyError(_busy_message(path, fd, wait))
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_writable(path: Path) -> None:
    """:class:`IndexBusyError` at once if another process holds the writer lock (a command that
    would stop anyway then stops before loading a model); nothing happens otherwise."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise IndexBusyError(_busy_message(path, fd, 0)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _busy_message(path: Path, fd: int, wait: float) -> str:
    try:
        holder = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        holder = ""
    who = f"process {holder}" if holder.isdigit() else "another process"
    waited = f" (waited {wait:g} s)" if wait > 0 else ""
    return (
        f"{path}: {who} is writing to this index{waited}; it was left untouched. Run again when it "
        "is done, or pass --wait SECONDS to queue behind it"
    )


# ---------------------------------------------------------------------------- readers
class ReaderHold:
    """A shared lock on a base's ``.readers``: while held, no writer removes the base."""

    def __init__(self, folder: Path) -> None:
        self.fd: int | None = None
        try:
            fd = os.open(folder / READERS, os.O_RDONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise
        except OSError:  # a read-only folder: nobody can remove the base either
            return
        fcntl.flock(fd, fcntl.LOCK_SH)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __del__(self) -> None:
        self.release()


def _remove_if_unused(folder: Path, entries: list[Path] | None = None) -> bool:
    """Remove ``folder`` (or only ``entries`` of it) unless a reader holds its ``.readers``."""
    try:
        fd = os.open(folder / READERS, os.O_RDONLY | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        logger.info("%s: still open in a reader; a later writer removes it", folder)
        return False
    try:
        if entries is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def _legacy_entries(path: Path) -> list[Path]:
    """The files of a format 1/2 index at the top of ``path`` (once a base has replaced it)."""
    names = {"metadata.json", "docs.sqlite", "docs.sqlite-journal", "docs.sqlite-wal", "docs.sqlite-shm"}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((path / "metadata.json").read_text(encoding="utf-8"))
        names.update(str(n) for n in meta.get("files", {}) if "/" not in str(n))
    return [p for p in path.iterdir() if p.name in names or p.name.startswith(("seg-", ".seg-"))]


def collect_garbage(path: Path, pointer: Pointer | None) -> None:
    """Under the writer lock: remove dead processes' temporary entries and the bases (and a
    converted format 1/2 index's files) that ``pointer`` no longer names and no reader holds."""
    for entry in remove_stale_temps(path):
        logger.info("removed %s (left by a process that no longer runs)", entry)
    for entry in path.iterdir():
        unnamed = entry.name.startswith("base-") and (pointer is None or entry.name != pointer.base)
        if unnamed and entry.is_dir() and _remove_if_unused(entry):
            logger.info("removed %s (an earlier generation's base)", entry)
    if pointer is not None and pointer.base != LEGACY_BASE and (path / "metadata.json").exists():
        _remove_if_unused(path, _legacy_entries(path))


# ---------------------------------------------------------------------------- earlier versions
def recover_legacy_replace(path: Path) -> bool:
    """Finish (or roll back) a replace that an earlier colzero was killed in, between moving the
    old index to ``.NAME.old-*`` and the new one from ``.NAME.tmp-*`` to ``path``. Returns True
    when it changed anything. A new index is used only when complete (its metadata.json, written
    last, exists); otherwise the old one is put back."""
    if path.exists() or not path.parent.is_dir():
        return False
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    news = [
        p
        for p in path.parent.glob(f".{path.name}.tmp-*")
        if p.is_dir() and (p / "metadata.json").is_file() and not _is_live_temp(p)
    ]
    try:
        if news:
            newest = max(news, key=lambda p: (p / "metadata.json").stat().st_mtime)
            os.replace(newest, path)
            for old in olds:
                shutil.rmtree(old, ignore_errors=True)
            logger.warning("%s: finished a replace an earlier run was killed in (from %s)", path, newest.name)
        else:
            os.replace(olds[-1], path)
            logger.warning(
                "%s: rolled back a replace an earlier run was killed in (from %s)", path, olds[-1].name
            )
    except FileNotFoundError:  # another process recovered it first
        pass
    return True


def _is_live_temp(entry: Path) -> bool:
    owner = temp_owner(entry.name)
    return owner is not None and pid_alive(owner[1])


__all__ = [
    "CURRENT",
    "LEGACY_BASE",
    "IndexBusyError",
    "Pointer",
    "ReaderHold",
    "base_dir",
    "check_writable",
    "collect_garbage",
    "new_base",
    "publish",
    "published_metadata",
    "read_pointer",
    "recover_legacy_replace",
    "stamp",
    "writer_lock",
]
