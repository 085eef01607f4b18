"""The standard linear-probe protocol on Caltech-101 (Kornblith et al. 2019, SimCLR, DINOv2).

    python benchmarks/bench_protocol.py [--data ../shared/data/caltech101/101_ObjectCategories] [--draws 3]

All 102 folders (BACKGROUND_Google is a class), 30 random training images per class, all the
rest for testing, mean per-class accuracy, L2-regularized logistic regression (``LogRegHead``:
C chosen on 10% of the training images held out, then refit on all of them). Mean +- std over
``--draws`` random draws, for each offline backbone, joined code sets, and flip-averaged codes,
each with images squashed to the square input size (stage 1's default, ``--resize squash``) and
resized and centre-cropped (``--resize crop``, as the protocol's papers do).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def draw(y: np.ndarray, n_train: int, seed: int) -> np.ndarray:
    """Boolean mask of ``n_train`` random training images per class."""
    train = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        train[np.random.default_rng([seed, int(c)]).choice(idx, n_train, replace=False)] = True
    return train


def evaluate(cs, draws: int, n_train: int) -> tuple[list[float], list[tuple[float, float]], float]:
    """Mean per-class accuracy of each draw, its 95% interval (stratified bootstrap over the
    draw's test images) and the seconds of a draw's fit."""
    from sklearn.metrics import balanced_accuracy_score

    from pipeline.heads import LogRegHead
    from pipeline.reports import mean_per_class_interval
    scores, intervals, seconds = [], [], 0.0
    X = cs.X
    for d in range(draws):
        train = draw(cs.y, n_train, d)
        t0 = time.perf_counter()
        head = LogRegHead(seed=d).fit(X[train], cs.y[train])
        pred = head.predict(X[~train])
        seconds += time.perf_counter() - t0
        scores.append(float(balanced_accuracy_score(cs.y[~train], pred)))
        intervals.append(mean_per_class_interval(cs.y[~train], pred))
    return scores, intervals, seconds / draws


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/caltech101/101_ObjectCategories")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--n-train", type=int, default=30)
    p.add_argument("--no-flip", action="store_true", help="leave out the flip-averaged codes")
    p.add_argument("--resize", nargs="+", default=["squash", "crop"], choices=("squash", "crop"),
                   help="how images are made square (both by default)")
    a = p.parse_args()
    if not a.data.is_dir():
        sys.exit(f"no data at {a.data}")
    from pipeline.codes import CodeSet, JoinedCodeSet, generate_codes

    ttas = ("none",) if a.no_flip else ("none", "flip")
    variants = [(resize, tta) for resize in a.resize for tta in ttas]
    paths = {}
    for resize, tta in variants:
        for bb in BACKBONES:
            stats = {}
            paths[bb, resize, tta] = generate_codes(a.data, backbone=bb, cache_dir=a.cache_dir, tta=tta, resize=resize,
                                                    progress=False, stats=stats)[0]
            if stats:
                print(f"stage 1 {bb} resize={resize} tta={tta}: {stats['images']} images in {stats['seconds']:.0f} s",
                      flush=True)
    rows = []
    for resize, tta in variants:
        sets = [((bb.replace("efficientnet_", ""),), [paths[bb, resize, tta]]) for bb in BACKBONES]
        sets += [(("lite0", "lite1"), [paths[b, resize, tta] for b in BACKBONES[:2]]),
                 (("lite0", "lite1", "lite2"), [paths[b, resize, tta] for b in BACKBONES])]
        for names, files in sets:
            cs = CodeSet(files[0]) if len(files) == 1 else JoinedCodeSet(files)
            scores, intervals, seconds = evaluate(cs, a.draws, a.n_train)
            rows.append(("+".join(names), resize, tta, cs.shape[1], scores, intervals, seconds))
            print(f"{'+'.join(names):20s} resize={resize:6s} tta={tta:4s} {cs.shape[1]:5d} values: "
                  f"{100 * np.mean(scores):.2f} +- {100 * np.std(scores):.2f}, 95% CI of a draw "
                  f"[{100 * intervals[0][0]:.2f}, {100 * intervals[0][1]:.2f}]  ({seconds:.0f} s per draw)", flush=True)
    print(f"\nCaltech-101, 102 classes, {a.n_train} training images per class, the rest for testing, "
          f"mean per-class accuracy over {a.draws} draws, logistic regression (C by validation on the training images)")
    print("(95% CI: a stratified bootstrap of one draw's test images, per draw; the spread over draws is the +-)")
    print("| codes | images made square by | flip-averaged | values | mean per-class accuracy | per draw (95% CI) "
          "| fit s per draw |")
    print("|---|---|---|---|---|---|---|")
    for names, resize, tta, dim, scores, intervals, seconds in rows:
        per_draw = ", ".join(f"{100 * s:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]" for s, (lo, hi) in zip(scores, intervals))
        print(f"| {names} | {'centre crop' if resize == 'crop' else 'squashing'} | {'yes' if tta == 'flip' else 'no'} "
              f"| {dim} | {100 * np.mean(scores):.2f} +- {100 * np.std(scores):.2f} | {per_draw} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
