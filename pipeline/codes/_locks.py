"""One writer per code set: an OS-level lock (``fcntl.flock``) on a ``.lock`` file beside it.

The kernel drops the lock when its process dies, however it dies, so a lock left by a killed run
never blocks the next one. The holder writes its PID into the file so that a second run can say
whom it waits for.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from pipeline.errors import UserError

logger = logging.getLogger(__name__)


def lock_path(code_file: Path) -> Path:
    return Path(code_file).with_suffix(".lock")


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode(errors="replace").strip()
    return f"PID {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def writer_lock(code_files, wait: bool = True):
    """Hold the write locks of ``code_files`` (taken in sorted order, so two runs asking for
    overlapping sets cannot deadlock). Waits for a holder with a one-line ``note``, or with
    ``wait=False`` refuses with a :class:`UserError`."""
    fds, held = [], []
    try:
        for path in sorted({Path(p) for p in code_files}):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                if not wait:
                    raise UserError(f"{who} is writing the code set {path}; run again when it has finished, "
                                    f"or without --no-wait to wait for it") from None
                logger.warning(f"note: waiting for {who}, which is writing the code set {path}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            held.append(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        for fd in held:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        for fd in fds:
            os.close(fd)  # closing the descriptor releases its flock
