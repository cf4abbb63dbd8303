"""Atomic file writes and the checks every output goes through.

:func:`atomic_open`: a temporary file in the target's folder, flushed to disk, then :func:`os.replace`.
A crashed or concurrent writer never leaves a half-written checkpoint, cache entry or table behind: readers
see the old file or the new one. The file gets the usual permissions (``0o666`` less the umask), not the
``0o600`` of :func:`tempfile.mkstemp`.

:func:`check_output`: before any work is done, refuse an output that would replace one of the command's
inputs, an existing file (unless overwriting was asked for), or that lies in a folder that cannot be
written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

__all__ = ["atomic_open", "check_output", "check_writable_folder", "OutputError"]

_UMASK_LOCK = threading.Lock()


class OutputError(FileExistsError):
    """An output path that must not be written (an input, an existing file, an unwritable folder)."""


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps two threads from seeing the temporary 0.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path``, on an error it is removed.

    ``mode`` and ``kwargs`` go to :func:`os.fdopen` (``"w", newline=""`` for CSV text). Parent folders are
    created. The file's permissions follow the umask, like a file opened with :func:`open`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable_folder(folder: str | os.PathLike, what: str = "output") -> None:
    """Raise :class:`OutputError` naming ``folder`` when files cannot be created in it (or in the nearest
    existing folder above it, where it does not exist yet). Probes by creating and removing a temporary
    file, which also catches read-only file systems and privileges :func:`os.access` does not model."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{what} {folder}: {probe} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".crystalframer-write-test.", dir=probe)
    except OSError as e:
        raise OutputError(f"{what} {folder}: cannot write in {probe} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False,
                 what: str = "output") -> Path:
    """Check an output file before any work is done; returns it as a :class:`Path`.

    Raises :class:`OutputError` (a ``FileExistsError``) naming the path when it is one of ``inputs`` (never
    written over, even with ``overwrite``), a folder, an existing file while ``overwrite`` is false, or in a
    folder that cannot be written.
    """
    out = Path(path)
    for src in inputs:
        src = Path(src)
        if _same_file(out, src) or (not out.exists() and out.resolve() == src.resolve()):
            raise OutputError(f"{what} {out} is also an input ({src}); it is never written over, choose "
                              "another output path")
    if out.is_dir():
        raise OutputError(f"{what} {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise OutputError(f"{what} {out} already exists; pass --overwrite to replace it or choose another path")
    check_writable_folder(out.parent, what)
    return out
