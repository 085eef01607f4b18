"""Files the project writes: folders checked before any work, files moved into place whole."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import UserError


def writable_folder(path, option: str):
    """Make folder ``path`` if needed; a clear error before any work if it cannot hold our files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: that is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot make that folder ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: not writable")
    return path


def durable_replace(tmp: Path, dst: Path) -> None:
    """Move a finished file into place so that it is whole or absent, even after a power cut:
    its bytes reach the disk before the rename, and the rename before we go on."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
