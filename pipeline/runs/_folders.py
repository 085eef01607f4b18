"""Run folders: ``runs/<time>-<name>/`` with a versioned ``record.json``, written and read here only.

Every kind of run (a head on codes, a fine-tuned model, the from-scratch baseline) ends in
:func:`finish_run`, which evaluates on the test images, saves the model, writes the report and
prints the summary line.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline._faults import fault_point
from pipeline._records import RECORD_VERSION, Run, assembled_run, load_record
from pipeline.errors import UserError
from pipeline.reports import build_report, evaluate, evaluate_multi_label, summary, write_predictions, write_report

logger = logging.getLogger(__name__)


def finish_run(runs_dir, name: str, *, record: dict, y_true, proba, class_names, save, test_paths, data_root,
               positive_class=None, history=None, detail: str = "", thresholds=None):
    """Evaluate ``proba`` against ``y_true`` (the test images ``test_paths``, relative to
    ``data_root``), make the run folder, ``save(run_dir)`` the model, write record.json, the
    report, predictions.csv and report.html, log the summary line; returns the :class:`Run`."""

    multi = np.ndim(y_true) == 2  # multi-label: a probability per label, decided by ``thresholds``
    metrics = (evaluate_multi_label(y_true, proba, thresholds, class_names) if multi
               else evaluate(y_true, proba, class_names, positive_class))
    record = {"record_version": RECORD_VERSION, **record, "class_names": list(class_names),
              "history": history or {}, "data_root": str(data_root) if data_root else None}
    if multi:
        record.update(task="multi-label", thresholds=[float(t) for t in thresholds])
    with assembled_run(runs_dir, name) as run:  # appears whole, or not at all
        save(run.path)
        fault_point("run-head-saved")
        write_report(run.path, record, metrics, class_names, history)
        write_predictions(run.path, test_paths, y_true, proba, list(class_names), thresholds)
        build_report(run.path)
    run_dir = run.path
    logger.info(f"{record['title']}: {summary(metrics)}" + (f"; {detail}" if detail else "") + f" -> {run_dir}")
    return Run(run_dir, record["kind"], metrics)


def compare_table(run_dirs=None, runs_dir="runs") -> str:
    """A Markdown table of runs (default: every run under ``runs_dir``): kind, title, test
    accuracy, top-5, mean per-class accuracy, training seconds."""
    folders = [Path(r) for r in run_dirs] if run_dirs else sorted(
        p.parent for p in Path(runs_dir).glob("*/record.json") if not p.parent.name.startswith("."))  # not partial runs
    lines = ["| kind | model | test accuracy | top-5 | mean per-class | training s | split | run |",
             "|---|---|---|---|---|---|---|---|"]
    splits = []
    for folder in folders:
        r = load_record(folder)
        m = r["metrics"]
        splits.append(str(r.get("split_digest", "?"))[:8])
        top5 = "n/a" if m.get("top5_accuracy") is None else f"{100 * m['top5_accuracy']:.2f}%"
        lines.append(f"| {r['kind']} | {r.get('title', folder.name)} | {100 * m['accuracy']:.2f}% | {top5} | "
                     f"{100 * m['mean_per_class_accuracy']:.2f}% | {float('nan') if r.get('train_seconds') is None else r['train_seconds']:.1f} | "
                     f"{splits[-1]} | {folder.name} |")
    if len(lines) == 2:
        raise UserError(f"no finished runs to compare under {runs_dir}")
    if len(set(splits)) > 1:
        lines.append(f"\nnote: these runs were tested on {len(set(splits))} different splits (column split: a digest "
                     f"of which image is in which part; ? for runs made before it was recorded): compare figures "
                     f"only between runs of the same split")
    return "\n".join(lines)
