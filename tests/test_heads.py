import json

import numpy as np
import pytest

from conftest import FAST, run_script, user_error_lines
from pipeline.codes import CodeSet, generate_codes
from pipeline.dataset import TEST
from pipeline.heads import HEADS, LogRegHead, MLPHead, SoftmaxHead, load_head, make_head
from pipeline.errors import UserError
from pipeline.report import most_confused
from pipeline.train import train_on_codes


def blobs(n_per_class=40, n_classes=5, dim=64, seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)
    return X, y


@pytest.mark.parametrize("name", list(HEADS))
def test_each_head_is_well_above_chance_on_separable_codes(name, tmp_path):
    X, y = blobs()
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(y))
    tr, va, te = idx[:120], idx[120:160], idx[160:]
    head = make_head(name, **({"epochs": 60} if name != "logreg" else {}))
    head.fit(X[tr], y[tr], X[va], y[va], n_classes=5)
    proba = head.predict_proba(X[te])
    assert proba.shape == (len(te), 5)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-4)
    assert (proba.argmax(1) == y[te]).mean() >= 0.9  # chance is 0.2
    head.save(tmp_path)
    again = load_head(tmp_path)
    np.testing.assert_allclose(again.predict_proba(X[te]), proba, atol=1e-5)


def test_heads_train_without_validation_set():
    X, y = blobs()
    train = np.arange(len(y)) % 4 != 0
    for head in (SoftmaxHead(epochs=30), LogRegHead(Cs=(0.01, 1.0))):
        head.fit(X[train], y[train])
        assert (head.predict(X[~train]) == y[~train]).mean() > 0.9  # on images it did not see


def _unbalanced_pair(n_major, n_minor, sep, seed):
    X, y = blobs(n_per_class=300, n_classes=2, sep=sep, seed=seed)
    return X, y, np.r_[np.flatnonzero(y == 0)[:n_major], np.flatnonzero(y == 1)[:n_minor]]


def test_logreg_chooses_C_on_the_validation_set():
    # Trained on 100 vs 20 codes: the strongest regularization leaves only the class priors
    # (intercepts are not penalized) and calls everything class 0; a balanced validation set shows it.
    X, y, train = _unbalanced_pair(100, 20, sep=0.5, seed=1)
    val = np.r_[np.flatnonzero(y == 0)[100:150], np.flatnonzero(y == 1)[100:150]]
    head = LogRegHead(Cs=(1e-4, 1.0)).fit(X[train], y[train], X[val], y[val])
    scores = head.history_["val_accuracy_by_C"]
    assert scores["0.0001"] <= 0.55 and scores["1.0"] >= 0.9 and head.C_ == 1.0
    assert head.model_.named_steps["logisticregression"].C == 1.0
    # Where both do equally well, the stronger regularization is kept.
    easy = LogRegHead(Cs=(0.01, 1.0)).fit(*blobs(seed=3), *blobs(seed=3))
    assert set(easy.history_["val_accuracy_by_C"].values()) == {1.0} and easy.C_ == 0.01


def test_class_weighting_raises_the_minority_recall():
    X, y, train = _unbalanced_pair(200, 20, sep=0.15, seed=2)
    test = np.setdiff1d(np.arange(len(y)), train)
    recall = {}
    for weighted in (False, True):
        pred = LogRegHead(class_weight=weighted).fit(X[train], y[train]).predict(X[test])
        recall[weighted] = (pred[y[test] == 1] == 1).mean()
    assert recall[True] >= recall[False] + 0.15, recall


def test_logreg_handles_classes_missing_from_training():
    X, y = blobs()
    head = LogRegHead(Cs=(1e-4, 1.0)).fit(X[y < 4], y[y < 4], X[y < 4][:10], y[y < 4][:10], n_classes=5)
    assert head.predict_proba(X).shape == (len(X), 5) and head.predict_proba(X)[:, 4].max() == 0
    one = LogRegHead(Cs=(0.05,)).fit(X, y)
    assert one.C_ == 0.05 and one.model_.named_steps["logisticregression"].C == 0.05


def test_mlp_shape_and_class_weight():
    X, y = blobs()
    keep = np.r_[np.flatnonzero(y == 0)[:5], np.flatnonzero(y != 0)]
    head = MLPHead(hidden=(32, 16), dropout=0.2, epochs=20, class_weight=True).fit(X[keep], y[keep])
    dense = [l for l in head.model_.layers if l.name.startswith("hidden")]
    assert [l.units for l in dense] == [32, 16]
    assert (head.predict(X[y == 0]) == 0).mean() > 0.8


def test_bad_head_options():
    with pytest.raises(UserError):
        make_head("svm")
    with pytest.raises(UserError):
        SoftmaxHead(epochs=0)
    with pytest.raises(UserError, match="hidden sizes"):
        make_head("mlp", hidden=[256, -3])
    with pytest.raises(UserError, match="--Cs"):
        make_head("logreg", Cs=[0.1, -1])


def test_train_on_codes_writes_a_complete_run(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "cache", **FAST)[0]
    run_dir, metrics = train_on_codes(path, "logreg", {"Cs": (0.1, 1.0)}, tmp_path / "runs", log=lambda *a: None)
    assert {p.name for p in run_dir.iterdir()} >= {"head.npz", "head.json", "record.json", "report.txt", "confusion.png"}
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["metrics"]["accuracy"] == metrics["accuracy"] and rec["n_test"] == len(rec["test_paths"])
    cs = CodeSet.load(path)
    test = cs.split == TEST
    assert metrics["accuracy"] == pytest.approx((load_head(run_dir).predict(cs.X[test]) == cs.y[test]).mean())
    assert "precision" in (run_dir / "report.txt").read_text()
    assert "most confused" in (run_dir / "report.txt").read_text()
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_head_cli(images, tmp_path):
    common = ["--data", images, "--weights", "none", "--image-size", "32", "--cache-dir", tmp_path / "cache"]
    r = run_script("train", *common, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "make codes DATA=" in r.stderr and "Traceback" not in r.stderr
    assert len(user_error_lines(r.stderr)) == 1
    generate_codes(images, cache_dir=tmp_path / "cache", **FAST)
    r = run_script("train", *common, "--runs-dir", tmp_path / "runs", "--head", "softmax", "--epochs", "5")
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    run = next((tmp_path / "runs").iterdir())
    assert (run / "head.keras").exists() and (run / "history.png").exists()


def test_holdout_without_validation_set_is_stratified_and_disjoint():
    from pipeline.heads import holdout
    X, y = blobs(n_per_class=20)
    Xf, yf, Xv, yv = holdout(X, y, None, None, fraction=0.1)
    assert len(yv) == 10 and len(yf) == 90 and np.bincount(yv).tolist() == [2] * 5
    assert not {tuple(r) for r in Xv} & {tuple(r) for r in Xf}
    assert holdout(X[:6], np.arange(6), None, None)[2] is None  # one image per class: no holdout
    Xg, yg, Xvg, yvg = holdout(X, y, X[:3], y[:3])
    assert Xg is X and Xvg.shape[0] == 3


def test_most_confused_pairs_are_listed_largest_first():
    cm = [[5, 0, 3], [1, 4, 0], [0, 2, 6]]
    assert most_confused(cm, ["a", "b", "c"], k=2) == [("a", "c", 3), ("c", "b", 2)]
    assert most_confused(np.eye(3, dtype=int), ["a", "b", "c"]) == []
