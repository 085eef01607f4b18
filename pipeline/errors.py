"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import logging
import os
import sys


class UserError(Exception):
    """An error the user can fix; its message is printed as one line."""


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter so our own messages stay readable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


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
    sys.exit(code or 0)
