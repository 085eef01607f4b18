"""Data-set audit from cached codes: near-duplicates, likely label errors, outliers.

Everything is read from one code set (no image is decoded except the thumbnails of the findings):

- **Near-duplicates**: cosine similarity of the codes. Every image's nearest neighbours are found
  by exact search in chunks of rows (memory bounded by ``chunk_bytes`` whatever the number of
  images). Two rules, because two images of one class are similar by nature while two images of
  different classes should not be: a pair within a class is reported at ``threshold`` or more; an
  image's nearest neighbour in another class at ``cross_threshold`` or more (the same photograph
  under two labels, or two classes that overlap). Pairs whose images are in different parts of
  the split are marked as leakage.
- **Label errors**: out-of-fold predicted probabilities (logistic regression on the leading
  principal components of the unit-length codes, ``cross_val_predict``), then confident learning
  (``cleanlab.filter.find_label_issues``), ranked by the probability of the given label.
- **Outliers**: the images farthest from their nearest neighbours (mean cosine distance to the
  ``neighbours`` nearest), the top ``outlier_fraction``.

Writes ``duplicates.csv``, ``label_issues.csv``, ``outliers.csv`` (relative paths, as in the code
set), ``audit.json`` and ``report.html`` (a gallery of each finding) in ``runs/<time>-<backbone>-audit/``.
"""
from __future__ import annotations

import collections
import collections.abc
import csv
import dataclasses
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, parallel_config
from tqdm import tqdm

from pipeline._files import writable_folder
from pipeline._records import Run, assembled_run
from pipeline.codes import CodeView, open_code_sets
from pipeline.data import SPLIT_NAMES
from pipeline.errors import ParameterError, UserError, check_seed, with_positionals
from pipeline.heads import linear_probe
from pipeline.quality._neighbours import (CHUNK_BYTES, EXACT_LIMIT, SEARCHES, Neighbours, approximate,
                                         nearest_neighbours)
from pipeline.reports import esc, facts, page, section, shot, table, to_cell

logger = logging.getLogger(__name__)

# Deferred on purpose: scikit-learn, cleanlab are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.

THRESHOLD = 0.95        # within a class: near-copies only
CROSS_THRESHOLD = 0.80  # across classes (calibrated on EfficientNet-Lite top codes: see README)
NEIGHBOURS = 10
FOLDS = 5
COMPONENTS = 256        # principal components the label model sees (and approximate neighbours)
SAMPLE = 50_000         # images whose codes give the principal directions at scale
LABEL_C = 10.0          # its inverse regularization (chosen by out-of-fold accuracy on Caltech-101 and subsets)
LABEL_CAP = 50_000      # training images per fold of the label model (see out_of_fold)
OUTLIER_FRACTION = 0.01
GALLERY = 48


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    kind: str  # "within class" or "across classes"
    a: int
    b: int
    similarity: float
    tier: str = "copy"  # how likely one photograph: "copy", "mutual", "look-alike" (TIERS)


# Cross-class pairs ranked by how likely they are one photograph under two labels, not by a
# threshold alone (a fine-grained set has many natural look-alikes at any threshold):
# - copy: cosine >= COPY, or higher where one class's images are that close anyway (exact and
#   near-exact copies; every within-class pair reported is one; see copy_threshold);
# - mutual: each image is the other's nearest image of another class (on Caltech-101's Lite0
#   codes 273 pairs, 246 of them Faces/Faces_easy croppings of one photograph; copies and mutual
#   pairs one photograph in 92% by eye, against 65% of all 508 at 0.80: docs/report-and-audit.md);
# - look-alike: the rest (ketch/schooner, rose/tulip), listed last.
TIERS = ("copy", "mutual", "look-alike")
LOOK_ALIKE = TIERS.index("look-alike")
KINDS = ("within class", "across classes")  # a pair's kind by whether its images' classes differ
COPY = 0.97
COPY_QUANTILE = 90  # a copy across classes is as close as 9 in 10 images' nearest own-class image


class Pairs(collections.abc.Sequence):
    """Pairs of images as columns, most worth a look first: a million pairs are arrays, not a
    million records. Items are :class:`Pair`; a slice or a boolean mask gives ``Pairs``."""

    def __init__(self, a, b, similarity, across, tier):
        self.a, self.b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        self.similarity = np.asarray(similarity, np.float64)
        self.across, self.tier = np.asarray(across, bool), np.asarray(tier, np.int8)  # tier: index in TIERS

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i):
        if isinstance(i, slice) or np.ndim(i):
            return Pairs(self.a[i], self.b[i], self.similarity[i], self.across[i], self.tier[i])
        return Pair(KINDS[int(self.across[i])], int(self.a[i]), int(self.b[i]),
                    float(self.similarity[i]), TIERS[self.tier[i]])

    def __eq__(self, other) -> bool:
        return isinstance(other, collections.abc.Sequence) and list(self) == list(other)


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32, in place where X is already float32."""
    Z = np.asarray(X, np.float32)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    return Z


def copy_threshold(nb: Neighbours, y: np.ndarray) -> float:
    """The cosine from which a pair across classes counts as one photograph (tier ``copy``):
    ``COPY``, or the similarity of an image to its nearest own-class image for 9 in 10 images
    where that is higher. Tiny or uniform images are all close: on scikit-learn's handwritten
    digits (8 x 8 scans, upscaled) half the images have an own-class neighbour at 0.985, and
    1,379 pairs of different digits were "copies" at 0.97."""
    found = nb.index >= 0
    own = found & (y[np.where(found, nb.index, 0)] == y[:, None])
    nearest_own = np.where(own, nb.similarity, -np.inf).max(1)
    nearest_own = nearest_own[np.isfinite(nearest_own)]
    return float(max(COPY, np.percentile(nearest_own, COPY_QUANTILE))) if len(nearest_own) else COPY


def duplicate_pairs(nb: Neighbours, y: np.ndarray, threshold: float = THRESHOLD,
                    cross_threshold: float = CROSS_THRESHOLD, cosines=None, copy: float | None = None) -> Pairs:
    """Within-class pairs at ``threshold`` or more among the neighbours; each image with its
    nearest other-class image at ``cross_threshold`` or more. Each pair once, most similar first.
    ``cosines(a, b)``, if given, measures the found pairs again (the codes themselves where the
    neighbours were found on reduced ones); pairs below their threshold then are dropped. Where
    it returns None, the similarities the neighbours were found with stand."""
    low = min(threshold, cross_threshold)
    rows, cols = np.nonzero(nb.similarity >= threshold)
    j = nb.index[rows, cols]
    within = y[rows] == y[j]
    other = np.flatnonzero((nb.other_index >= 0) & (nb.other_similarity >= low))
    a = np.concatenate([rows[within], other])
    b = np.concatenate([j[within], nb.other_index[other]])
    sim = np.concatenate([nb.similarity[rows, cols][within], nb.other_similarity[other]])
    a, b = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-sim, b, a))  # each pair once, at its highest similarity
    a, b, sim = a[order], b[order], sim[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, sim = a[first], b[first], sim[first].astype(np.float64)
    across = y[a] != y[b]
    measured = cosines(a, b) if cosines is not None and len(a) else None  # None: too many to read again
    if measured is not None:
        sim = np.asarray(measured, np.float64)
        keep = sim >= np.where(across, low, threshold)
        a, b, sim, across = a[keep], b[keep], sim[keep], across[keep]
    mutual = (nb.other_index[a] == b) & (nb.other_index[b] == a)
    copy = copy_threshold(nb, y) if copy is None else copy  # given: found by the caller already
    tier = np.where(~across | (sim >= copy), 0, np.where(mutual, 1, 2))
    order = np.lexsort((b, a, -sim, tier))
    return Pairs(a[order], b[order], sim[order], across[order], tier[order])


def reduced_unit_codes(cs, components: int = COMPONENTS, sample: int = SAMPLE, seed: int = 0,
                       progress: bool = True) -> np.ndarray:
    """The unit-length codes projected on their ``components`` leading principal directions
    (not centred: inner products are what is kept), then unit length again; streamed from the
    code set a block at a time, the directions found on a random ``sample`` of the images. Memory:
    (N, components) float32, not the (N, D) of the codes."""
    from sklearn.utils.extmath import randomized_svd

    n, d = cs.shape
    if d <= components:
        return unit_rows(cs.rows())
    rng = np.random.default_rng(seed)
    pick = np.zeros(n, bool)
    pick[rng.choice(n, min(n, sample), replace=False)] = True
    _, _, Vt = randomized_svd(unit_rows(cs.rows(pick)), components, random_state=seed)
    V = np.ascontiguousarray(Vt.T, np.float32)
    out = np.empty((n, components), np.float32)
    bar = tqdm(total=n, desc="reducing", unit="code", disable=not progress, leave=False)
    for sel, codes in cs.blocks():
        out[sel] = unit_rows(codes) @ V
        bar.update(len(sel))
    bar.close()
    return unit_rows(out)


def exact_cosines(cs, a: np.ndarray, b: np.ndarray, budget_bytes: int = CHUNK_BYTES):
    """Cosine similarities of the pairs (a[i], b[i]) on the codes themselves, read from the code
    set; None when their images' codes would take more than ``budget_bytes``."""
    need = np.unique(np.concatenate([a, b]))
    if len(need) * cs.shape[1] * 4 > budget_bytes:
        logger.info(f"note: the {len(a)} pairs found are {len(need)} images, more than "
                    f"{budget_bytes >> 20} MB of codes: their similarities are those of the reduced codes")
        return None
    mask = np.zeros(len(cs), bool)
    mask[need] = True
    F = unit_rows(cs.rows(mask))  # rows in the order of need
    a, b = np.searchsorted(need, a), np.searchsorted(need, b)
    out = np.empty(len(a), np.float32)
    step = max(1, budget_bytes // (8 * F.shape[1] * 4))  # a pair's two rows: bounded temporaries
    for s in range(0, len(a), step):
        out[s:s + step] = np.einsum("ij,ij->i", F[a[s:s + step]], F[b[s:s + step]])
    return out


def label_features(Z: np.ndarray, components: int = COMPONENTS, seed: int = 0) -> np.ndarray:
    """What the label model sees: the leading principal components of the codes; codes of
    ``components`` values or fewer (reduced already) as they are: a rotation changes nothing for an
    L2-regularised logistic regression, whose intercept takes the centring."""
    if Z.shape[1] <= components:
        return np.asarray(Z, np.float32)
    from sklearn.decomposition import PCA
    dims = int(min(components, len(Z) - 1))
    return PCA(dims, svd_solver="randomized", random_state=seed).fit_transform(Z).astype(np.float32)


def out_of_fold(model, P: np.ndarray, target: np.ndarray, splits, columns: int, cap: int = LABEL_CAP,
                seed: int = 0, n_jobs: int | None = None) -> np.ndarray:
    """Each image's probabilities (``columns`` of them) from ``model`` fitted on the other folds of
    ``splits``: on at most ``cap`` of their images, drawn at random, so that the label model's cost
    stops growing with the data set (predicting grows linearly). Folds fitted in threads, not
    processes: no worker process outlives the command (it would hold its output pipe open) and
    the codes are not copied."""
    from sklearn.base import clone

    rng = np.random.default_rng(seed)
    folds = [(np.sort(rng.choice(train, cap, replace=False)) if len(train) > cap else train, test)
             for train, test in splits]

    def fold(train, test):
        fitted = clone(model).fit(P[train], target[train])
        return test, fitted.classes_, fitted.predict_proba(P[test])

    out = np.zeros((len(P), columns))
    with warnings.catch_warnings(), parallel_config(backend="threading"):
        warnings.simplefilter("ignore")  # classes smaller than the folds; lbfgs stopping at max_iter
        for test, classes, proba in Parallel(n_jobs)(delayed(fold)(tr, te) for tr, te in folds):
            out[np.ix_(test, classes)] = proba  # a class no training image had: probability 0
    return out


def out_of_fold_probabilities(Z: np.ndarray, y: np.ndarray, n_classes: int, folds: int = FOLDS,
                              components: int = COMPONENTS, C: float = LABEL_C, seed: int = 0,
                              n_jobs: int | None = None) -> np.ndarray:
    """Each image's class probabilities from a model that did not see it: logistic regression on
    the leading principal components (fitted on all images: no label is used), ``folds``-fold
    stratified cross-validation. Components are not standardized: scaled up, the many small ones
    are noise the model overfits (out-of-fold accuracy 89% instead of 96% on 500 images)."""

    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    if counts.max() < 2:  # no class has two images: no model can be trained without the image it judges
        return None
    folds = int(min(folds, max(2, counts[counts > 0].max())))
    P = label_features(Z, components, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes smaller than the folds
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(P, y))
    return out_of_fold(linear_probe(C, max_iter=300), P, y, splits, n_classes, seed=seed, n_jobs=n_jobs)


def out_of_fold_label_probabilities(Z: np.ndarray, Y: np.ndarray, folds: int = FOLDS, components: int = COMPONENTS,
                                    C: float = LABEL_C, seed: int = 0) -> np.ndarray:
    """Multi-label: each image's probability of each label from one-vs-rest logistic regression
    on the leading principal components that did not see it (``folds``-fold cross-validation)."""
    from sklearn.model_selection import KFold

    P = label_features(Z, components, seed)
    splits = KFold(min(folds, len(Z)), shuffle=True, random_state=seed).split(P)
    return out_of_fold(linear_probe(C, multi_label=True, max_iter=300), P, Y.astype(int), splits,
                       Y.shape[1], seed=seed)


def label_sets(targets: np.ndarray, class_names) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """The distinct label sets of 0/1 ``targets``, each standing for a class ("cat|dog" a class
    of its own): (the sets as rows of booleans, each image's set, each set's labels)."""
    sets, y = np.unique(np.asarray(targets) > 0, axis=0, return_inverse=True)
    return sets, y.reshape(-1), [[class_names[j] for j in np.flatnonzero(s)] for s in sets]


def set_name(labels: list[str]) -> str:
    """A label set's name: its labels joined by "|"."""
    return "|".join(labels) or "(no label)"


def label_set_view(cs):
    """A multi-label code set seen as single-label over its label sets, for the steps that
    compare labels: duplicates (same set: within class) and reports."""
    sets, y, labels = label_sets(cs.y, cs.class_names)
    view = CodeView(cs, np.ones(len(cs), bool))
    view.class_names = [set_name(x) for x in labels]
    view.y, view.targets, view.sets = y, np.asarray(cs.y) > 0, sets
    return view


def set_probabilities(label_proba: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """The probability of each label set (rows of ``sets``) when labels are independent with the
    given probabilities, normalised over the sets of the code set."""
    p = np.clip(label_proba, 1e-6, 1 - 1e-6)
    log = np.log(p) @ sets.T.astype(float) + np.log(1 - p) @ (1 - sets.T.astype(float))
    log -= log.max(1, keepdims=True)
    e = np.exp(log)
    return e / e.sum(1, keepdims=True)


def multi_label_issues(targets: np.ndarray, label_proba: np.ndarray, label_names=None) -> np.ndarray:
    """Likely label errors of a multi-label set by confident learning (cleanlab, multi_label).
    A label on every image, or on none, cannot be wrong in a way confident learning sees (and
    cleanlab refuses it): it is left out of the search, with a note."""
    from cleanlab.filter import find_label_issues

    targets = np.asarray(targets) > 0
    varies = targets.any(0) & ~targets.all(0)
    if not varies.all():
        names = [label_names[j] if label_names is not None else f"label {j}" for j in np.flatnonzero(~varies)]
        logger.info(f"note: {len(names)} label(s) on every image or on none ({', '.join(names[:3])}"
                    f"{' ...' if len(names) > 3 else ''}): not searched for label errors")
    if varies.sum() < 1:
        return np.zeros(0, np.int64)
    kept = np.flatnonzero(varies)
    labels = [np.flatnonzero(t[kept]).tolist() for t in targets]
    proba = label_proba[:, kept]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(find_label_issues(labels, proba, multi_label=True, n_jobs=1,
                                            return_indices_ranked_by="self_confidence"), np.int64)


def label_issues(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Indices of likely label errors by confident learning, the least likely given label first."""

    from cleanlab.filter import find_label_issues

    present = np.unique(y)  # cleanlab wants classes 0..K-1 all present
    remap = np.full(proba.shape[1], -1)
    remap[present] = np.arange(len(present))
    p = proba[:, present]
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # n_jobs=1: cleanlab's processes are forked from this one, whose TensorFlow and OpenVINO
        # threads may hold locks at that moment; a forked child then waits on them for ever
        return np.asarray(find_label_issues(remap[y], p, n_jobs=1, return_indices_ranked_by="self_confidence"),
                          np.int64)


def suggested_classes(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The most likely class other than the given one: what a flagged image looks like."""
    other = proba.copy()
    other[np.arange(len(y)), y] = -1.0
    return other.argmax(1)


def outlier_scores(nb: Neighbours) -> np.ndarray:
    """Mean cosine distance to the nearest neighbours: high for images unlike any other."""
    return 1.0 - nb.similarity.mean(1, dtype=np.float64)


@dataclasses.dataclass
class Findings:
    """What an audit found, as indices into the code set."""
    neighbours: Neighbours
    pairs: Pairs
    proba: np.ndarray        # out-of-fold class probabilities (N, classes)
    issues: np.ndarray       # likely label errors, the least likely given label first
    scores: np.ndarray       # outlier score of every image
    outliers: np.ndarray     # the images with the highest scores, highest first
    label_model: bool = True  # False: no class has two images, label errors not estimated
    copy: float = COPY        # the cosine from which a pair across classes is a copy (copy_threshold)


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """How the audit looks: pairs above ``threshold`` cosine (``cross_threshold`` across splits),
    ``neighbours`` per image, ``folds`` for the out-of-fold label model, the ``outlier_fraction``
    listed, the exact search's temporary memory (``chunk_bytes``), the ``seed``, and ``search``:
    exact, approximate or auto."""

    threshold: float = THRESHOLD
    cross_threshold: float = CROSS_THRESHOLD
    neighbours: int = NEIGHBOURS
    folds: int = FOLDS
    outlier_fraction: float = OUTLIER_FRACTION
    chunk_bytes: int = CHUNK_BYTES
    seed: int = 0
    search: str = "auto"


# find's parameters after ``n_classes`` when they were all positional
_FIND_ORDER = ("threshold", "cross_threshold", "neighbours", "folds", "outlier_fraction", "chunk_bytes", "seed",
               "progress", "targets", "sets", "search", "cosines")


def find(Z: np.ndarray, y: np.ndarray, n_classes: int, *later, settings: AuditSettings | None = None, progress=True,
         targets=None, sets=None, cosines=None, **given) -> Findings:
    """Every finding on the unit-length codes ``Z`` with labels ``y`` (multi-label: ``y`` the
    index of each image's label set among ``sets``, ``targets`` its labels), looked for as
    ``settings`` say (or its fields as keywords). ``cosines(a, b)`` measures the pairs found again
    (see :func:`duplicate_pairs`)."""
    given = with_positionals("find", _FIND_ORDER, later, given, before=3)
    progress, targets = given.pop("progress", progress), given.pop("targets", targets)
    sets, cosines = given.pop("sets", sets), given.pop("cosines", cosines)
    s = dataclasses.replace(settings or AuditSettings(), **given)
    threshold, cross_threshold, neighbours, folds = s.threshold, s.cross_threshold, s.neighbours, s.folds
    outlier_fraction, chunk_bytes, seed, search = s.outlier_fraction, s.chunk_bytes, s.seed, s.search
    nb = nearest_neighbours(Z, y, neighbours, chunk_bytes, progress, search=search,
                            floor=min(threshold, cross_threshold), seed=seed)
    if targets is None:
        proba = out_of_fold_probabilities(Z, y, n_classes, folds, seed=seed, n_jobs=2)
        if proba is None:  # not estimated: the given labels stand, nothing is flagged
            proba, issues = np.eye(n_classes)[y], np.zeros(0, np.int64)
        else:
            issues = label_issues(y, proba)
    else:
        label_proba = out_of_fold_label_probabilities(Z, targets, folds, seed=seed)
        proba, issues = set_probabilities(label_proba, sets), multi_label_issues(targets, label_proba)
    scores = outlier_scores(nb)
    copy = copy_threshold(nb, y)
    return Findings(nb, duplicate_pairs(nb, y, threshold, cross_threshold, cosines, copy), proba, issues, scores,
                    np.argsort(-scores, kind="stable")[:int(round(outlier_fraction * len(y)))],
                    label_model=targets is not None or np.bincount(y).max() >= 2, copy=copy)


def write_csvs(run_dir: Path, cs, f: Findings) -> None:
    """duplicates.csv, label_issues.csv and outliers.csv: one row per pair or image, paths
    relative to the data folder as in the code set; names a spreadsheet would evaluate are
    neutralised (:func:`~pipeline.reports.to_cell`)."""
    paths, classes, y, split = [to_cell(p) for p in cs.paths], [to_cell(c) for c in cs.class_names], cs.y, cs.split
    where = lambda i: SPLIT_NAMES[int(split[i])]
    tables = {
        "duplicates.csv": (["kind", "similarity", "path_a", "class_a", "split_a", "path_b", "class_b", "split_b",
                            "leakage", "tier"],
                           pair_rows(f.pairs, paths, classes, y, split)),
        "label_issues.csv": (["rank", "path", "split", "given_class", "given_probability", "suggested_class",
                              "suggested_probability"],
                             ([r, paths[i], where(i), classes[y[i]], f"{f.proba[i, y[i]]:.4f}", classes[s],
                               f"{f.proba[i, s]:.4f}"]
                              for (r, i), s in zip(enumerate(f.issues, 1), suggested_classes(f.proba, y)[f.issues]))),
        "outliers.csv": (["rank", "path", "split", "class", "score", "nearest_path", "nearest_similarity"],
                         ([r, paths[i], where(i), classes[y[i]], f"{f.scores[i]:.4f}",
                           paths[f.neighbours.index[i, 0]], f"{f.neighbours.similarity[i, 0]:.4f}"]
                          for r, i in enumerate(f.outliers, 1))),
    }
    for name, (header, rows) in tables.items():
        with open(run_dir / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)


def pair_rows(pairs: Pairs, paths, classes, y, split, chunk: int = 100_000):
    """The rows of duplicates.csv, made a chunk of pairs at a time from the columns."""
    names = list(SPLIT_NAMES)
    for s in range(0, len(pairs), chunk):
        p = pairs[s:s + chunk]
        sa, sb = split[p.a], split[p.b]
        yield from ([KINDS[x], f"{sim:.4f}", paths[a], classes[ya], names[xa], paths[b], classes[yb], names[xb],
                     "yes" if xa != xb else "no", TIERS[t]]
                    for x, sim, a, b, ya, yb, xa, xb, t in zip(
                        p.across.tolist(), p.similarity.tolist(), p.a.tolist(), p.b.tolist(), y[p.a].tolist(),
                        y[p.b].tolist(), sa.tolist(), sb.tolist(), p.tier.tolist()))


def class_pair_counts(pairs: Pairs, y, classes) -> list[dict]:
    """Pairs across classes per pair of classes (names in order), most first (ties: first found first)."""
    across = pairs[pairs.across]
    rank = np.argsort(np.argsort(np.asarray(classes, object)))  # each class's place in name order
    ya, yb = np.asarray(y)[across.a], np.asarray(y)[across.b]
    lo, hi = np.where(rank[ya] <= rank[yb], ya, yb), np.where(rank[ya] <= rank[yb], yb, ya)
    keys, first, counts = np.unique(lo * len(classes) + hi, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    return [{"classes": [classes[keys[i] // len(classes)], classes[keys[i] % len(classes)]], "pairs": int(counts[i])}
            for i in order]


def summarize(cs, f: Findings, options: dict, seconds: float) -> dict:
    """audit.json: the code set, the options and the counts; class pairs that share images."""
    classes, y, split, pairs = list(cs.class_names), cs.y, cs.split, f.pairs
    by_tier = np.bincount(pairs.tier[pairs.across], minlength=len(TIERS))
    return {
        "kind": "audit", "codes": str(cs.path), "code_attrs": {k: str(v) for k, v in cs.attrs.items()},
        "data_root": str(cs.data_root) if cs.data_root else None, "images": len(cs), "classes": len(classes),
        "options": {**options, "components": COMPONENTS, "C": LABEL_C}, "neighbours": f.neighbours.method,
        "duplicates": {"within_class": int((~pairs.across).sum()), "across_classes": int(pairs.across.sum()),
                       "across_splits": int((split[pairs.a] != split[pairs.b]).sum()),
                       "across_classes_by_tier": {t: int(by_tier[k]) for k, t in enumerate(TIERS)},
                       "copy_threshold": round(f.copy, 4)},
        "class_pairs": class_pair_counts(pairs, y, classes),
        "label_issues": int(len(f.issues)), "out_of_fold_accuracy": float((f.proba.argmax(1) == y).mean()) if f.label_model else None,
        "outliers": int(len(f.outliers)), "seconds": round(seconds, 2),
    }


def audit(codes_path, runs_dir="runs", threshold: float = THRESHOLD, cross_threshold: float = CROSS_THRESHOLD,
                neighbours: int = NEIGHBOURS, folds: int = FOLDS, outlier_fraction: float = OUTLIER_FRACTION,
                gallery: int = GALLERY, chunk_bytes: int = CHUNK_BYTES, seed: int = 0, progress: bool = True,
                search: str = "auto") -> Run:
    """Audit a code set; write the findings in a new run folder and return its :class:`Run`.

    ``search``: "exact" nearest neighbours, "approximate" (on the codes reduced to their leading
    principal directions, pairs then measured on the codes themselves), or "auto": exact up to
    ``EXACT_LIMIT`` images."""

    for name, v in (("threshold", threshold), ("cross_threshold", cross_threshold)):
        if not -1.0 <= v <= 1.0:
            raise ParameterError(name, f"{v}: a cosine similarity is between -1 and 1")
    if neighbours < 1:
        raise ParameterError("neighbours", "must be at least 1")
    if folds < 2:
        raise ParameterError("folds", "must be at least 2")
    if not 0.0 <= outlier_fraction <= 1.0:
        raise ParameterError("outlier_fraction", "must be between 0 and 1")
    if gallery < 0:
        raise ParameterError("gallery", "must be 0 or more")
    if search not in SEARCHES:
        raise ParameterError("search", f"{search!r}: one of {', '.join(SEARCHES)}")
    check_seed(seed)
    writable_folder(runs_dir, "--runs-dir")
    cs = open_code_sets(codes_path)
    if not cs.labelled.all():
        logger.info(f"note: {int((~cs.labelled).sum())} unlabelled image(s) left out of the audit")
        cs = CodeView(cs, cs.labelled)
    multi = cs.multi_label
    if multi:  # label sets stand for classes; label issues from the labels themselves
        cs = label_set_view(cs)
    if len(cs) < 3 or len(np.unique(cs.y)) < 2:
        raise UserError(f"{cs.path}: an audit needs at least 3 images in 2 classes")
    options = dict(threshold=threshold, cross_threshold=cross_threshold, neighbours=neighbours, folds=folds,
                   outlier_fraction=outlier_fraction, seed=seed, search=search)
    t0 = time.perf_counter()
    kinds = f"{len(cs.class_names)} label sets of {cs.targets.shape[1]} labels" if multi else f"{len(cs.class_names)} classes"
    logger.info(f"auditing {len(cs)} images of {kinds} ({cs.shape[1]} values per code) from {cs.path}")
    if approximate(len(cs), search):
        logger.info(f"note: approximate nearest neighbours on the codes' {COMPONENTS} leading principal directions"
                    + (f" (more than {EXACT_LIMIT} images; --search exact for the exact search, O(N^2))"
                       if search == "auto" else ""))
        Z, cosines = reduced_unit_codes(cs, seed=seed, progress=progress), lambda a, b: exact_cosines(cs, a, b)
    else:
        Z, cosines = unit_rows(cs.X), None
    findings = find(Z, np.asarray(cs.y, np.int64), len(cs.class_names), chunk_bytes=chunk_bytes,
                    progress=progress, targets=cs.targets if multi else None, sets=cs.sets if multi else None,
                    cosines=cosines, **options)
    del Z
    summary = summarize(cs, findings, options, time.perf_counter() - t0)

    with assembled_run(runs_dir, f"{str(cs.attrs.get('backbone')).replace('+', '-')}-audit") as run:
        write_csvs(run.path, cs, findings)
        (run.path / "audit.json").write_text(json.dumps(summary, indent=2))
        write_audit_report(run.path, summary, cs, findings, gallery)
    run_dir = run.path
    d = summary["duplicates"]
    tiers = d["across_classes_by_tier"]
    copies_from = "" if d["copy_threshold"] <= COPY else f" at >= {d['copy_threshold']:g}"  # adapted to the set
    logger.info(f"near-duplicates: {d['within_class']} pairs within classes (cosine >= {threshold:g}), "
                f"{d['across_classes']} across classes (>= {cross_threshold:g}: {tiers['copy']} copies{copies_from}, "
                f"{tiers['mutual']} mutual, {tiers['look-alike']} look-alikes), {d['across_splits']} of them across "
                f"the split (leakage)" + ("; most across classes: " + ", ".join(
                    f"{'/'.join(c['classes'])} {c['pairs']}" for c in summary["class_pairs"][:3])
                    if summary["class_pairs"] else ""))
    accuracy = summary["out_of_fold_accuracy"]
    logger.info(f"likely label errors: {summary['label_issues']} "
                + (f"(out-of-fold accuracy {accuracy:.4f}); " if accuracy is not None else
                   "(not estimated: no class has two images); ")
                + f"outliers: {summary['outliers']}")
    logger.info(f"audited {len(cs)} images in {summary['seconds']:.1f} s -> {run_dir}")
    return Run(run_dir, "audit", summary)


def write_audit_report(run_dir: Path, summary: dict, cs, f: Findings, limit: int = GALLERY) -> Path:
    """report.html: the summary, the class pairs that share images, and a gallery of each finding."""

    root, paths, classes, y, split = cs.data_root, cs.paths, list(cs.class_names), cs.y, cs.split
    where = lambda i: SPLIT_NAMES[int(split[i])]
    # paths are checked to stay inside the data folder (CodeSet); no folder stated, no pictures
    tile = lambda i, extra="": shot(root / paths[i] if root else None, f"{esc(classes[y[i]])} · {where(i)}{extra}<br>"
                                    f"<span class=\"path\">{esc(paths[i])}</span>", paths[i])

    def pair_gallery(chosen):
        if not chosen:
            return "<p>None found.</p>"
        shown = chosen[:limit]
        return (f"<p>{len(chosen)} pairs; the first {len(shown)} are shown.</p><div class=\"gallery\">"
                + "\n".join(f"<div class=\"pair\" title=\"cosine {p.similarity:.4f}\">{tile(p.a)}"
                            f"{tile(p.b, f' · {p.tier} · cosine {p.similarity:.3f}')}</div>" for p in shown) + "</div>")

    def image_gallery(idx, caption):
        if not len(idx):
            return "<p>None found.</p>"
        shown = idx[:limit]
        return (f"<p>{len(idx)} images; the first {len(shown)} are shown.</p><div class=\"gallery\">"
                + "\n".join(tile(i, caption(i)) for i in shown) + "</div>")

    d, o = summary["duplicates"], summary["options"]
    items = [("code set", summary["codes"]), ("images", summary["images"]), ("classes", summary["classes"]),
             (f"near-duplicate pairs within classes (cosine >= {o['threshold']:g})", d["within_class"]),
             (f"near-duplicate pairs across classes (cosine >= {o['cross_threshold']:g})", d["across_classes"]),
             (f"... of them copies (cosine >= {d.get('copy_threshold', COPY):g}), mutual (each the other's nearest "
              "in the other class), look-alikes",
              " / ".join(str(d.get("across_classes_by_tier", {}).get(t, 0)) for t in TIERS)),
             ("near-duplicate pairs across the split (leakage)", d["across_splits"]),
             ("likely label errors", summary["label_issues"]),
             ("out-of-fold accuracy of the label model", "not estimated (no class has two images)"
              if summary["out_of_fold_accuracy"] is None else f"{100 * summary['out_of_fold_accuracy']:.2f}%"),
             ("outliers shown", summary["outliers"]), ("nearest neighbours", summary.get("neighbours", "exact")),
             ("seconds", summary["seconds"])]
    pairs, proba, suggested = f.pairs, f.proba, suggested_classes(f.proba, y)
    alike = pairs.across & (pairs.tier == LOOK_ALIKE)
    sections = [
        section("Summary", facts(items), "summary"),
        section("Classes that share images (near-duplicate pairs across classes)",
                table(["class", "other class", "pairs"], [[*c["classes"], c["pairs"]] for c in summary["class_pairs"]])
                if summary["class_pairs"] else "<p>None found.</p>", "class-pairs"),
        section("Near-duplicates across the split (leakage)",
                pair_gallery(pairs[split[pairs.a] != split[pairs.b]]), "leakage"),
        section("Near-duplicates across classes: likely one photograph under two labels (copies, then mutual pairs)",
                pair_gallery(pairs[pairs.across & ~alike]), "across-classes"),
        # natural look-alikes (a fine-grained set has many) are listed, folded, after the likely copies
        section("Look-alikes across classes: likely different photographs that look alike",
                f"<details><summary>{int(alike.sum())} pairs (show)</summary>{pair_gallery(pairs[alike])}</details>",
                "look-alikes"),
        section("Near-duplicates within classes", pair_gallery(pairs[~pairs.across]),
                "within-class"),
        section("Likely label errors (the least likely given label first)", image_gallery(
            f.issues, lambda i: f"<br><span class=\"bad\">given {esc(classes[y[i]])} ({100 * proba[i, y[i]]:.1f}%)</span>"
                              f"<br><span class=\"good\">looks like {esc(classes[suggested[i]])} "
                              f"({100 * proba[i, suggested[i]]:.1f}%)</span>"), "label-issues"),
        section("Outliers (farthest from their nearest neighbours)", image_gallery(
            f.outliers, lambda i: f"<br>score {f.scores[i]:.3f}"), "outliers"),
    ]
    out = Path(run_dir) / "report.html"
    out.write_text(page(f"audit of {Path(summary['codes']).name} ({cs.attrs.get('backbone')})", sections),
                   encoding="utf-8")
    return out
