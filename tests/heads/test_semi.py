"""Learning from the unlabelled images: where the codes' neighbours carry the classes (two moons)
the unlabelled images must help, and do; where the labels contradict the neighbour graph the
choice rule must refuse them; validation and test images never join the graph."""
import numpy as np
import pytest
from helpers import write_code_file

from pipeline.data import TEST, TRAIN, UNLABELLED, VAL
from pipeline.runs import train


def moons(path, n=400, labelled_per_class=2, dims=16, seed=0, contradict=False):
    """Two interleaved half-moons (embedded in ``dims`` values): a line cannot split them from a
    few labels, their neighbours can. ``contradict``: labels drawn at random within each moon
    (the graph then says nothing about them)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    moon = np.arange(n) % 2
    pts = np.where(moon[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    pts += rng.normal(0, 0.06, pts.shape)
    X = np.c_[pts, rng.normal(0, 0.02, (n, dims - 2))] @ np.linalg.qr(rng.normal(size=(dims, dims)))[0] + 5.0
    y = rng.integers(0, 2, n) if contradict else moon
    split = np.full(n, UNLABELLED, np.int8)
    split[np.arange(n) % 5 == 4] = TEST
    for c in range(2):  # the labelled training images: at the moons' tips, where a line misleads most
        pool = np.flatnonzero((split == UNLABELLED) & (moon == c))
        tips = pool[np.argsort(np.abs(t[pool] - (0 if c == 0 else np.pi)))[:labelled_per_class]]
        split[tips] = TRAIN
    labels = np.where(split == UNLABELLED, -1, y)
    write_code_file(path, X.astype(np.float32), labels, split, [f"m{i:03d}.png" for i in range(n)], ["a", "b"],
                    backbone="fake", layer="top", pooling="avg", image_size=32)
    return path, y, split


def test_the_unlabelled_images_help_where_their_neighbours_carry_the_classes(tmp_path, logs):
    path, y, split = moons(tmp_path / "moons.h5")
    alone = train(path, "logreg", runs_dir=tmp_path / "runs")
    logs.clear()
    semi = train(path, "logreg", runs_dir=tmp_path / "runs", unlabelled=True)
    n_free = int((split == UNLABELLED).sum())
    line = next(l for l in logs if "test accuracy" in l)
    assert f"with {n_free} unlabelled images" in line and "not used" not in line, line
    # (a linear head on the moons: about 0.85 at best; from 4 labels at the tips, 0.70)
    assert semi.metrics["accuracy"] > alone.metrics["accuracy"] + 0.1, (alone.metrics["accuracy"],
                                                                         semi.metrics["accuracy"])
    assert semi.record["unlabelled"]["used"] and semi.record["unlabelled"]["available"] == n_free


def test_labels_that_contradict_the_graph_are_not_spread(tmp_path, logs):
    path, _, split = moons(tmp_path / "noise.h5", labelled_per_class=12, contradict=True)
    train(path, "logreg", runs_dir=tmp_path / "runs", unlabelled=True)
    n_free = int((split == UNLABELLED).sum())
    line = next(l for l in logs if "test accuracy" in l)
    assert f"{n_free} unlabelled images not used: they did not help" in line, line


def test_validation_and_test_images_never_join_the_graph(tmp_path, monkeypatch):
    import pipeline.heads as heads

    path, y, split = moons(tmp_path / "moons.h5")
    with __import__("h5py").File(path, "r+") as f:  # a validation part too
        s = f["split"][()]
        s[np.flatnonzero(s == UNLABELLED)[:20]] = VAL
        f["split"][...] = s
        f["labels"][...] = np.where(s == UNLABELLED, -1, y)
    seen = []
    real = heads.propagate

    def spy(Z, target, labelled, n_classes):
        seen.append(len(Z))
        return real(Z, target, labelled, n_classes)
    monkeypatch.setattr(heads, "propagate", spy)
    train(path, "logreg", runs_dir=tmp_path / "runs", unlabelled=True)
    s = np.asarray(__import__("h5py").File(path, "r")["split"][()])
    allowed = int(((s == TRAIN) | (s == UNLABELLED)).sum())
    assert seen and max(seen) == allowed and allowed < len(s) - int((s == TEST).sum())  # no val, no test row


def test_unlabelled_with_cv_is_refused_in_one_line(tmp_path):
    from pipeline.errors import ParameterError

    path, _, _ = moons(tmp_path / "moons.h5")
    with pytest.raises(ParameterError, match="^unlabelled "):
        train(path, "logreg", runs_dir=tmp_path / "runs", unlabelled=True, cv=3)
