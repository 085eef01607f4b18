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
from pipeline.heads import linear_probe

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


def _pool_proba(X_lab, y_lab, X_pool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A single-label set's class probabilities of each pool image (a logistic regression on the
    labelled codes, standardized), and the classes of its columns."""
    clf = linear_probe(0.1, standardize=True, max_iter=300, seed=seed).fit(X_lab, y_lab)
    return clf.predict_proba(X_pool), clf.classes_


def _uncertainty(X_lab, y_lab, X_pool, multi_label: bool, seed: int) -> np.ndarray:
    """The gap between the two most probable classes of each pool image (multi-label: the
    distance of its least certain label from 0.5, doubled): smaller is less certain."""
    if multi_label:
        keep = (y_lab.min(0) != y_lab.max(0))  # labels both present and absent among the labelled
        if not keep.any():
            return np.ones(len(X_pool))
        clf = linear_probe(0.1, standardize=True, multi_label=True, max_iter=300, seed=seed).fit(X_lab, y_lab[:, keep])
        return (2 * np.abs(clf.predict_proba(X_pool) - 0.5)).min(1)
    p = np.sort(_pool_proba(X_lab, y_lab, X_pool, seed)[0], axis=1)
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


GROUP_SIZE = 12  # images shown as one group of look-alikes (a batch's size)
REACH = 1.5      # a group reaches this many times the typical distance of an image to its N-th nearest


@dataclasses.dataclass(frozen=True)
class Group:
    """Look-alikes to label with one key: rows of the code set (the densest image first, then its
    nearest neighbours), and the class the current model suggests for them (None before it can)."""

    rows: np.ndarray
    suggested: int | None


def select_group(codes, n: int = GROUP_SIZE, seed: int = 0, exclude=()) -> Group:
    """Up to ``n`` unlabelled images of a single-label set that the codes say belong together:
    the pool image whose ``n`` nearest pool neighbours are nearest (the densest region left: as
    coverage, groups taken one after another cover the pool, dense regions first), with those of
    its neighbours the current model gives the same class (all of them before it can learn),
    nearest first. ``exclude``: rows not to choose."""
    from sklearn.neighbors import NearestNeighbors

    if codes.multi_label:
        raise UserError("groups of look-alikes take one class each: label a multi-label set one image at a time")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError("n", f"must be a whole number of at least 1 (not {n!r})")
    pool = np.setdiff1d(np.flatnonzero(codes.split == UNLABELLED), np.asarray(list(exclude), np.int64))
    if not len(pool):
        raise UserError(f"{codes.path}: no unlabelled image left to choose from (every image has a label)")
    labelled = np.flatnonzero(codes.split != UNLABELLED)
    # the geometry of the whole set (not of what is left of the pool: the same scale every time)
    Z = _reduced(codes.rows(np.ones(len(codes), bool)), seed)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    Z_pool = Z[pool]
    y = np.asarray(codes.y)
    predicted = suggested = None
    if len(labelled) and len(np.unique(y[labelled])) >= 2:
        # (the labelling app's suggestion model: what the person is shown for each image)
        model = linear_probe().fit(Z[labelled], y[labelled])
        predicted = model.predict(Z_pool)
    k = int(min(n, len(pool)))
    dist, near = NearestNeighbors(n_neighbors=k).fit(Z_pool).kneighbors(Z_pool)
    spread = dist.mean(1)
    if predicted is not None:
        # the class with the fewest labels among those the model gives the pool first (the large
        # classes' dense regions would otherwise take every group), then its densest image
        counts = np.bincount(y[labelled], minlength=int(max(y.max(), predicted.max())) + 1)
        spread = np.where(counts[predicted] == counts[predicted].min(), spread, np.inf)
    centre = int(np.argmin(spread))  # the densest pool image (of the class with the fewest labels)
    # no farther from it than 1.5 times the data set's typical radius of a group (the distance of an
    # image to its k-th nearest image, on a sample): the last, scattered images of a pool make groups
    # of their own, not one of strangers
    sample = np.random.default_rng(seed).permutation(len(Z))[:2000]
    typical = NearestNeighbors(n_neighbors=int(min(k + 1, len(sample)))).fit(Z[sample]).kneighbors(Z[sample])[0]
    reach = REACH * float(np.median(typical[:, -1]))
    around, far = near[centre], dist[centre]
    if predicted is not None:
        suggested = int(predicted[centre])
        # the nearest pool images the model puts in the centre's class (more than k looked at)
        far, around = NearestNeighbors(n_neighbors=int(min(len(pool), 4 * k))).fit(Z_pool).kneighbors(Z_pool[[centre]])
        far, around = far[0], around[0]
        same = predicted[around] == suggested
        far, around = far[same], around[same]
    members = around[(far <= reach) | (around == centre)][:k]
    return Group(pool[members], suggested)
