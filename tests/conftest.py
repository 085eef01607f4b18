"""Fixtures; the helpers the tests import live in helpers.py."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import make_images  # noqa: E402  (after the environment is set)


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "data")
