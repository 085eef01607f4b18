"""Names that reach formats which interpret them: spreadsheets and plots.

- **Spreadsheet cells** (OWASP, "CSV injection"): a text cell that begins with ``=``, ``+``, ``-``,
  ``@``, a tab or a carriage return is a formula to Excel, LibreOffice and Google Sheets. In the
  reports people open (``predictions.csv`` of a run and of ``predict``, ``duplicates.csv``,
  ``label_issues.csv``, ``outliers.csv``) such a cell, and one that begins with ``'``, is written
  with a ``'`` in front: a spreadsheet shows it as text, and :func:`from_cell` (which the report
  uses to read ``predictions.csv`` back) removes exactly that quote. Numbers are written as they
  are. Files the tool reads back as data (labels files) are never changed this way.
- **Plots**: matplotlib reads ``$...$`` in any text as mathematics (and fails on some); figures
  are drawn with that off, so a class name is shown as it is. And it lays out every character of a
  text however long: a title of 100,000 characters (a code set's attribute as a file handed to us
  states it) took 12 s to draw. Texts in figures are cut (:func:`shown`).
"""
from __future__ import annotations

import functools

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def to_cell(text) -> str:
    """A text cell a spreadsheet shows as text (see the module's rule)."""
    text = str(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def from_cell(text: str) -> str:
    """The text :func:`to_cell` was given."""
    return text[1:] if text.startswith("'") else text


def shown(text, limit: int = 100) -> str:
    """``text`` as a figure shows it: up to ``limit`` characters, cut with an ellipsis beyond."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def plain_text(plot):
    """Run a plotting function with matplotlib's mathematics in text turned off."""

    @functools.wraps(plot)
    def run(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)
    return run
