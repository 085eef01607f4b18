"""The audit's approximate nearest-neighbour search against the exact one, on 20,000 codes."""
import h5py
import numpy as np
import pytest

from pipeline.codes import CodeSet
from pipeline.quality._audit import (COMPONENTS, duplicate_pairs, exact_cosines, reduced_unit_codes, unit_rows)
from pipeline.quality._neighbours import approximate, nearest_neighbours

N, DIM, CLASSES = 20_000, 512, 50


def planted_codes(path, seed=0):
    """A minimal code set of ReLU-like codes around class centres; 2% of the images made from
    another: near-copies within its class, copies under another class, look-alikes of another."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, N)
    centres = rng.normal(0, 1, (CLASSES, DIM))
    X = np.maximum(centres[y] + rng.normal(0, 1.5, (N, DIM)), 0).astype(np.float32)
    made, source = rng.choice(N, (2, N // 50), replace=False)
    kind = np.arange(len(made)) % 4  # 0, 1 near-copies within; 2 copies across; 3 look-alikes across
    y[made] = np.where(kind < 2, y[source], (y[source] + 1 + rng.integers(0, CLASSES - 1, len(made))) % CLASSES)
    mix = np.where(kind[:, None] == 3, 0.8, 1.0)
    noise = np.where(kind[:, None] == 3, 0.7, 0.15)
    X[made] = np.maximum(mix * X[source] + (1 - mix) * np.maximum(centres[y[made]], 0)
                         + noise * rng.normal(0, 1, (len(made), DIM)), 0)
    with h5py.File(path, "w") as f:
        f["codes"], f["labels"] = X, y
        f["split"] = np.zeros(N, np.int8)
        f.create_dataset("paths", data=[f"c{c}/{i}.jpg" for i, c in enumerate(y)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=[f"c{c}" for c in range(CLASSES)], dtype=h5py.string_dtype())
    return CodeSet(path), y


@pytest.mark.slow
def test_approximate_search_finds_the_pairs_of_the_exact_one(tmp_path):
    cs, y = planted_codes(tmp_path / "codes.h5")
    assert not approximate(N) and approximate(N, "approximate") and approximate(10**6)

    exact = nearest_neighbours(unit_rows(cs.X), y, 10, progress=False, search="exact")
    Z = reduced_unit_codes(cs, progress=False)  # streamed from the file, as the audit does above 50,000
    assert Z.shape == (N, COMPONENTS) and np.allclose(np.linalg.norm(Z, axis=1), 1, atol=1e-4)
    near = nearest_neighbours(Z, y, 10, progress=False, search="approximate", floor=0.8)
    assert exact.method == "exact" and near.method.startswith("approximate (faiss IVF")

    want = {(p.a, p.b): p for p in duplicate_pairs(exact, y)}
    got = {(p.a, p.b): p for p in duplicate_pairs(near, y, cosines=lambda a, b: exact_cosines(cs, a, b))}
    kinds = {k: sum(p.kind == k for p in want.values()) for k in ("within class", "across classes")}
    assert kinds["within class"] >= 150 and kinds["across classes"] >= 150  # the planted pairs, found exactly
    for kind in kinds:  # at least 99% of the exact search's pairs, of each kind
        found = [k for k, p in want.items() if p.kind == kind and k in got]
        assert len(found) >= 0.99 * kinds[kind], (kind, len(found), kinds[kind])
    common = sorted(set(want) & set(got))
    assert np.allclose([got[k].similarity for k in common], [want[k].similarity for k in common], atol=1e-4)
    assert [got[k].tier for k in common] == [want[k].tier for k in common]
    assert len(set(got) - set(want)) <= 0.01 * len(want)  # measured on the codes again: few pairs beyond
    as_found = duplicate_pairs(near, y, cosines=lambda a, b: None)  # too many to measure again: as found
    assert {(p.a, p.b) for p in as_found} == {(p.a, p.b) for p in duplicate_pairs(near, y)}

    # the nearest neighbour, and the nearest of another class, of the images that have a close one
    # (the rest have many at about the same distance, in any order)
    close = exact.similarity[:, 0] >= 0.85
    assert close.sum() >= 600 and np.mean(near.index[close, 0] == exact.index[close, 0]) >= 0.99
    close = exact.other_similarity >= 0.85
    assert close.sum() >= 300 and np.mean(near.other_index[close] == exact.other_index[close]) >= 0.99
