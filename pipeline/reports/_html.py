"""report.html of a run folder: what the model learned and which images it gets wrong.

A run of a head, a fine-tuned or a from-scratch model gets its figures (confusion matrix,
training curves, ROC / precision-recall for two classes), a sortable per-class table and a gallery
of the misclassified test images, most confident mistakes first (read from ``predictions.csv``,
which every run writes). A sweep gets its chart and table. One self-contained file
(:mod:`pipeline.reports._pages`).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from pipeline._checked import (
    MAX_COUNT,
    Fraction,
    LaxSchema,
    Name,
    Schema,
    Seconds,
    Text,
    problem,
    read_checked,
)
from pipeline._files import durable_replace
from pipeline._records import load_record, run_name
from pipeline.codes import data_root_of, open_code_sets
from pipeline.data import TEST, relative_inside
from pipeline.errors import ParameterError, UserError, one_line
from pipeline.heads import load_head
from pipeline.reports._intervals import NOTE as INTERVALS_NOTE
from pipeline.reports._pages import (
    embedded_figure,
    esc,
    facts,
    page,
    section,
    shot,
    table,
)
from pipeline.reports._safe import from_cell, to_cell

REPORT = "report.html"
PREDICTIONS = "predictions.csv"
PREDICTION_FIELDS = ("path", "split", "true", "predicted", "confidence", "true_probability")
GALLERY = 60  # misclassified test images shown, most confident first


def write_predictions(run_dir: Path, paths, y_true, proba, class_names, thresholds=None) -> None:
    """predictions.csv: one row per test image (path relative to the data folder, true and
    predicted class, the predicted class's probability, the true class's probability).

    Multi-label (``y_true`` (n, labels), ``thresholds``): true and predicted labels joined by
    ``|``; ``confidence`` is that of the most confident wrong decision (a label's probability
    for a false positive, one minus it for a false negative), or for an image with every label
    right that of its least confident decision; ``true_probability`` the lowest probability of
    its true labels; ``errors`` lists its false positives and false negatives."""
    if np.ndim(y_true) == 2:
        return _write_multi_label_predictions(run_dir, paths, y_true, proba, class_names, thresholds)
    pred = proba.argmax(1)
    with open(Path(run_dir) / PREDICTIONS, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(PREDICTION_FIELDS)
        for p, t, k, row in zip(paths, y_true, pred, proba):
            w.writerow([to_cell(p), "test", to_cell(class_names[t]), to_cell(class_names[k]), f"{row[k]:.6f}",
                        f"{row[t]:.6f}"])


def _write_multi_label_predictions(run_dir, paths, Y, proba, names, thresholds) -> None:
    pred = proba >= np.asarray(thresholds)
    with open(Path(run_dir) / PREDICTIONS, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow((*PREDICTION_FIELDS, "errors"))
        for p, t, k, row in zip(paths, np.asarray(Y) > 0, pred, proba):
            decided = np.where(k, row, 1 - row)
            wrong = np.flatnonzero(t != k)
            confidence = decided[wrong].max() if len(wrong) else decided.min()
            errors = "; ".join(f"{'false positive' if k[j] else 'false negative'} {names[j]} ({row[j]:.3f})"
                               for j in wrong[np.argsort(-decided[wrong])])
            w.writerow([to_cell(p), "test", to_cell("|".join(names[j] for j in np.flatnonzero(t))),
                        to_cell("|".join(names[j] for j in np.flatnonzero(k))), f"{confidence:.6f}",
                        f"{row[t].min():.6f}" if t.any() else "", to_cell(errors)])


class PredictionRow(LaxSchema):
    """One row of predictions.csv (cells are text: numbers are read from it)."""

    path: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(relative_inside)]
    split: Text = "test"
    true: Text
    predicted: Text
    confidence: Fraction
    true_probability: Fraction | None = None
    errors: Text = ""

    @field_validator("true_probability", mode="before")
    @classmethod
    def _blank(cls, v):
        return None if v == "" else v


MAX_PREDICTIONS_BYTES = 1 << 30


def read_predictions(run_dir: Path) -> list[dict] | None:
    """The rows of a run's predictions.csv, each checked (:class:`PredictionRow`); None if the
    run has none."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_PREDICTIONS_BYTES:
        raise UserError(f"{path} is larger than predictions of any test set ({path.stat().st_size:,} bytes)")
    rows = []
    try:  # row by row: a test set of many images is not held twice
        with open(path, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh), 1):
                cells = {k: from_cell(v) for k, v in row.items() if isinstance(k, str) and isinstance(v, str)}
                try:
                    rows.append(PredictionRow.model_validate(cells).model_dump())
                except ValidationError as exc:
                    raise UserError(f"{path} is not a valid predictions file: row {i}: {problem(exc)}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable predictions file ({one_line(exc)})") from None
    return rows


def recompute_predictions(run_dir: Path, record: dict) -> bool:
    """predictions.csv of a head run made before runs wrote it, from its head and the test part
    of its code set (when both are still there); False if it cannot be made."""

    if record.get("kind") != "head-on-codes":
        return False
    try:
        cs = open_code_sets(record["codes"])
        head = load_head(run_dir)
    except (UserError, OSError, KeyError):
        return False
    test = cs.split == TEST
    paths = [p for p, t in zip(cs.paths, test) if t]
    if paths != record.get("test_paths", paths) or list(cs.class_names) != record["class_names"]:
        return False  # the code set changed since the run: its test images are not the run's
    write_predictions(run_dir, paths, cs.y[test], head.predict_proba(cs.rows(test)), record["class_names"],
                      getattr(head, "thresholds_", None))
    return True


def per_class_rows(confusion, class_names) -> list[list]:
    """Class, test images, correct, recall, precision, F1, most often predicted instead."""
    cm = np.asarray(confusion)
    rows = []
    for i, name in enumerate(class_names):
        n, hit, called = cm[i].sum(), cm[i, i], cm[:, i].sum()
        recall = hit / n if n else float("nan")
        precision = hit / called if called else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        off = cm[i].copy()
        off[i] = 0
        j = int(off.argmax())
        confused = f"{class_names[j]} ({off[j]})" if off[j] else ""
        rows.append([name, int(n), int(hit), (f"{100 * recall:.1f}%", recall), (f"{100 * precision:.1f}%", precision),
                     (f"{f1:.3f}", f1), (confused, int(off[j]))])
    return rows


def gallery(predictions: list[dict], data_root: Path | None, limit: int = GALLERY) -> str:
    wrong = [p for p in predictions if p["true"] != p["predicted"]]
    wrong.sort(key=lambda p: -float(p["confidence"]))
    if not wrong:
        return "<p>Every test image is classified correctly.</p>"
    tiles = []
    for p in wrong[:limit]:
        caption = (f"<span class=\"good\">true: {esc(p['true'])}</span><br>"
                   f"<span class=\"bad\">predicted: {esc(p['predicted'])} ({100 * float(p['confidence']):.1f}%)</span><br>"
                   + (f"{esc(p['errors'])}<br>" if p.get("errors") else
                      f"true class: {100 * float(p['true_probability'] or 'nan'):.1f}%<br>")
                   + f"<span class=\"path\">{esc(p['path'])}</span>")
        # the path is checked to stay inside the data folder (PredictionRow); no folder, no picture
        image = Path(data_root) / p["path"] if data_root else None
        tiles.append(shot(image, caption, f"{p['path']}: {p['true']} taken for {p['predicted']}"))
    more = f"<p>{len(wrong)} misclassified test images; the {len(tiles)} most confident mistakes are shown.</p>"
    return more + "<div class=\"gallery\">\n" + "\n".join(tiles) + "\n</div>"


def run_page(run_dir: Path, record: dict, limit: int = GALLERY) -> str:
    m = record.get("metrics", {})
    class_names = record["class_names"]
    ci = lambda key, f: (f" (95% CI {f(m[key + '_ci'][0])} to {f(m[key + '_ci'][1])})"
                         if m.get(key + "_ci") else "")  # (checked two fractions: RunMetrics)
    percent = lambda v: f"{100 * v:.2f}%"
    pct = lambda v, key=None: "n/a" if v is None else percent(v) + (ci(key, percent) if key else "")
    fixed = lambda key: f"{m[key]:.4f}" + ci(key, lambda v: f"{v:.4f}")
    multi = m.get("task") == "multi-label"
    items = [("kind", record["kind"]), ("test accuracy" + (" (exact match)" if multi else ""),
                                        pct(m.get("accuracy"), "accuracy")),
             ("per-label accuracy" if multi else "mean per-class accuracy",
              pct(m.get("mean_per_class_accuracy"), "mean_per_class_accuracy"))]
    if multi:
        items += [("mAP", "n/a" if m.get("mAP") is None else fixed("mAP")),
                  ("micro / macro F1", f"{fixed('micro_f1')} / {fixed('macro_f1')}")]
    if m.get("top5_accuracy") is not None:
        items.append(("top-5 accuracy", pct(m["top5_accuracy"], "top5_accuracy")))
    if m.get("roc_auc") is not None:
        items += [("ROC AUC", f"{m['roc_auc']:.4f} (positive class {m['positive_class']})"),
                  ("average precision", f"{m['average_precision']:.4f}")]
    items += [("images (train / validation / test)", f"{record.get('n_train')} / {record.get('n_val')} / {record.get('n_test')}"),
              ("classes", len(class_names)), ("training seconds", record.get("train_seconds")),
              ("codes", record.get("codes", "")), ("run folder", run_name(run_dir))]
    if m.get("accuracy_ci"):
        items.append(("what the intervals mean", INTERVALS_NOTE))
    sections = [section("Summary", facts(items), "summary")]
    predictions = read_predictions(run_dir)
    if predictions is None and recompute_predictions(run_dir, record):
        predictions = read_predictions(run_dir)
    data_root = record.get("data_root") or data_root_of(record.get("code_attrs", {}))
    body = (gallery(predictions, Path(data_root) if data_root else None, limit) if predictions is not None else
            "<p>This run has no per-image predictions (it was made before runs wrote predictions.csv, and they "
            "cannot be recomputed from its head and code set); train it again to see its mistakes.</p>")
    if multi:
        sections.append(section("Most confident false positives and false negatives", body, "gallery"))
        num = lambda v, f="{:.3f}": ("n/a", -1.0) if v is None else (f.format(v), v)
        sections.append(section("Per label (click a column to sort)", table(
            ["label", "test images", "average precision", "precision", "recall", "F1", "threshold"],
            [[r["label"], r["test_images"], num(r["average_precision"]), num(r["precision"]), num(r["recall"]),
              num(r["f1"]), num(r["threshold"])] for r in m.get("per_label", [])]), "classes"))
    else:
        sections.append(section("Most confident mistakes", body, "gallery"))
        sections.append(section("Per class (click a column to sort)", table(
            ["class", "test images", "correct", "recall", "precision", "F1", "most often predicted instead"],
            per_class_rows(record["confusion"], class_names)), "classes"))
        sections.append(section("Confusion matrix", embedded_figure(Path(run_dir) / "confusion.png",
                                                                    "confusion matrix"), "confusion"))
    curves = "".join(embedded_figure(Path(run_dir) / f, alt) for f, alt in
                     (("history.png", "training curves"), ("roc_pr.png", "ROC and precision-recall curves")))
    if curves:
        sections.append(section("Curves", curves, "curves"))
    options = {k: v for k, v in record.items() if k not in ("confusion", "metrics", "history", "test_paths", "class_names")}
    sections.append(section("Options", f"<pre>{esc(json.dumps(options, indent=2))}</pre>", "options"))
    return page(record.get("title", run_name(run_dir)), sections)


SweepN = Annotated[int, Field(ge=1, le=MAX_COUNT)] | Literal["all"]  # training images per class


class SweepRow(Schema):
    label: Text
    head: Name
    n: SweepN
    accuracy_mean: Fraction
    accuracy_std: Annotated[float, Field(ge=0.0, le=1.0)]


class SweepSummary(Schema):
    """``summary.json`` of a sweep: what the report reads of it."""

    heads: Annotated[list[Name], Field(min_length=1)]
    ns: Annotated[list[SweepN], Field(min_length=1)]
    repeats: Annotated[int, Field(ge=1, le=MAX_COUNT)]
    wall_seconds: Seconds | None = None
    metric: Literal["accuracy", "mAP"] = "accuracy"
    summary: list[SweepRow]

    @model_validator(mode="after")
    def _complete(self):
        have = {(s.label, s.head, s.n) for s in self.summary}
        for label, head in {(s.label, s.head) for s in self.summary}:
            missing = [n for n in self.ns if (label, head, n) not in have]
            if missing:
                raise ValueError(f"summary has no row for {label} {head} at N={missing[0]}")
        return self


def sweep_page(run_dir: Path, summary: dict) -> str:
    ns = summary["ns"]
    labels = sorted({(s["label"], s["head"]) for s in summary["summary"]})
    rows = []
    for label, head in labels:
        row = [label, head]
        for n in ns:
            s = next(x for x in summary["summary"] if x["label"] == label and x["head"] == head and x["n"] == n)
            row.append((f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}", s["accuracy_mean"]))
        rows.append(row)
    items = [("heads", ", ".join(summary["heads"])), ("training images per class", ", ".join(map(str, ns))),
             ("repeats", summary["repeats"]), ("wall seconds", summary.get("wall_seconds")),
             ("run folder", run_name(run_dir))]
    return page("training-size sweep", [
        section("Summary", facts(items), "summary"),
        section("Accuracy vs. training images per class", embedded_figure(Path(run_dir) / "sweep.png", "sweep chart"),
                "chart"),
        section(f"Test {summary.get('metric', 'accuracy')} (%), mean ± std over repeats (click a column to sort)",
                table(["code set", "head", *[f"N={n}" for n in ns]], rows), "table"),
    ])


def build_report(run_dir, limit: int = GALLERY) -> Path:
    """Write (or rewrite) ``report.html`` in a run or sweep folder; returns its path."""

    run_dir = Path(run_dir)
    if limit < 0:
        raise ParameterError("gallery", "must be 0 or more")
    if (run_dir / "summary.json").is_file() and not (run_dir / "record.json").is_file():
        summary = read_checked(run_dir / "summary.json", SweepSummary, "sweep summary")
        html = sweep_page(run_dir, summary.model_dump())
    else:
        html = run_page(run_dir, load_record(run_dir), limit)
    out = run_dir / REPORT
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    durable_replace(tmp, out)  # a rebuild leaves the old report or the new one, never half of one
    return out
