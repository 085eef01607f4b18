"""Files the project writes: folders checked before any work, room checked before a large file, files
moved into place whole."""
from __future__ import annotations

import os
import resource
import shutil
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


NAME_MAX = 255  # bytes of a file name on the file systems we meet


def fit_name(name: str, room: int) -> str:
    """``name`` within ``room`` bytes (UTF-8): as it is if it fits, else cut where a character
    ends, with a digest of the whole name (two long names that differ stay apart)."""
    import hashlib

    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= room:
        return name
    digest = hashlib.blake2b(raw, digest_size=4).hexdigest().encode()
    return (raw[:room - 9].decode("utf-8", "ignore").encode("utf-8", "surrogateescape") + b"~" + digest
            ).decode("utf-8", "surrogateescape")


def temporary_beside(dst: Path) -> Path:
    """A hidden temporary name beside ``dst`` for a file about to replace it, unique to this
    process, within the file system's 255 bytes however long ``dst``'s own name is (a name that
    fits is never refused for its temporary one)."""
    dst = Path(dst)
    tag = f".{os.getpid()}-{os.urandom(3).hex()}.tmp"
    return dst.with_name("." + fit_name(dst.name, NAME_MAX - 1 - len(tag.encode())) + tag)


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


def check_room(path: Path, n_bytes: int, kept: str = "") -> None:
    """Refuse to start writing ``path`` where it cannot fit: HDF5 does not survive a failed
    write (it crashes the process while closing the file), so a full disk must be found first.
    Counts the free space and this process's file-size limit (``ulimit -f``)."""
    need = int(n_bytes * 1.02) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    room = min(free, limit if limit != resource.RLIM_INFINITY else free)
    if room < need:
        why = "free on that disk" if room == free else "allowed per file by ulimit -f"
        raise UserError(f"not enough room to write {path}: it needs about {need / 1e6:.1f} MB, "
                        f"{room / 1e6:.1f} MB are {why}" + (f"; {kept}" if kept else ""))


def unique_tmp(final: Path) -> Path:
    return final.with_name(f"{final.stem}.{os.getpid()}-{os.urandom(4).hex()}.tmp.h5")
