"""Reports: metrics, figures and the self-contained report.html of a run or a sweep."""

from pipeline.reports._html import GALLERY, PREDICTIONS, REPORT, build_report, read_predictions, write_predictions
from pipeline.reports._metrics import evaluate, evaluate_multi_label, positive_index, summary, write_report

__all__ = [
    "evaluate",
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
