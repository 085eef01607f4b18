"""Reports: metrics, figures and the self-contained report.html of a run or a sweep."""

from pipeline.reports._html import GALLERY, PREDICTIONS, REPORT, build_report, read_predictions, write_predictions
from pipeline.reports._intervals import bootstrap, mean_ap_interval, mean_per_class_interval, overlaps, wilson
from pipeline.reports._pages import esc, facts, page, section, shot, table
from pipeline.reports._metrics import evaluate, evaluate_multi_label, interval, positive_index, summary, write_report
from pipeline.reports._safe import from_cell, plain_text, shown, to_cell
from pipeline.reports._trained import TRAINED_ON, paths_digest, read_trained_on, write_trained_on

__all__ = [
    "esc",
    "facts",
    "page",
    "section",
    "shot",
    "table",
    "bootstrap",
    "evaluate",
    "interval",
    "mean_ap_interval",
    "mean_per_class_interval",
    "overlaps",
    "wilson",
    "from_cell",
    "plain_text",
    "shown",
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
    "TRAINED_ON",
    "paths_digest",
    "read_trained_on",
    "write_trained_on",
]
