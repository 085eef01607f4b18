"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; its message is printed as one line."""


class Interrupted(Exception):
    """Ctrl-C, with a message saying what was kept (stage 1 knows; elsewhere nothing is)."""


def one_line(text) -> str:
    """``text`` folded onto one line (h5py and some OS errors span several)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


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
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Interrupted) as exc:
        _interrupted(one_line(exc) if isinstance(exc, Interrupted) else "")
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def os_error_text(exc: OSError) -> str:
    """A file-system error as one line: what went wrong, and on which file."""
    return one_line(exc.strerror or exc) + (f": {exc.filename}" if exc.filename else "")


def exit_without_teardown(run) -> None:
    """Run a command-line entry point, then end the process at once with its exit code.

    Everything the commands write is closed (and fsynced where it matters) before they return;
    what is skipped is the interpreter's teardown, where the C++ thread pools of TensorFlow and
    OpenVINO, torn down in no fixed order, now and then abort the process ("terminate called
    without an active exception") after its work is done.
    """
    try:
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _interrupted(message: str) -> None:
    """One line and exit 130, at once: destructors and exit handlers that a Ctrl-C caught
    half-way would print tracebacks of their own (what must be kept is on disk already)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("interrupted" + (f": {message}" if message else ""), file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


# File-system errors a user causes (a file where a folder belongs, permissions, a full disk).
USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP}
