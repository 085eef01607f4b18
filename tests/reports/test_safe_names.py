"""Class and file names reach spreadsheets and plots as plain text (docs/report-and-audit.md)."""
import csv

import numpy as np
import pytest
from helpers import write_code_file

from pipeline.data import TEST, TRAIN, VAL
from pipeline.quality import audit
from pipeline.reports import from_cell, read_predictions, to_cell
from pipeline.runs import train

HOSTILE = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "$\\frac{$", "'quoted"]


@pytest.mark.parametrize("text", [*HOSTILE, "\tTAB", "\rCR", "plain", "a=b", ""])
def test_cells_are_neutralised_and_read_back(text):
    cell = to_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))  # a spreadsheet shows it as text
    assert from_cell(cell) == text
    assert (cell == text) == (text == "" or not text.startswith(("=", "+", "-", "@", "\t", "\r", "'")))


def test_hostile_names_in_reports_are_plain_text(tmp_path):
    rng = np.random.default_rng(0)
    n_classes, per = len(HOSTILE), 12
    y = np.repeat(np.arange(n_classes), per)
    X = rng.normal(0, 4, (n_classes, 8))[y] + rng.normal(0, 1, (len(y), 8))
    X[1] = X[0]  # a duplicate pair for duplicates.csv
    split = np.tile([TRAIN] * 8 + [VAL] * 2 + [TEST] * 2, n_classes)
    paths = [f"={i}.jpg" if i % 2 else f"-{i}.jpg" for i in range(len(y))]
    codes = write_code_file(tmp_path / "codes.h5", X, y, split, paths, HOSTILE, backbone="fake", layer="top",
                            pooling="avg", image_size=32)
    run = train(codes, "prototype", runs_dir=tmp_path / "runs")  # the plots draw "$\frac{$" as it is
    assert (run.path / "confusion.png").stat().st_size > 1000
    with open(run.path / "predictions.csv", newline="") as fh:
        raw = list(csv.reader(fh))[1:]
    for row in raw:
        assert all(not cell.startswith(("=", "+", "-", "@")) for cell in row[:4]), row
    back = read_predictions(run.path)  # what the report shows: the names themselves
    assert {r["true"] for r in back} <= set(HOSTILE) and {r["path"] for r in back} <= set(paths)
    html = (run.path / "report.html").read_text()
    assert "=HYPERLINK(&quot;http://x&quot;)" in html and "'=HYPERLINK" not in html

    found = audit(codes, runs_dir=tmp_path / "runs", progress=False).path
    for name in ("duplicates.csv", "label_issues.csv", "outliers.csv"):
        with open(found / name, newline="") as fh:
            rows = list(csv.reader(fh))
        cells = [c for row in rows[1:] for c in row if not c.replace(".", "").replace("-", "").isdigit()]
        assert all(not c.startswith(("=", "+", "@")) and not (c.startswith("-") and "jpg" in c) for c in cells), name
    with open(found / "duplicates.csv", newline="") as fh:
        assert any(from_cell(r["path_a"]) == paths[0] for r in csv.DictReader(fh))
