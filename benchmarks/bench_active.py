"""Simulated labelling: how many labels each selection strategy needs for a given accuracy.

    python benchmarks/bench_active.py [--data FOLDER] [--classes K] [--seeds S] [--per-class-budget B]
                                      [--backbone efficientnet_lite0] [--cache-dir cache] [--out docs/active_caltech101]

The images of ``--data`` (default: Caltech-101 from ../shared) get their codes by stage 1 (cached),
then for each seed: a fixed stratified 30% of the images is the test set, the rest the pool; one
label per class (drawn) to start; then batches of K labels (one per class on average) chosen by
each strategy of :func:`pipeline.label.select_next` from the pool, the true labels as the oracle,
up to ``B`` labels per class. After every batch a logistic regression (as the audit's label model: C = 10 on the 256
leading principal components of the unit-length codes, fitted on the pool without labels) is
trained on the labels so far and scored on the test set.

Prints, per strategy, the mean accuracy at 1, 2, 5, 10, 20 labels per class, and for R = 5, 10,
20 labels per class the line ``auto vs random: L labels for the accuracy random reaches with R
(P% fewer)`` (L interpolated on auto's mean curve; ``never`` when auto does not reach it within
the budget; P negative when auto needs more). Writes ``OUT.json`` and ``OUT.png`` (the curves).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import CALTECH, ROOT

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import UNLABELLED
from pipeline.label import select_next

STRATEGIES = ("random", "coverage", "margin", "auto")
POINTS = (1, 2, 5, 10, 20)
COMPONENTS = 256  # as the audit's label model (pipeline.quality._audit), with its C
LABEL_C = 10.0


class Simulated:
    """The codes with only the labels given so far: what :func:`select_next` reads."""

    def __init__(self, X, y_true, class_names, path):
        self.X, self.y_true, self.class_names, self.path = X, y_true, class_names, path
        self.multi_label = False
        self.split = np.full(len(X), UNLABELLED, np.int8)
        self.y = np.full(len(X), -1, np.int64)
        self.paths = [str(i) for i in range(len(X))]

    def __len__(self):
        return len(self.X)

    def rows(self, mask):
        return self.X[mask]

    def label(self, rows):
        self.split[rows] = 0
        self.y[rows] = self.y_true[rows]


def accuracy(X, y, lab, test) -> float:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=LABEL_C, max_iter=300).fit(X[lab], y[lab])
    return float((model.predict(X[test]) == y[test]).mean())


def simulate(X, y, class_names, strategy, seed, budget) -> list[tuple[int, float]]:
    """(labels, test accuracy) after the first labels and after every batch."""
    from sklearn.model_selection import train_test_split

    from sklearn.decomposition import PCA

    K = len(class_names)
    rows = np.arange(len(y))
    pool_rows, test = train_test_split(rows, test_size=0.3, stratify=y, random_state=seed)
    # unit-length codes on the leading principal components of the pool (fitted without labels, as
    # the audit's label model sees them): the same choices, a head trained in a second
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    X = PCA(min(COMPONENTS, X.shape[1]), svd_solver="randomized", random_state=seed).fit(X[pool_rows]).transform(X)
    Xp, yp = X[pool_rows], y[pool_rows]
    sim = Simulated(Xp, yp, class_names, Path("simulated"))
    rng = np.random.default_rng(seed)
    sim.label([rng.choice(np.flatnonzero(yp == c)) for c in range(K)])
    curve = [(K, accuracy(X, y, pool_rows[sim.split == 0], test))]
    while curve[-1][0] < budget * K and (sim.split == UNLABELLED).any():
        choice = select_next(sim, min(K, budget * K - curve[-1][0]), strategy, seed=seed * 1000 + len(curve))
        sim.label(choice.rows)
        curve.append((int((sim.split == 0).sum()), accuracy(X, y, pool_rows[sim.split == 0], test)))
    return curve


def labels_for(curve: np.ndarray, target: float) -> float | None:
    """Labels at which a (labels, accuracy) curve first reaches ``target`` (linear in between)."""
    n, a = curve[:, 0], curve[:, 1]
    hit = np.flatnonzero(a >= target)
    if not len(hit):
        return None
    i = hit[0]
    if i == 0:
        return float(n[0])
    return float(n[i - 1] + (target - a[i - 1]) * (n[i] - n[i - 1]) / (a[i] - a[i - 1]))


def mean_curve(curves: list) -> np.ndarray:
    length = min(len(c) for c in curves)
    return np.array([[curves[0][i][0], np.mean([c[i][1] for c in curves])] for i in range(length)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(CALTECH))
    p.add_argument("--classes", type=int, default=None, help="the first K classes (in name order); default all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--per-class-budget", type=int, default=25, help="labels per class to stop at")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--out", default=None, help="OUT.json and OUT.png (default: no files)")
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        sys.exit(f"error: {a.data} is not a folder (Caltech-101 is looked for in ../shared)")
    path = generate_codes(a.data, a.backbone, weights=a.weights, image_size=a.image_size, cache_dir=a.cache_dir)[0]
    cs = CodeSet(path)
    keep = cs.labelled.copy()
    if a.classes:
        keep &= cs.y < a.classes
    X, y = cs.rows(keep).astype(np.float32), np.asarray(cs.y)[keep]
    names = cs.class_names[: a.classes] if a.classes else cs.class_names
    print(f"{len(y)} images of {len(names)} classes, codes of {X.shape[1]} values from {path}; "
          f"{a.seeds} seed(s), up to {a.per_class_budget} labels per class")
    curves = {}
    for s in a.strategies:
        t0 = time.perf_counter()
        curves[s] = [simulate(X, y, names, s, seed, a.per_class_budget) for seed in range(a.seeds)]
        m = mean_curve(curves[s])
        at = {r: float(np.interp(r * len(names), m[:, 0], m[:, 1])) for r in POINTS if r * len(names) <= m[-1, 0]}
        print(f"{s:9s} " + "  ".join(f"{r}/class {v:.4f}" for r, v in at.items())
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    result = {"data": a.data, "images": int(len(y)), "classes": len(names), "seeds": a.seeds, "backbone": a.backbone,
              "budget_per_class": a.per_class_budget, "curves": curves, "comparisons": []}
    if "auto" in curves and "random" in curves:
        auto, rnd = mean_curve(curves["auto"]), mean_curve(curves["random"])
        for r in (5, 10, 20):
            R = r * len(names)
            if R > rnd[-1, 0]:
                continue
            target = float(np.interp(R, rnd[:, 0], rnd[:, 1]))
            L = labels_for(auto, target)
            fewer = None if L is None else 100 * (1 - L / R)
            result["comparisons"].append({"per_class": r, "random_labels": R, "random_accuracy": target,
                                          "auto_labels": L, "fewer_percent": fewer})
            print(f"auto vs random: {'never' if L is None else f'{L:.0f}'} labels for the accuracy random reaches "
                  f"with {R} ({target:.4f}; {r} per class)" + ("" if L is None else f" ({fewer:.0f}% fewer)"))
    if a.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s, cs_ in curves.items():
            m = mean_curve(cs_)
            ax.plot(m[:, 0] / len(names), m[:, 1], label=s)
        ax.set_xlabel("labels per class")
        ax.set_ylabel(f"test accuracy (mean of {a.seeds} seeds)")
        ax.set_title(f"Simulated labelling, {Path(a.data).name[:40]} ({len(names)} classes)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=110)
        print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
