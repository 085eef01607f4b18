"""Evaluation reports shared by every way of training: metrics, per-class report, plots, run folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline._records import write_record
from pipeline.errors import ParameterError
from pipeline.reports._intervals import METHOD, mean_per_class_interval, multi_label_intervals, wilson
from pipeline.reports._safe import plain_text, shown

# Deferred on purpose: scikit-learn, matplotlib are imported inside the functions that use them, so
# that commands and workers that never need them start without loading them.

TOP_K = 5  # top-5 accuracy is reported where it means something: with more than 5 classes


def evaluate(y_true: np.ndarray, proba: np.ndarray, class_names, positive: str | None = None) -> dict:
    """Accuracy, mean per-class accuracy (what judges unbalanced data), the per-class P/R/F1
    report and the confusion matrix; top-5 accuracy with 6 or more classes; with two classes,
    ROC AUC and average precision of ``positive`` (default: the second class name in sorted
    order), and the ROC and precision-recall curves (``curves``, not stored in records)."""
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        classification_report,
        confusion_matrix,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
        top_k_accuracy_score,
    )
    class_names = list(class_names)
    labels = np.arange(len(class_names))
    pred = proba.argmax(1)
    out = {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()),
        "top5_accuracy": (float(top_k_accuracy_score(y_true, proba, k=TOP_K, labels=labels))
                          if len(class_names) > TOP_K else None),
        "mean_per_class_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "report": classification_report(y_true, pred, labels=labels, target_names=class_names,
                                        zero_division=0, digits=3),
        "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    out["accuracy_ci"] = list(wilson(int((pred == y_true).sum()), len(y_true)))
    if out["top5_accuracy"] is not None:
        out["top5_accuracy_ci"] = list(wilson(round(out["top5_accuracy"] * len(y_true)), len(y_true)))
    out["mean_per_class_accuracy_ci"] = list(mean_per_class_interval(y_true, pred))
    out["intervals"] = METHOD
    pos = positive_index(class_names, positive)
    if pos is not None:
        truth, score = (np.asarray(y_true) == pos), proba[:, pos]
        out["positive_class"] = class_names[pos]
        if 0 < truth.sum() < len(truth):  # both classes among the test images
            out["roc_auc"] = float(roc_auc_score(truth, score))
            out["average_precision"] = float(average_precision_score(truth, score))
            fpr, tpr, _ = roc_curve(truth, score)
            precision, recall, _ = precision_recall_curve(truth, score)
            out["curves"] = {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
    return out


def evaluate_multi_label(Y: np.ndarray, proba: np.ndarray, thresholds, label_names) -> dict:
    """A multi-label set's figures: mAP (mean over labels of average precision, labels with a
    positive test image), micro and macro F1, the exact-match ratio (``accuracy``: every label of
    an image right), the per-label accuracy averaged over labels (``mean_per_class_accuracy``),
    and per label AP, precision, recall, F1, its threshold and test images with it."""
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_recall_fscore_support,
    )
    Y = (np.asarray(Y) > 0).astype(int)
    thresholds = np.asarray(thresholds, float)  # one per label, or one per image and label (cross-validation)
    pred = (proba >= thresholds).astype(int)
    if thresholds.ndim == 2:
        thresholds = np.median(thresholds, 0) if len(thresholds) else np.full(Y.shape[1], 0.5)
    names = list(label_names)
    ap = [float(average_precision_score(Y[:, j], proba[:, j])) if Y[:, j].any() else None for j in range(Y.shape[1])]
    p, r, f, support = precision_recall_fscore_support(Y, pred, average=None, zero_division=0)
    scored = [a for a in ap if a is not None]
    per_label = [{"label": n, "test_images": int(support[j]), "average_precision": ap[j], "precision": float(p[j]),
                  "recall": float(r[j]), "f1": float(f[j]), "threshold": float(thresholds[j])}
                 for j, n in enumerate(names)]
    lines = [f"{'label':>24} {'AP':>7} {'precision':>9} {'recall':>7} {'F1':>6} {'threshold':>9} {'images':>6}"]
    lines += [f"{row['label'][:24]:>24} {('%.3f' % row['average_precision']) if row['average_precision'] is not None else 'n/a':>7} "
              f"{row['precision']:9.3f} {row['recall']:7.3f} {row['f1']:6.3f} {row['threshold']:9.3f} "
              f"{row['test_images']:6d}" for row in per_label]
    return {
        "n": int(len(Y)), "task": "multi-label",
        "accuracy": float((pred == Y).all(1).mean()) if len(Y) else 0.0,
        "mean_per_class_accuracy": float((pred == Y).mean()) if len(Y) else 0.0,
        "top5_accuracy": None,
        "mAP": float(np.mean(scored)) if scored else None,
        "micro_f1": float(f1_score(Y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(Y, pred, average="macro", zero_division=0)),
        "per_label": per_label, "report": "\n".join(lines) + "\n", "confusion": None,
        "accuracy_ci": list(wilson(int((pred == Y).all(1).sum()), len(Y))),
        **(multi_label_intervals(Y, proba, pred) if len(Y) else {}), "intervals": METHOD,
    }


def positive_index(class_names, positive: str | None = None) -> int | None:
    """Index of the positive class of a two-class problem (None with more classes)."""
    class_names = list(class_names)
    if positive is not None and positive not in class_names:
        raise ParameterError("positive_class", f"{positive!r} is not a class of these codes ({', '.join(class_names)})")
    if len(class_names) != 2:
        if positive is not None:
            raise ParameterError("positive_class", f"applies to two-class problems; these codes have "
                            f"{len(class_names)} classes")
        return None
    return class_names.index(positive) if positive is not None else 1


def interval(metrics: dict, key: str) -> str:
    """' 95% CI [L, H]' after a figure, where the metrics hold its interval ('' where not)."""
    ci = metrics.get(f"{key}_ci")
    return f" 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and None not in ci else ""


def summary(metrics: dict, name: str = "test accuracy") -> str:
    """'test accuracy A 95% CI [L, H], top-5 T, mean per-class M 95% CI [L, H]' (ROC AUC instead
    of top-5 for two classes); multi-label: 'test accuracy A 95% CI [L, H] (exact match),
    per-label accuracy M, mAP P 95% CI [L, H], micro F1 F, macro F1 G'; each figure's interval
    where the metrics hold it (runs made before intervals have none)."""
    m = metrics
    if m.get("task") == "multi-label":
        return (f"{name} {m['accuracy']:.4f}{interval(m, 'accuracy')} (exact match), per-label accuracy "
                f"{m['mean_per_class_accuracy']:.4f}, "
                + (f"mAP {m['mAP']:.4f}{interval(m, 'mAP')}" if m["mAP"] is not None else "mAP n/a")
                + f", micro F1 {m['micro_f1']:.4f}, macro F1 {m['macro_f1']:.4f} (n={m['n']})")
    parts = [f"{name} {m['accuracy']:.4f}{interval(m, 'accuracy')}"]
    if m.get("top5_accuracy") is not None:
        parts.append(f"top-5 {m['top5_accuracy']:.4f}")
    parts.append(f"mean per-class {m['mean_per_class_accuracy']:.4f}{interval(m, 'mean_per_class_accuracy')}")
    if metrics.get("roc_auc") is not None:
        parts.append(f"ROC AUC {metrics['roc_auc']:.4f} (positive: {metrics['positive_class']})")
    return ", ".join(parts) + f" (n={metrics['n']})"


def most_confused(confusion, class_names, k: int = 10) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal counts: (true class, predicted class, test images)."""
    cm = np.array(confusion)
    np.fill_diagonal(cm, 0)
    order = np.argsort(cm, axis=None, kind="stable")[::-1][:k]
    return [(class_names[i], class_names[j], int(cm[i, j])) for i, j in zip(*np.unravel_index(order, cm.shape))
            if cm[i, j] > 0]


@plain_text
def plot_confusion(confusion, class_names, path: Path, title="") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(confusion, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(class_names)
    side = min(max(6.0, 0.18 * n + 3), 24)
    fig, ax = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay(norm, display_labels=[shown(c, 40) for c in class_names]).plot(
        ax=ax, include_values=n <= 20, cmap="Blues", colorbar=True, values_format=".2f",
        xticks_rotation="vertical")
    if n > 40:
        ax.tick_params(labelsize=5)
    ax.set_title(shown(title or "confusion matrix (rows normalized)"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@plain_text
def plot_history(history: dict, path: Path, title="") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), ("val_" + metric, "validation")):
            if key in history:
                ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(shown(title or "training curves"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@plain_text
def plot_binary_curves(curves: dict, metrics: dict, path: Path, title="") -> None:
    """ROC and precision-recall curves of the positive class, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    roc.plot(curves["fpr"], curves["tpr"], label=f"AUC {metrics['roc_auc']:.3f}")
    roc.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.plot(curves["recall"], curves["precision"], label=f"average precision {metrics['average_precision']:.3f}")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.legend(loc="lower left" if ax is pr else "lower right")
        ax.grid(alpha=0.3)
    fig.suptitle(shown((title + " · " if title else "") + f"positive class: {metrics['positive_class']}", 160))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dir: Path, record: dict, metrics: dict, class_names, history=None) -> None:
    """record.json (options, split, metrics, seconds), report.txt, confusion.png, history.png,
    and for two classes roc_pr.png."""
    run_dir = Path(run_dir)
    summary_ = {k: v for k, v in metrics.items() if k not in ("report", "confusion", "curves")}
    write_record(run_dir, {**record, "metrics": summary_, "confusion": metrics["confusion"]})
    if metrics.get("task") == "multi-label":  # no confusion matrix: one row per label in the report
        (run_dir / "report.txt").write_text(summary(metrics) + "\n\n" + metrics["report"])
        if history and any(k in history for k in ("loss", "accuracy")):
            plot_history(history, run_dir / "history.png", record.get("title", ""))
        return
    (run_dir / "report.txt").write_text(
        summary(metrics) + "\n\n" + metrics["report"]
        + "\nmost confused (true -> predicted: test images)\n"
        + "".join(f"  {t} -> {p}: {n}\n" for t, p, n in most_confused(metrics["confusion"], class_names)))
    plot_confusion(metrics["confusion"], class_names, run_dir / "confusion.png", record.get("title", ""))
    if metrics.get("curves"):
        plot_binary_curves(metrics["curves"], metrics, run_dir / "roc_pr.png", record.get("title", ""))
    if history and any(k in history for k in ("loss", "accuracy")):
        plot_history(history, run_dir / "history.png", record.get("title", ""))
