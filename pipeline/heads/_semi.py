"""Learning from the unlabelled images too: labels spread over the codes' nearest-neighbour graph
(scikit-learn's ``LabelSpreading``, Zhou et al. 2004), balanced over the classes (Sinkhorn's
scaling: without it the large, dense classes take the pool), then any head trained on the labelled
and the pseudo-labelled codes. Only a cache makes this cheap: every image's code is there already.

Measured on Caltech-101 (Lite0 codes, one labelled image per class, the rest unlabelled): a logistic
regression on the 101 labelled codes 67-68% mean per-class accuracy; on them and the 5,000
pseudo-labelled ones 76-78% (benchmarks/bench_fewshot.py). With five labels per class it no
longer helps: the choice between the two is made on held-out labels (:func:`choose`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.heads._probe import linear_probe

# Deferred on purpose: scikit-learn is imported inside the functions that use it.

NEIGHBOURS = 20     # the graph: each code's nearest codes (10 did worse, 40 the same)
ALPHA = 0.99        # how far labels spread (Zhou et al.'s value; 0.8 did worse at one label per class)
COMPONENTS = 128    # unit-length codes on their leading principal components
FOLDS = 3           # held-out labels when there is no validation part to choose on
MARGIN = 0.05       # held-out folds: what spreading must gain over the labelled codes alone
AGREEMENT = 0.5     # with fewer labels per class than folds: the share of a labelled code's nearest
                    # unlabelled codes the spreading must give its class (labels the graph contradicts: far less)


@dataclasses.dataclass(frozen=True)
class Propagation:
    """Each unlabelled code's class (an index into ``classes``) and the confidence of it."""

    labels: np.ndarray
    confidence: np.ndarray


def reduced(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Unit-length codes on their leading principal components, unit length again (cosine)."""
    from sklearn.decomposition import PCA

    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    dims = int(min(COMPONENTS, Z.shape[1], max(1, len(Z) - 1)))
    if dims < Z.shape[1]:
        Z = PCA(dims, svd_solver="randomized", random_state=seed).fit_transform(Z)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def balanced(P: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Class probabilities rescaled so that every class takes an equal share of the codes
    (Sinkhorn's alternate scaling of columns and rows), each row still summing to 1."""
    P = np.asarray(P, np.float64) + 1e-12
    n, k = P.shape
    for _ in range(iterations):
        P = P / P.sum(0, keepdims=True) * (n / k)
        P = P / P.sum(1, keepdims=True)
    return P


def propagate(Z: np.ndarray, y: np.ndarray, labelled: np.ndarray, n_classes: int) -> Propagation:
    """Spread the labels of the rows ``labelled`` (``y`` there, class indices) over the graph of
    the reduced codes ``Z``; every other row gets a class, balanced over the classes seen."""
    import warnings

    from sklearn.semi_supervised import LabelSpreading

    target = np.where(labelled, y, -1)
    k = int(min(NEIGHBOURS, len(Z) - 1))
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # (rows no label reaches: a uniform distribution, said by their confidence;
        warnings.simplefilter("ignore", RuntimeWarning)  # 200 steps spread far enough at alpha 0.99)
        warnings.simplefilter("ignore", ConvergenceWarning)
        spread = LabelSpreading(kernel="knn", n_neighbors=k, alpha=ALPHA, max_iter=200).fit(Z, target)
    P = np.nan_to_num(spread.label_distributions_, nan=1.0 / len(spread.classes_))
    Q = balanced(P)
    full = np.zeros((len(Z), n_classes))
    full[:, spread.classes_] = Q
    return Propagation(full.argmax(1), full.max(1))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether spreading labels over the unlabelled codes helps, by a rule needing no validation
    part: the accuracy it gets and the labelled codes alone get, and the rule's name."""

    spread: float
    alone: float
    rule: str
    margin: float = 0.0  # what spreading must win by

    @property
    def helps(self) -> bool:
        return self.spread > self.alone + self.margin


def _linear():
    """The quick head the choice is made with: a logistic regression on standardized codes (on
    unit-length codes without it, C = 1 regularizes so much that a few labels score 0.4 where the
    real head scores 0.86)."""
    return linear_probe(1.0, standardize=True)


def held_out_gain(Z: np.ndarray, y: np.ndarray, labelled: np.ndarray, n_classes: int, spread: np.ndarray,
                  seed: int = 0) -> Verdict:
    """What decides where no validation part can (:class:`Verdict`): the accuracy of a logistic
    regression on the labelled codes and the unlabelled ones' spread labels against one on the
    labelled codes alone. With three or more labels in every class, on held-out labels (each of
    :data:`FOLDS` folds of the labelled rows hidden in turn, the spreading done without them); with fewer (a fold would hide a class's only label), no label can be
    held out: the spreading is used where each labelled code's nearest unlabelled codes mostly get
    its own class (:data:`AGREEMENT` of them), which labels the graph contradicts do not get.
    ``spread``: the classes :func:`propagate` gave every row from these labels (made once, by the caller)."""
    from sklearn.model_selection import KFold

    rows = np.flatnonzero(labelled)
    counts = np.bincount(y[rows], minlength=n_classes)
    if counts[counts > 0].min() < FOLDS:
        # no label can be held out (it would hide a class's only one): the labels must at least
        # agree with the graph, each labelled code's nearest unlabelled codes given its class
        from sklearn.neighbors import NearestNeighbors

        unl = np.flatnonzero(~labelled)
        k = int(min(NEIGHBOURS // 2, len(unl)))
        near = NearestNeighbors(n_neighbors=k).fit(Z[unl]).kneighbors(Z[rows], return_distance=False)
        agree = float((spread[unl][near] == y[rows][:, None]).mean())
        return Verdict(agree, AGREEMENT, "agreement of the labelled codes' neighbourhoods (one or two labels per class)")
    # the whole procedure on each fold, as train does it (a quick linear model for the head): on the
    # kept labels alone, and on them with the unlabelled codes' spread labels; scored on the hidden
    spread_right = alone_right = 0
    unl = np.flatnonzero(~labelled)
    for keep, hide in KFold(int(min(FOLDS, len(rows))), shuffle=True, random_state=seed).split(rows):
        seen = np.zeros(len(Z), bool)
        seen[rows[keep]] = True
        if len(np.unique(y[rows[keep]])) < 2:
            continue
        pseudo = propagate(Z, y, seen, n_classes).labels
        fit_on = np.concatenate([rows[keep], unl])
        with_ = _linear().fit(Z[fit_on], np.where(seen, y, pseudo)[fit_on])
        alone = _linear().fit(Z[rows[keep]], y[rows[keep]])
        spread_right += int((with_.predict(Z[rows[hide]]) == y[rows[hide]]).sum())
        alone_right += int((alone.predict(Z[rows[hide]]) == y[rows[hide]]).sum())
    # (the folds keep two thirds of the labels, where spreading gains more than with all of them:
    # it must win by a clear margin; at five labels per class a gain of 1-4 points here was 0 to -2 on
    # the test images of Caltech-101)
    return Verdict(spread_right / len(rows), alone_right / len(rows), "held-out training labels", MARGIN)
