"""Few labels, many unlabelled images: a head on the labelled codes alone against one that also
learns from the unlabelled codes (``pipeline.train(..., unlabelled=True)``'s procedure).

    python benchmarks/bench_fewshot.py [--data FOLDER] [--shots 1 2 5] [--seeds 3] [--head logreg]
                                       [--backbone efficientnet_lite0] [--cache-dir cache]

On a folder of class folders (Caltech-101 from ../shared by default, ``BACKGROUND_Google`` left
out): the code set's test split is a fixed test part per class, never used as unlabelled; for each
seed, K labelled training images per class are drawn from the rest, and every other non-test image
is unlabelled. One line per K, starting exactly

    K-shot: labelled only A%, with the unlabelled images B%

(mean per-class accuracy on the test part, averaged over the seeds), then the gain, its spread
over the seeds, and how often held-out labels chose the unlabelled images. The unlabelled images
are used only where the choice rule says so (as in ``train``): B is what a user gets, harmful
cases included. Last, the seconds of one semi-supervised training against one labelled-only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import CALTECH, ROOT

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import TEST
from pipeline.heads import held_out_gain, make_head, propagate, reduced

LEFT_OUT = ("BACKGROUND_Google",)


def one(X, y, test, labelled, unlabelled, head, seed) -> tuple[float, float, bool, float, float]:
    """(labelled only, with the unlabelled images as the choice rule decides, chosen?, seconds of each)."""
    from sklearn.metrics import balanced_accuracy_score

    n_classes = int(y.max()) + 1
    t0 = time.perf_counter()
    alone = make_head(head, seed=seed).fit(X[labelled], y[labelled], classes=np.arange(n_classes))
    t_alone = time.perf_counter() - t0
    a = balanced_accuracy_score(y[test], alone.predict(X[test]))
    t0 = time.perf_counter()
    rows = np.concatenate([np.flatnonzero(labelled), np.flatnonzero(unlabelled)])
    Z = reduced(X[rows], seed)
    seen = np.zeros(len(rows), bool)
    seen[:labelled.sum()] = True
    target = np.where(seen, y[rows], 0)
    pseudo = propagate(Z, target, seen, n_classes).labels
    chosen = held_out_gain(Z, target, seen, n_classes, pseudo, seed).helps  # (no validation part at these sizes)
    b = a
    if chosen:
        semi = make_head(head, seed=seed).fit(X[rows], np.where(seen, y[rows], pseudo), classes=np.arange(n_classes))
        b = balanced_accuracy_score(y[test], semi.predict(X[test]))
    return a, b, chosen, t_alone, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(CALTECH))
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 5])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--head", default="logreg")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        sys.exit(f"error: {a.data} is not a folder (Caltech-101 is looked for in ../shared)")
    cs = CodeSet(generate_codes(a.data, a.backbone, cache_dir=a.cache_dir, exclude=LEFT_OUT)[0])
    X, y, split = cs.X, np.asarray(cs.y), np.asarray(cs.split)
    test = split == TEST
    print(f"{len(y)} images of {len(cs.class_names)} classes, {int(test.sum())} in the test part; codes of "
          f"{X.shape[1]} values from {cs.path}; head {a.head}; {a.seeds} seed(s)", flush=True)
    times = []
    for k in a.shots:
        results = []
        for seed in range(a.seeds):
            rng = np.random.default_rng([seed, k])
            labelled = np.zeros(len(y), bool)
            for c in range(len(cs.class_names)):
                pool = np.flatnonzero(~test & (y == c))
                labelled[rng.choice(pool, min(k, len(pool)), replace=False)] = True
            unlabelled = ~test & ~labelled
            results.append(one(X, y, test, labelled, unlabelled, a.head, seed))
            times.append(results[-1][3:])
        alone, semi = (np.array([r[i] for r in results]) for i in (0, 1))
        gain = 100 * (semi - alone)
        print(f"{k}-shot: labelled only {100 * alone.mean():.1f}%, with the unlabelled images {100 * semi.mean():.1f}% "
              f"({gain.mean():+.1f}; spread {np.ptp(gain):.1f} over {a.seeds} seeds; unlabelled images chosen in "
              f"{sum(r[2] for r in results)} of {a.seeds})", flush=True)
    t_alone, t_semi = (np.mean([t[i] for t in times]) for i in (0, 1))
    print(f"one training: labelled only {t_alone:.1f} s, with the unlabelled images {t_semi:.1f} s "
          f"({t_semi / max(t_alone, 1e-9):.0f}x)")


if __name__ == "__main__":
    main()
