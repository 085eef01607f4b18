#!/usr/bin/env python
"""Stage 2, as `cnn-codes train` (every option of it): train a head on cached CNN codes."""
from pipeline.cli.main import shim

if __name__ == "__main__":
    shim("train")
