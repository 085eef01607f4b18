#!/usr/bin/env python
"""Stage 1, as `cnn-codes codes` (every option of it): cache CNN codes of every image under DATA."""
from pipeline.cli.main import shim

if __name__ == "__main__":
    shim("codes")
