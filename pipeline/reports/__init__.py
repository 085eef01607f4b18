"""Reports: metrics, figures and the self-contained report.html of a run or a sweep."""

from pipeline.reports._html import GALLERY, PREDICTIONS, REPORT, build_report, read_predictions, write_predictions
from pipeline.reports._intervals import bootstrap, overlaps, wilson
from pipeline.reports._metrics import evaluate, evaluate_multi_label, interval, positive_index, summary, write_report
from pipeline.reports._safe import from_cell, plain_text, to_cell

__all__ = [
    "bootstrap",
    "evaluate",
    "interval",
    "overlaps",
    "wilson",
    "from_cell",
    "plain_text",
    "to_cell",
    "evaluate_multi_label",
    "positive_index",
    "summary",
    "write_report",
    "GALLERY",
    "PREDICTIONS",
    "REPORT",
    "build_report",
    "read_predictions",
    "write_predictions",
]
