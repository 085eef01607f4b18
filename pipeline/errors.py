"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import errno
import numbers
import re


class UserError(Exception):
    """An error the user can fix; its message is printed as one line."""


class ParameterError(UserError, ValueError):
    """A parameter the caller got wrong, named as the library calls it (``batch_size must be at
    least 1``); the command line names the flag instead (``--batch-size must be at least 1``)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter} {message}")
        self.parameter, self.message = parameter, message


class Interrupted(Exception):
    """Ctrl-C, with a message saying what was kept (stage 1 knows; elsewhere nothing is)."""


def one_line(text) -> str:
    """``text`` folded onto one line (h5py and some OS errors span several)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


_TEMPORARY = (re.compile(r"^(?P<dir>.*/)?\.(?P<name>.+)\.\d+(-[0-9a-f]+)?\.tmp$"),     # .labels.csv.123-ab12.tmp
              re.compile(r"^(?P<dir>.*/)?(?P<name>.+)\.\d+-[0-9a-f]+\.tmp(?P<ext>\.h5)$"))  # top-avg.123-ab12.tmp.h5


def user_file(path) -> str:
    """The file a user knows for one of the project's temporary names (the file it becomes)."""
    text = str(path)
    for pattern in _TEMPORARY:
        m = pattern.match(text)
        if m:
            return (m.group("dir") or "") + m.group("name") + (m.groupdict().get("ext") or "")
    return text


def os_error_text(exc: OSError) -> str:
    """A file-system error as one line: what went wrong, and on which file (the user's file, not
    the temporary name it was being written under)."""
    return one_line(exc.strerror or exc) + (f": {user_file(exc.filename)}" if exc.filename else "")


# File-system errors a user causes (a file where a folder belongs, permissions, a full disk).
USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP}


__all__ = ["USER_ERRNOS", "Interrupted", "ParameterError", "UserError", "one_line", "os_error_text"]


MAX_SEED = 2**32 - 1  # NumPy's and Keras's seeds: 0 .. 2**32 - 1


def check_seed(seed, parameter: str = "seed") -> None:
    """A seed must be a whole number NumPy and Keras accept (a ParameterError naming it): checked
    before any work, since a negative one fails only where it is first used."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= int(seed) <= MAX_SEED):
        raise ParameterError(parameter, f"{seed!r}: give a whole number from 0 to {MAX_SEED}")


def with_positionals(function: str, names: tuple[str, ...], given: tuple, options: dict, before: int) -> dict:
    """``options`` with ``given``, the positional arguments of a call past a function's first
    ``before`` parameters, under the ``names`` those parameters had when they were positional (a
    long parameter list turned into keyword options; calls made before keep working). A Python
    TypeError as the interpreter would raise it for a name given twice or too many arguments."""
    if len(given) > len(names):
        raise TypeError(f"{function}() takes at most {before + len(names)} positional arguments "
                        f"({before + len(given)} given)")
    for name, value in zip(names, given):
        if name in options:
            raise TypeError(f"{function}() got multiple values for argument '{name}'")
    return {**dict(zip(names, given)), **options}
