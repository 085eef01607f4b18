"""95% intervals of the figures a run reports: how far the test images let a figure be trusted.

Accuracy (and top-5, exact match) is a count of right answers among n test images: its interval is
Wilson's score interval (SciPy's ``binomtest``). Mean per-class accuracy, mAP and F1 are not
counts: their intervals come from a stratified bootstrap (each class resampled within itself, so
every draw has the test set's class sizes), a fixed number of seeded draws, percentiles.
"""
from __future__ import annotations

import warnings

import numpy as np

# Deferred on purpose: SciPy is imported inside the function that uses it.

CONFIDENCE = 0.95
DRAWS = 1000         # bootstrap draws
SEED = 0             # the bootstrap's seed: the same run reports the same interval
_CELLS = 500_000     # draws x images held at a time (4 MB of float64 weights: out-of-core runs stay in their cap)
METHOD = (f"{CONFIDENCE:.0%} intervals: Wilson for accuracy, top-5 and exact match; a stratified bootstrap "
          f"({DRAWS} draws, seed {SEED}) for mean per-class accuracy, mAP and F1")
NOTE = (f"{METHOD}. Another draw of test images as many as these would give a figure in the interval "
        f"{CONFIDENCE:.0%} of the time: runs whose intervals overlap are not shown apart by this test set.")


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of a proportion of ``k`` in ``n`` (0..1 for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap(statistic, strata, *, draws: int = DRAWS, seed: int = SEED,
              confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of ``statistic`` under a bootstrap stratified by ``strata`` (one value
    per item). ``statistic(W)`` takes a (draws, items) matrix of how often each item is drawn
    (each stratum keeps its size) and returns one value per draw (NaN: undefined in that draw,
    left out)."""
    strata = np.asarray(strata)
    n = len(strata)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    values = []
    step = max(1, _CELLS // n)
    for start in range(0, draws, step):
        b = min(step, draws - start)
        W = np.zeros((b, n))
        for g in groups:
            m = len(g)  # drawn m times with replacement within the stratum, counted per draw
            picks = rng.integers(0, m, size=(b, m)) + m * np.arange(b)[:, None]
            W[:, g] = np.bincount(picks.ravel(), minlength=b * m).reshape(b, m)
        values.append(np.asarray(statistic(W), float))
    values = np.concatenate(values)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_per_class_interval(y_true, pred) -> tuple[float, float]:
    """Mean per-class accuracy (scikit-learn's balanced accuracy), stratified by true class."""
    from scipy.sparse import csr_matrix

    y_true = np.asarray(y_true)
    classes, cls = np.unique(y_true, return_inverse=True)
    n = len(y_true)  # each image's right answer in its class's column, sparse (n values, not n x classes)
    right = csr_matrix(((np.asarray(pred) == y_true).astype(float), (np.arange(n), cls)), shape=(n, len(classes)))
    sizes = np.bincount(cls)  # (the same in every draw: the strata are the classes)

    def mean_per_class(W):
        return (np.asarray(right.T @ W.T).T / sizes).mean(1)
    return bootstrap(mean_per_class, cls)


def weighted_average_precision(W: np.ndarray, truth: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision of one label under each row of weights ``W`` (as scikit-learn's
    ``average_precision_score`` with ``sample_weight``: precision at each distinct score, weighted
    by the recall it adds). NaN where a row weighs no positive image."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], truth[order].astype(float)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last image of each distinct score
    Wo = W[:, order]
    tp = np.cumsum(Wo * t, axis=1)[:, ends]
    seen = np.cumsum(Wo, axis=1)[:, ends]
    positives = tp[:, -1:]
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    recall = np.divide(tp, positives, out=np.zeros_like(tp), where=positives > 0)
    ap = (np.diff(recall, axis=1, prepend=0.0) * precision).sum(1)
    return np.where(positives[:, 0] > 0, ap, np.nan)


def mean_ap_interval(Y, proba) -> tuple[float, float]:
    """Bootstrap interval of the mean over labels of average precision (labels with a positive
    image), stratified by each image's first label."""
    Y = np.asarray(Y) > 0
    strata = np.where(Y.any(1), Y.argmax(1), -1)
    scored = [j for j in range(Y.shape[1]) if Y[:, j].any()]

    def mean_ap(W):
        aps = np.stack([weighted_average_precision(W, Y[:, j], proba[:, j]) for j in scored], 1)
        return np.nanmean(aps, 1)  # (labels without a positive in a draw left out; none at all: NaN)

    if not scored:
        return float("nan"), float("nan")
    with warnings.catch_warnings():  # (a draw with no positive of any label: NaN, left out)
        warnings.simplefilter("ignore", RuntimeWarning)
        return bootstrap(mean_ap, strata)


def multi_label_intervals(Y, proba, pred) -> dict:
    """Bootstrap intervals of a multi-label set's mAP, micro and macro F1 and per-label accuracy,
    stratified by each image's first label (images without one together)."""
    Y, pred = (np.asarray(Y) > 0), np.asarray(pred) > 0
    strata = np.where(Y.any(1), Y.argmax(1), -1)
    scored = [j for j in range(Y.shape[1]) if Y[:, j].any()]

    def counts(W):
        return W @ (pred & Y), W @ (pred & ~Y), W @ (~pred & Y)

    def micro_f1(W):
        tp, fp, fn = (c.sum(1) for c in counts(W))
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)

    def macro_f1(W):
        tp, fp, fn = counts(W)
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0).mean(1)

    per_label = (pred == Y).mean(1)
    return {"mAP_ci": list(mean_ap_interval(Y, proba)) if scored else None,
            "micro_f1_ci": list(bootstrap(micro_f1, strata)),
            "macro_f1_ci": list(bootstrap(macro_f1, strata)),
            "mean_per_class_accuracy_ci": list(bootstrap(lambda W: W @ per_label / W.sum(1), strata))}


def overlaps(a, b) -> bool:
    """Whether two intervals [low, high] share any value."""
    return a[0] <= b[1] and b[0] <= a[1]
