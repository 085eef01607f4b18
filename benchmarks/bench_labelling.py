"""Keystrokes: labelling look-alikes a group at a time against one image per key.

    python benchmarks/bench_labelling.py [--data FOLDER] [--classes K] [--seeds S] [--group-size N]
                                         [--backbone efficientnet_lite0] [--cache-dir cache]

On the first K object classes of ``--data`` in name order (Caltech-101 from ../shared by default;
``BACKGROUND_Google``, a clutter class, and ``Faces_easy``, a second cropping of ``Faces``, left
out), with the head, test split and starting labels of ``bench_active.py`` (a fixed stratified 30%
tested, one drawn label per class to start, a logistic regression on the labels so far scored on
the test part), a simulated person who knows the true labels labels:

- **one at a time**, as the app does by default (batches of K chosen by ``auto``): one key per
  image (Enter on a right suggestion, a class key otherwise);
- **in groups** of at most N look-alikes (:func:`pipeline.label.select_group`): the group's images
  of its most common true class are kept, one key for each image removed from the group (it goes
  back to the pool), one more when the suggested class is not that class, and one key labels the
  rest.

For the accuracies one-at-a-time labelling reaches at 5 and 10 labels per class (on the mean curve
over the seeds), one line each:

    groups vs one at a time: G keystrokes vs O to reach A% (R.Rx fewer)

G interpolated on the groups' mean curve of accuracy against keystrokes (``never`` where it does
not get there within the budget). Starting labels count as one key each in both.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_active import COMPONENTS, Simulated, accuracy, labels_for, mean_curve, simulate
from common import CALTECH, ROOT

from pipeline.codes import CodeSet, generate_codes
from pipeline.label import GROUP_SIZE, select_group

LEFT_OUT = ("BACKGROUND_Google", "Faces_easy")
POINTS = (5, 10)


def simulate_groups(X, y, class_names, seed, size, budget) -> tuple[list[tuple[int, float]], dict]:
    """(keystrokes, test accuracy) after the first labels and after every group, and counts."""
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split

    K = len(class_names)
    rows = np.arange(len(y))
    pool_rows, test = train_test_split(rows, test_size=0.3, stratify=y, random_state=seed)  # as bench_active
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    X = PCA(min(COMPONENTS, X.shape[1]), svd_solver="randomized", random_state=seed).fit(X[pool_rows]).transform(X)
    Xp, yp = X[pool_rows], y[pool_rows]
    sim = Simulated(Xp, yp, class_names, Path("simulated"))
    rng = np.random.default_rng(seed)
    sim.label([rng.choice(np.flatnonzero(yp == c)) for c in range(K)])  # the same starting labels
    keys = K
    curve = [(keys, accuracy(X, y, pool_rows[sim.split == 0], test))]
    counts = {"groups": 0, "labels": K, "removed": 0, "wrong_suggestions": 0}
    while keys < budget * K and (sim.split != 0).any():
        group = select_group(sim, size, seed=seed * 1000 + counts["groups"])
        truth = yp[group.rows]
        keep = np.bincount(truth).argmax()  # the person keeps the group's most common class
        removed = int((truth != keep).sum())
        wrong = group.suggested != keep
        keys += 1 + removed + int(wrong)
        sim.label(group.rows[truth == keep])
        counts["groups"] += 1
        counts["labels"] += int((truth == keep).sum())
        counts["removed"] += removed
        counts["wrong_suggestions"] += int(wrong)
        curve.append((keys, accuracy(X, y, pool_rows[sim.split == 0], test)))
    return curve, counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(CALTECH))
    p.add_argument("--classes", type=int, default=20, help="the first K object classes in name order")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--group-size", type=int, default=GROUP_SIZE)
    p.add_argument("--per-class-budget", type=int, default=12, help="labels (keystrokes) per class to stop at")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        sys.exit(f"error: {a.data} is not a folder (Caltech-101 is looked for in ../shared)")
    path = generate_codes(a.data, a.backbone, weights=a.weights, image_size=a.image_size, cache_dir=a.cache_dir)[0]
    cs = CodeSet(path)
    objects = [c for c in sorted(cs.class_names) if c not in LEFT_OUT][: a.classes]
    index = {c: i for i, c in enumerate(objects)}
    keep = cs.labelled & np.isin(np.asarray(cs.class_names, object)[np.maximum(cs.y, 0)], objects)
    X = cs.rows(keep).astype(np.float32)
    y = np.array([index[cs.class_names[c]] for c in np.asarray(cs.y)[keep]])
    print(f"{len(y)} images of {len(objects)} classes ({objects[0]} ... {objects[-1]}), codes of {X.shape[1]} values "
          f"from {path}; {a.seeds} seed(s); groups of at most {a.group_size}")
    t0 = time.perf_counter()
    single = [simulate(X, y, objects, "auto", seed, a.per_class_budget) for seed in range(a.seeds)]
    t1 = time.perf_counter()
    runs = [simulate_groups(X, y, objects, seed, a.group_size, a.per_class_budget) for seed in range(a.seeds)]
    t2 = time.perf_counter()
    grouped = mean_curve([c for c, _ in runs])
    one = mean_curve(single)
    for c, counts in runs:
        print(f"  groups, a seed: {counts['groups']} groups, {counts['labels']} labels, {counts['removed']} images "
              f"removed from groups, {counts['wrong_suggestions']} wrong suggestions; {c[-1][0]} keystrokes, "
              f"accuracy {c[-1][1]:.4f}")
    print(f"  ({t1 - t0:.0f} s one at a time, {t2 - t1:.0f} s in groups)")
    for r in POINTS:
        O = r * len(objects)
        if O > one[-1, 0]:
            continue
        target = float(np.interp(O, one[:, 0], one[:, 1]))
        G = labels_for(grouped, target)
        shown = "never" if G is None else f"{G:.0f}"
        print(f"groups vs one at a time: {shown} keystrokes vs {O} to reach {100 * target:.1f}%"
              + ("" if G is None else f" ({O / G:.1f}x fewer)"))


if __name__ == "__main__":
    main()
