"""Fixtures; the helpers the tests import live in helpers.py."""
import logging
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import make_images  # noqa: E402  (after the environment is set)


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "data")


class _Lines(logging.Handler):
    def __init__(self, lines):
        super().__init__()
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def logs():
    """The lines the library logs during the test (what the command line prints), as a list."""
    lines = []
    handler, logger = _Lines(lines), logging.getLogger("pipeline")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
