"""Run folders: ``runs/<time>-<name>/``, each with its ``record.json`` (which pipeline._records writes and reads).

Every kind of run (a head on codes, a fine-tuned model, the from-scratch baseline) ends in
:func:`finish_run`, which evaluates on the test images, saves the model, writes the report and
prints the summary line.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from pipeline._faults import fault_point
from pipeline._records import Run, assembled_run, load_record
from pipeline.errors import UserError
from pipeline.reports import (
    build_report,
    evaluate,
    evaluate_multi_label,
    mean_per_class_interval,
    overlaps,
    paths_digest,
    read_predictions,
    summary,
    wilson,
    write_predictions,
    write_report,
    write_trained_on,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Tested:
    """What a run predicted on its test images: ``proba`` against ``y_true`` for the images
    ``test_paths`` (relative to ``data_root``). ``thresholds`` (multi-label) are one per label, or one
    per test image and label (each image decided by its own cross-validation fold's)."""

    y_true: np.ndarray
    proba: np.ndarray
    class_names: list
    test_paths: list
    data_root: object = None
    positive_class: object = None
    thresholds: object = None


def finish_run(runs_dir, name: str, *, record: dict, save, tested: Tested | None = None, history=None,
               detail: str = "", train_paths=None, **test):
    """Evaluate what was ``tested``, make the run folder, ``save(run_dir)`` the model, write
    record.json, the report, predictions.csv, the images it trained on (``train_paths``:
    trained_on.csv, and their digest in the record) and report.html, log the summary line; returns
    the :class:`Run`. The fields of :class:`Tested` may be given as keywords instead (as calls
    made them once). Multi-label: the record keeps the saved head's thresholds."""
    tested = tested or Tested(**test)
    y_true, proba, class_names, thresholds = tested.y_true, tested.proba, tested.class_names, tested.thresholds
    test_paths, data_root, positive_class = tested.test_paths, tested.data_root, tested.positive_class

    multi = np.ndim(y_true) == 2  # multi-label: a probability per label, decided by ``thresholds``
    metrics = (evaluate_multi_label(y_true, proba, thresholds, class_names) if multi
               else evaluate(y_true, proba, class_names, positive_class))
    record = {**record, "class_names": list(class_names),
              "history": history or {}, "data_root": str(data_root) if data_root else None}
    if train_paths is not None:
        record["train_digest"] = paths_digest(train_paths)
    if multi:
        record.update(task="multi-label", thresholds=[float(t) for t in record.get("thresholds") or thresholds])
    with assembled_run(runs_dir, name) as run:  # appears whole, or not at all
        save(run.path)
        fault_point("run-head-saved")
        write_report(run.path, record, metrics, class_names, history)
        write_predictions(run.path, test_paths, y_true, proba, list(class_names), thresholds)
        if train_paths is not None:
            write_trained_on(run.path, train_paths)
        build_report(run.path)
    run_dir = run.path
    logger.info(f"{record['title']}: {summary(metrics)}" + (f"; {detail}" if detail else "") + f" -> {run_dir}")
    return Run(run_dir, record["kind"], metrics)


def compare_table(run_dirs=None, runs_dir="runs") -> str:
    """A Markdown table of runs (default: every run under ``runs_dir``): kind, title, test
    accuracy and mean per-class accuracy with their 95% intervals, top-5, training seconds, the
    split, and whether each run can be told apart from the best one. Runs tested on different
    images are put side by side on the test images all of them were tested on (from their
    predictions.csv), or a note says why they cannot be."""
    folders = [Path(r) for r in run_dirs] if run_dirs else sorted(
        p.parent for p in Path(runs_dir).glob("*/record.json") if not p.parent.name.startswith("."))  # not partial runs
    records = [load_record(folder) for folder in folders]
    if not records:
        raise UserError(f"no finished runs to compare under {runs_dir}")
    predictions = [read_predictions(folder) for folder in folders]
    keys = [frozenset(row["path"] for row in rows) if rows is not None
            else ("split", r.get("split_digest"), r.get("n_test"), bool(r.get("cv"))) for r, rows in zip(records, predictions)]
    figures = [_Figures.of_record(r) for r in records]
    notes = []
    if len(set(keys)) > 1:
        notes.append(f"note: these runs were tested on {len(set(keys))} different splits (column split: a digest of "
                     f"which image is in which part; ? for runs made before it was recorded)")
        lacking = [f.name for f, rows in zip(folders, predictions) if rows is None]
        common = set.intersection(*(set(k) for k in keys)) if not lacking else set()
        if lacking:
            notes.append(f"note: {lacking[0]}{f' and {len(lacking) - 1} more' if len(lacking) > 1 else ''} "
                         f"has no per-image predictions (made before predictions.csv), so the runs cannot be put on "
                         f"common test images: each figure is its own run's test set; compare figures only between "
                         f"runs of the same split")
        elif not common:
            notes.append("note: no test image is common to all these runs: each figure is its own run's test set; "
                         "compare figures only between runs of the same split")
        else:
            figures = [_Figures.of_rows([row for row in rows if row["path"] in common], r.get("task") == "multi-label")
                       for r, rows in zip(records, predictions)]
            notes.append(f"note: every figure is on the {len(common)} test images all these runs were tested on "
                         f"(each run's own figures are in its record and report)")
    best = max(range(len(figures)), key=lambda i: figures[i].accuracy)
    lines = ["| kind | model | test accuracy (95% CI) | top-5 | mean per-class (95% CI) | vs best | training s | "
             "split | run |", "|---|---|---|---|---|---|---|---|---|"]
    told_apart = False
    for i, (folder, r, f) in enumerate(zip(folders, records, figures)):
        if i == best:
            versus = "best"
        elif f.accuracy_ci and figures[best].accuracy_ci and overlaps(f.accuracy_ci, figures[best].accuracy_ci):
            versus = "not distinguishable"
        else:
            versus, told_apart = "below", told_apart or bool(f.accuracy_ci)
        seconds = r.get("train_seconds")
        lines.append(f"| {r['kind']}{' (cv)' if r.get('cv') else ''} | {r.get('title', folder.name)} | "
                     f"{_percent(f.accuracy, f.accuracy_ci)} | {_percent(f.top5)} | "
                     f"{_percent(f.mean_per_class, f.mean_per_class_ci)} | {versus} | "
                     f"{float('nan') if seconds is None else seconds:.1f} | {str(r.get('split_digest', '?'))[:8]} | "
                     f"{folder.name} |")
    if len(figures) > 1:
        notes.append("not distinguishable: the run's 95% interval of test accuracy overlaps the best run's, so "
                     "these test images do not tell the two apart (more test images, or --cv, would)")
    return "\n".join(lines + ([""] if notes else []) + notes)


@dataclasses.dataclass(frozen=True)
class _Figures:
    """What compare shows of a run: accuracy, top-5 and mean per-class accuracy, with intervals."""

    accuracy: float
    accuracy_ci: tuple | None
    top5: float | None
    mean_per_class: float | None
    mean_per_class_ci: tuple | None

    @classmethod
    def of_record(cls, r: dict) -> _Figures:
        m = r["metrics"]
        return cls(m["accuracy"], m.get("accuracy_ci"), m.get("top5_accuracy"), m.get("mean_per_class_accuracy"),
                   m.get("mean_per_class_accuracy_ci"))

    @classmethod
    def of_rows(cls, rows: list[dict], multi: bool) -> _Figures:
        """From rows of predictions.csv (single-label: true and predicted class; multi-label: the
        exact match of their label sets, with no per-class figure)."""
        truth = np.array([row["true"] for row in rows])
        right = truth == np.array([row["predicted"] for row in rows])
        per_class = None
        if not multi:
            per_class = float(np.mean([right[truth == c].mean() for c in np.unique(truth)]))
        return cls(float(right.mean()), wilson(int(right.sum()), len(right)), None, per_class,
                   None if multi else mean_per_class_interval(truth, np.where(right, truth, "")))


def _percent(value, ci=None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
