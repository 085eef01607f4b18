"""Evaluation reports shared by every way of training: metrics, per-class report, plots, run folder."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np


def evaluate(y_true: np.ndarray, proba: np.ndarray, class_names) -> dict:
    """Accuracy, top-5 accuracy, mean per-class accuracy and the per-class P/R/F1 report."""
    from sklearn.metrics import (balanced_accuracy_score, classification_report, confusion_matrix,
                                 top_k_accuracy_score)
    labels = np.arange(len(class_names))
    pred = proba.argmax(1)
    k = min(5, len(class_names) - 1)
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()),
        "top5_accuracy": float(top_k_accuracy_score(y_true, proba, k=k, labels=labels)) if k >= 1 else 1.0,
        "mean_per_class_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "report": classification_report(y_true, pred, labels=labels, target_names=list(class_names),
                                        zero_division=0, digits=3),
        "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }


def most_confused(confusion, class_names, k: int = 10) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal counts: (true class, predicted class, test images)."""
    cm = np.array(confusion)
    np.fill_diagonal(cm, 0)
    order = np.argsort(cm, axis=None, kind="stable")[::-1][:k]
    return [(class_names[i], class_names[j], int(cm[i, j])) for i, j in zip(*np.unravel_index(order, cm.shape))
            if cm[i, j] > 0]


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
    ConfusionMatrixDisplay(norm, display_labels=class_names).plot(
        ax=ax, include_values=n <= 20, cmap="Blues", colorbar=True, values_format=".2f",
        xticks_rotation="vertical")
    if n > 40:
        ax.tick_params(labelsize=5)
    ax.set_title(title or "confusion matrix (rows normalized)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def new_run_dir(runs_dir, name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(runs_dir) / f"{stamp}-{name}"
    i = 1
    while path.exists():
        i += 1
        path = Path(runs_dir) / f"{stamp}-{name}-{i}"
    path.mkdir(parents=True)
    return path


def write_report(run_dir: Path, record: dict, metrics: dict, class_names, history=None) -> None:
    """record.json (options, split, metrics, seconds), report.txt, confusion.png, history.png."""
    run_dir = Path(run_dir)
    summary = {k: v for k, v in metrics.items() if k not in ("report", "confusion")}
    (run_dir / "record.json").write_text(json.dumps({**record, "metrics": summary,
                                                     "confusion": metrics["confusion"]}, indent=2))
    (run_dir / "report.txt").write_text(
        f"accuracy {summary['accuracy']:.4f}  top-5 {summary['top5_accuracy']:.4f}  "
        f"mean per-class {summary['mean_per_class_accuracy']:.4f}  (n={summary['n']})\n\n" + metrics["report"]
        + "\nmost confused (true -> predicted: test images)\n"
        + "".join(f"  {t} -> {p}: {n}\n" for t, p, n in most_confused(metrics["confusion"], class_names)))
    plot_confusion(metrics["confusion"], class_names, run_dir / "confusion.png", record.get("title", ""))
    if history and any(k in history for k in ("loss", "accuracy")):
        plot_history(history, run_dir / "history.png", record.get("title", ""))
