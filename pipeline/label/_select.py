"""The next images to label, from the cached codes of a set's unlabelled images (its pool).

- ``random``: a seeded draw from the pool.
- ``coverage``: typical images of the dense regions of the pool: its codes (unit length, reduced
  to their leading principal components) cut into ``n`` k-means clusters, the image nearest each
  centre, largest clusters first. For the first labels, where a model's uncertainty is known to
  pick worse than random (it has seen too little to be uncertain about the right things).
- ``margin``: the images a logistic regression trained on the labelled codes is least sure of
  (the smallest gap between its two most probable classes; multi-label: a label closest to 0.5).
- ``auto``: coverage while fewer than three images per class are labelled on average, then margin
  with diversity: the ``5 n`` least certain images cut into ``n`` clusters, the one nearest each
  centre (typical of a region the model is unsure about, not its single most doubtful image, which
  is more often an odd one).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.data import UNLABELLED
from pipeline.errors import ParameterError, UserError

STRATEGIES = ("auto", "random", "margin", "coverage")
COMPONENTS = 64     # principal components the codes are reduced to for clustering and the model
CANDIDATES = 5      # auto: candidates per chosen image among the least certain
SWITCH_AT = 3       # auto: coverage until this many labels per class on average, then margin


@dataclasses.dataclass(frozen=True)
class Choice:
    """The images chosen, best first: rows of the code set, and the strategy that chose them
    (``auto`` says which of its two it used)."""

    rows: np.ndarray
    strategy: str
    scores: np.ndarray | None = None  # margin: the gap of each chosen image (smaller: less certain)


def _reduced(X: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    dims = int(min(COMPONENTS, Z.shape[1], max(1, len(Z) - 1)))
    return PCA(dims, svd_solver="randomized", random_state=seed).fit_transform(Z) if dims < Z.shape[1] else Z


def _cluster_representatives(Z: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of one member of each of ``k`` k-means clusters of ``Z``: the one nearest its centre,
    clusters largest first."""
    from sklearn.cluster import KMeans

    k = min(k, len(Z))
    km = KMeans(k, n_init=3, random_state=seed).fit(Z)
    dist = np.linalg.norm(Z - km.cluster_centers_[km.labels_], axis=1)
    sizes = np.bincount(km.labels_, minlength=k)
    picks = [(-sizes[c], int(members[np.argmin(dist[members])]))
             for c in range(k) if len(members := np.flatnonzero(km.labels_ == c))]
    return np.array([i for _, i in sorted(picks)], np.int64)


def _uncertainty(X_lab, y_lab, X_pool, multi_label: bool, seed: int) -> np.ndarray:
    """The gap between the two most probable classes of each pool image (multi-label: the
    distance of its least certain label from 0.5, doubled): smaller is less certain."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=0.1, max_iter=300, random_state=seed)
    if multi_label:
        keep = (y_lab.min(0) != y_lab.max(0))  # labels both present and absent among the labelled
        if not keep.any():
            return np.ones(len(X_pool))
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(model)).fit(X_lab, y_lab[:, keep])
        return (2 * np.abs(clf.predict_proba(X_pool) - 0.5)).min(1)
    clf = make_pipeline(StandardScaler(), model).fit(X_lab, y_lab)
    p = np.sort(clf.predict_proba(X_pool), axis=1)
    return p[:, -1] - p[:, -2]


def select_next(codes, n: int, strategy: str = "auto", seed: int = 0, exclude=()) -> Choice:
    """The ``n`` unlabelled images of ``codes`` (a :class:`~pipeline.codes.CodeSet`) to label
    next, chosen by ``strategy`` (one of :data:`STRATEGIES`); ``exclude``: rows not to choose
    (skipped, or already chosen for another batch). Deterministic for a seed."""
    if strategy not in STRATEGIES:
        raise ParameterError("strategy", f"{strategy}: choose one of {', '.join(STRATEGIES)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError("n", f"must be a whole number of at least 1 (not {n!r})")
    pool = np.setdiff1d(np.flatnonzero(codes.split == UNLABELLED), np.asarray(list(exclude), np.int64))
    if not len(pool):
        raise UserError(f"{codes.path}: no unlabelled image left to choose from (every image has a label)")
    n = int(min(n, len(pool)))
    labelled = np.flatnonzero(codes.split != UNLABELLED)
    y = np.asarray(codes.y)
    if codes.multi_label:
        enough = len(labelled) >= 2 and (y[labelled].min(0) != y[labelled].max(0)).any()
        few = len(labelled) < SWITCH_AT * y.shape[1]
    else:
        counts = np.bincount(y[labelled], minlength=len(codes.class_names)) if len(labelled) else np.zeros(1)
        enough = (counts > 0).sum() >= 2
        # fewer than three labels per class on average (of two, three and four the best in
        # bench_active); not "some class has fewer than three": coverage may leave a rare class at
        # one label for long, and margin then does better
        few = len(labelled) < SWITCH_AT * (counts > 0).sum() if enough else True
    if strategy == "auto":
        strategy_used = "coverage" if few or not enough else "margin"
    else:
        strategy_used = strategy
    if strategy_used == "margin" and not enough:
        raise UserError("margin needs labelled images of at least two classes (use coverage or random first)")
    rng = np.random.default_rng(seed)
    if strategy_used == "random":
        return Choice(rng.permutation(pool)[:n], "random")
    rows = np.concatenate([labelled, pool])
    Z = _reduced(codes.rows(np.isin(np.arange(len(codes)), rows)), seed)
    where = {r: i for i, r in enumerate(np.sort(rows))}  # rows() returns them in file order
    Z_pool = Z[[where[r] for r in pool]]
    if strategy_used == "coverage":
        return Choice(pool[_cluster_representatives(Z_pool, n, seed)], "coverage" if strategy != "auto" else
                      "auto (coverage)")
    Z_lab = Z[[where[r] for r in labelled]]
    gap = _uncertainty(Z_lab, y[labelled], Z_pool, codes.multi_label, seed)
    if strategy == "margin":
        order = np.argsort(gap, kind="stable")[:n]
        return Choice(pool[order], "margin", gap[order])
    candidates = np.argsort(gap, kind="stable")[:CANDIDATES * n]
    picked = candidates[_cluster_representatives(Z_pool[candidates], n, seed)]
    picked = picked[np.argsort(gap[picked], kind="stable")]
    return Choice(pool[picked], "auto (margin with diversity)", gap[picked])
