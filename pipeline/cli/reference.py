"""The command-line reference, docs/cli.md, generated from the parsers themselves:
``python -m pipeline.cli.reference > docs/cli.md`` (a test checks the file matches)."""
from __future__ import annotations

import argparse
import functools

from pipeline.cli import FORMATTER
from pipeline.cli.main import SUBCOMMANDS, parser

WIDTH = 100  # fixed, so that the reference does not depend on the terminal it was made in


def reference() -> str:
    """Markdown: the usage of ``cnn-codes`` and of each subcommand, as ``--help`` prints it."""
    top = parser()
    formatter = functools.partial(FORMATTER, width=WIDTH)
    top.formatter_class = formatter
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command-line reference", "",
             "Generated from the parsers by `python -m pipeline.cli.reference > docs/cli.md`; back to the "
             "[README](../README.md).", "", "```text", top.format_help().rstrip(), "```"]
    for name in SUBCOMMANDS:
        p = sub.choices[name]
        p.formatter_class = formatter
        lines += ["", f"## cnn-codes {name}", "", "```text", p.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
