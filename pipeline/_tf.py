"""TensorFlow, imported quietly (for the commands that need it; the others never import it)."""
from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile


def quiet_tensorflow() -> None:
    """Import TensorFlow without its C++ start-up chatter, so our own messages stay readable.

    TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA drivers, CPU features) before its
    log level is read, so they are held back by pointing file descriptor 2 elsewhere during the
    import and shown only if the import fails (not when a Ctrl-C stops it: a sweep's workers, stopped
    with their command while importing, printed them). TF_CPP_MIN_LOG_LEVEL=0 (or 1) shows them all.
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
        except Exception:  # (why it failed; a Ctrl-C meanwhile is no failure to explain: nothing shown)
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
