"""Atomic file writes: the one helper every writer of a file a reader may open at any time uses.

The data goes to a hidden temporary file beside the target, is flushed to disk, and is renamed
over the target with ``os.replace``, so a reader (or a process killed mid-write) sees the old
file or the new one, never half of one. A failed write leaves the target untouched and removes
its temporary file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable


def temporary_twin(path: Path) -> Path:
    """A hidden name beside ``path`` for this process, keeping the suffix (np.save and savefig read it)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_with(path: str | os.PathLike, write: Callable[[Path], object], *, durable: bool = False) -> Path:
    """Call ``write(tmp)`` to write a temporary file, then rename it to ``path``; returns ``path``.

    ``durable`` also syncs the data and the folder, for files that must survive a power cut
    (checkpoint markers); plain reports only need the rename's all-or-nothing view.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_twin(path)
    try:
        write(tmp)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str, *, durable: bool = False) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return write_with(path, lambda tmp: tmp.write_bytes(payload), durable=durable)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()
