"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; its message is printed as one line."""


def quiet_tensorflow() -> None:
    """Import TensorFlow without its C++ start-up chatter, so our own messages stay readable.

    TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA drivers, CPU features) before its
    log level is read, so they are held back by pointing file descriptor 2 elsewhere during the
    import and shown only if the import fails. TF_CPP_MIN_LOG_LEVEL=0 (or 1) shows them all.
    """
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # 3 also hides "failed call to cuInit" on machines without a GPU
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or level in ("0", "1"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


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


def run_cli(main, argv=None) -> None:
    """Run an entry point's ``main(argv)`` and turn user errors into one line + exit code."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: work already done is kept; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where} (work already done is kept)", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


# File-system errors a user causes (a file where a folder belongs, permissions, a full disk).
_USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}
