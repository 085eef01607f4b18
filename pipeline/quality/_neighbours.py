"""Nearest neighbours of every code by cosine similarity: exact up to ``EXACT_LIMIT`` codes,
approximate above (a faiss inverted-file index), chosen by ``search``.

- **Exact**: every row against every row, a chunk of rows at a time (memory bounded by
  ``chunk_bytes`` whatever the number of codes). O(N^2): 100,000 codes of 1,280 values take
  about 100 s of similarity products on two cores.
- **Approximate**: faiss ``IndexIVFScalarQuantizer`` (inner product, 8-bit codes): the codes are
  clustered into lists of about ``LIST_SIZE`` (k-means on a sample), each code is compared with
  the members of the ``PROBES`` lists nearest to it. Time and memory grow linearly with N.

Both give each image its ``k`` nearest others and its nearest image of another class. The
approximate search finds the latter among the ``CANDIDATES`` nearest, and, for an image whose
candidates are all of its own class down to ``floor`` similarity, by a second search that leaves
its class out; an image whose nearest other class is below ``floor`` is given none (-1), which
changes no finding (pairs across classes are reported from ``floor`` up).
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

SEARCHES = ("auto", "exact", "approximate")
EXACT_LIMIT = 50_000  # auto: exact up to this many codes (about 40 s at 1,280 values)
LIST_SIZE = 256       # codes per inverted list, on average
PROBES = 16           # lists searched per image
CANDIDATES = 32       # neighbours asked of the index per image
TRAINING = 40         # codes per list the k-means sees
BLOCK = 16384         # images per search call (progress, bounded temporaries)
CHUNK_BYTES = 512 * 2**20  # temporary memory of the exact search


@dataclasses.dataclass
class Neighbours:
    """Nearest neighbours of every image: ``index``/``similarity`` (N, k) over all other images,
    best first; ``other_index``/``other_similarity`` (N,) the nearest in another class (-1 and
    -inf if none, or, approximate search, none at the search's floor or more); ``method``: how found."""
    index: np.ndarray
    similarity: np.ndarray
    other_index: np.ndarray
    other_similarity: np.ndarray
    method: str = "exact"


def approximate(n: int, search: str = "auto") -> bool:
    """Whether ``search`` ("auto", "exact", "approximate") searches ``n`` codes approximately."""
    return search == "approximate" or (search == "auto" and n > EXACT_LIMIT)


def nearest_neighbours(Z: np.ndarray, y: np.ndarray, k: int = 10, chunk_bytes: int = CHUNK_BYTES, progress: bool = True,
                       search: str = "auto", floor: float = -1.0, seed: int = 0) -> Neighbours:
    """The ``k`` nearest neighbours of the unit rows ``Z`` and each one's nearest of another class
    (labels ``y``), exact or approximate as ``search`` says (:func:`approximate`)."""
    if approximate(len(Z), search) and len(Z) > CANDIDATES + 1:
        return approximate_neighbours(Z, y, k, floor, seed, progress)
    return exact_neighbours(Z, y, k, chunk_bytes, progress)


def exact_neighbours(Z: np.ndarray, y: np.ndarray, k: int = 10, chunk_bytes: int = CHUNK_BYTES,
                     progress: bool = True) -> Neighbours:
    """Exact cosine nearest neighbours of the unit rows ``Z``, a chunk of rows at a time: what a
    chunk needs (its similarity block, float32, and in the worst case the partition's int64
    indices and a mask: 13 bytes per image pair) stays under ``chunk_bytes``, whatever the number of images."""

    n = len(Z)
    k = max(1, min(k, n - 1))
    rows = max(1, min(n, chunk_bytes // (13 * n)))
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    index = np.empty((n, k), np.int64)
    sim = np.empty((n, k), np.float32)
    other = np.full(n, -1, np.int64)
    other_sim = np.full(n, -np.inf, np.float32)
    for s in tqdm(range(0, n, rows), desc="neighbours", unit="chunk", disable=not progress, leave=False):
        e = min(s + rows, n)
        S = Z[s:e] @ Z.T
        S[np.arange(e - s), np.arange(s, e)] = -np.inf  # not its own neighbour
        index[s:e], sim[s:e] = top_k(S, k)
        for c in np.unique(y[s:e]):  # hide the row's own class: what is left is the nearest in another
            S[np.ix_(np.flatnonzero(y[s:e] == c), members[c])] = -np.inf
        best = S.argmax(1)
        best_sim = S[np.arange(e - s), best]
        other[s:e] = np.where(np.isfinite(best_sim), best, -1)
        other_sim[s:e] = best_sim
        del S
    return Neighbours(index, sim, other, other_sim)


def top_k(S: np.ndarray, k: int, stride: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``k`` largest values of each row of ``S``, largest first.

    Partitioning whole rows is what a neighbour search spends its time on; instead the k-th
    largest of every ``stride``-th column bounds each row's k-th largest from below, and only
    the few values at or above that bound are sorted."""
    r, n = S.shape
    above = None
    if n >= 4 * stride * (k + 1):
        bound = np.partition(S[:, ::stride], -k, axis=1)[:, -k]
        above = S >= bound[:, None]  # at least k per row: those of the sample
        if np.count_nonzero(above) > r * n // 16:  # many ties (copies of one image): partition instead
            above = None
    if above is None:
        top = np.argpartition(S, n - k, axis=1)[:, n - k:]
    else:
        rows, cols = np.divmod(np.flatnonzero(above), n)  # 5x faster than a 2-D nonzero
        del above
        order = np.lexsort((-S[rows, cols], rows))
        rows, cols = rows[order], cols[order]
        first = np.searchsorted(rows, np.arange(r))
        top = cols[first[:, None] + np.arange(k)]
    vals = np.take_along_axis(S, top, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(top, order, 1), np.take_along_axis(vals, order, 1)


def _faiss():
    """faiss, without the lines its loader logs at INFO about the builds it tries first."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss
    return faiss


def ivf_index(Z: np.ndarray, seed: int = 0, progress: bool = True):
    """A faiss inverted-file index of the unit rows ``Z`` (inner product, 8-bit scalar quantizer),
    its lists trained on a sample; ``nprobe`` set to ``PROBES``."""
    faiss = _faiss()

    n, d = Z.shape
    lists = max(1, n // LIST_SIZE)
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = seed, 10
    rng = np.random.default_rng(seed)
    index.train(Z[np.sort(rng.choice(n, min(n, TRAINING * lists), replace=False))])
    for s in tqdm(range(0, n, BLOCK), desc="index", unit="block", disable=not progress, leave=False):
        index.add(Z[s:s + BLOCK])
    index.nprobe = min(PROBES, lists)
    return index


def approximate_neighbours(Z: np.ndarray, y: np.ndarray, k: int, floor: float = -1.0, seed: int = 0,
                           progress: bool = True) -> Neighbours:
    """Approximate cosine nearest neighbours of the unit rows ``Z`` through :func:`ivf_index`."""
    faiss = _faiss()

    n = len(Z)
    k = max(1, min(k, n - 1))
    want = min(n, max(k, CANDIDATES) + 1)  # + the image itself
    index = ivf_index(Z, seed, progress)
    idx = np.full((n, k), -1, np.int64)
    sim = np.full((n, k), -np.inf, np.float32)
    other = np.full(n, -1, np.int64)
    other_sim = np.full(n, -np.inf, np.float32)
    unsure = []  # images whose candidates are all of their class, the last at floor or above
    for s in tqdm(range(0, n, BLOCK), desc="neighbours", unit="block", disable=not progress, leave=False):
        e = min(s + BLOCK, n)
        D, I = index.search(Z[s:e], want)
        rows = np.arange(s, e)[:, None]
        D[(I == rows) | (I < 0)] = -np.inf  # not its own neighbour; -1: fewer found than asked
        order = np.argsort(-D, axis=1, kind="stable")
        D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
        idx[s:e], sim[s:e] = I[:, :k], D[:, :k]
        foreign = (y[np.maximum(I, 0)] != y[s:e, None]) & np.isfinite(D)
        first = foreign.argmax(1)
        found = foreign[np.arange(e - s), first]
        other[s:e] = np.where(found, I[np.arange(e - s), first], -1)
        other_sim[s:e] = np.where(found, D[np.arange(e - s), first], -np.inf)
        unsure.append(s + np.flatnonzero(~found & (D[:, -1] >= floor)))
    unsure = np.concatenate(unsure)
    for c in np.unique(y[unsure]):  # their nearest of another class: the search again, their class left out
        rows = unsure[y[unsure] == c]
        params = faiss.SearchParametersIVF(sel=faiss.IDSelectorNot(faiss.IDSelectorBatch(np.flatnonzero(y == c))),
                                           nprobe=index.nprobe)
        for s in range(0, len(rows), BLOCK):
            D, I = index.search(Z[rows[s:s + BLOCK]], 1, params=params)
            hit = I[:, 0] >= 0
            other[rows[s:s + BLOCK][hit]], other_sim[rows[s:s + BLOCK][hit]] = I[hit, 0], D[hit, 0]
    short = np.flatnonzero(~np.isfinite(sim[:, -1]))  # fewer than k found in the lists searched: exact for them
    for s in range(0, len(short), 256):
        rows = short[s:s + 256]
        S = Z[rows] @ Z.T
        S[np.arange(len(rows)), rows] = -np.inf
        idx[rows], sim[rows] = top_k(S, k)
    method = (f"approximate (faiss IVF, {index.nlist} lists of 8-bit codes, {index.nprobe} searched per image; "
              f"{len(unsure)} images searched again for another class)")
    return Neighbours(idx, sim, other, other_sim, method)
