import json

import numpy as np
import pytest
from helpers import FAST, run_script, user_error_lines

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import TEST
from pipeline.errors import UserError
from pipeline.heads import HEADS, LogRegHead, MLPHead, SoftmaxHead, load_head, make_head
from pipeline.reports._metrics import most_confused
from pipeline.runs import train


def blobs(n_per_class=40, n_classes=5, dim=64, seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)
    return X, y


FAST_PARAMS = {"softmax": {"epochs": 60}, "mlp": {"epochs": 60}, "logreg": {}, "prototype": {}}


@pytest.mark.parametrize("name", list(HEADS))
def test_each_head_is_well_above_chance_on_separable_codes(name, tmp_path):
    X, y = blobs()
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(y))
    tr, va, te = idx[:120], idx[120:160], idx[160:]
    head = make_head(name, **FAST_PARAMS[name])
    head.fit(X[tr], y[tr], validation_data=(X[va], y[va]))
    proba = head.predict_proba(X[te])
    assert proba.shape == (len(te), 5) and head.classes_.tolist() == [0, 1, 2, 3, 4] and head.n_features_in_ == 64
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-4)
    assert (proba.argmax(1) == y[te]).mean() >= 0.9  # chance is 0.2
    head.save(tmp_path)
    again = load_head(tmp_path)
    assert type(again) is type(head) and again.get_params() == head.get_params()
    np.testing.assert_allclose(again.predict_proba(X[te]), proba, atol=1e-5)
    np.testing.assert_allclose(again.to_keras()(X[te]), proba, atol=1e-4)  # as exported


@pytest.mark.parametrize("name", list(HEADS))
def test_heads_are_scikit_learn_estimators(name):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score

    X, y = blobs(n_per_class=20, n_classes=3, dim=16)
    labels = np.array(["cat", "dog", "owl"])[y]  # any labels, as scikit-learn allows
    head = HEADS[name]()  # constructs with no arguments
    assert clone(head).get_params() == head.get_params()
    params = {"softmax": {"epochs": [5, 20]}, "mlp": {"epochs": [5, 20]}, "logreg": {"Cs": [(0.01,), (1.0,)]},
              "prototype": {"scale": [1.0, 10.0]}}[name]
    scores = cross_val_score(HEADS[name](**{k: v[1] for k, v in params.items()}), X, labels, cv=3)
    assert scores.mean() >= 0.9
    search = GridSearchCV(HEADS[name](), params, cv=3).fit(X, labels)
    assert search.best_estimator_.classes_.tolist() == ["cat", "dog", "owl"]
    assert set(search.predict(X)) <= {"cat", "dog", "owl"} and search.score(X, labels) >= 0.9


@pytest.mark.parametrize("name, params, message", [
    ("softmax", {"epochs": 0}, "epochs must be a whole number >= 1"),
    ("mlp", {"hidden": (256, -3)}, "hidden must be whole numbers >= 1"),
    ("mlp", {"dropout": 1.0}, "dropout must be in [0, 1)"),
    ("logreg", {"Cs": (0.1, -1)}, "Cs must be one or more finite numbers > 0"),
    ("prototype", {"scale": 0}, "scale must be > 0"),
])
def test_parameters_are_checked_in_fit_with_their_name(name, params, message):
    head = HEADS[name](**params)  # __init__ only stores them
    assert head.get_params()[next(iter(params))] == next(iter(params.values()))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        head.fit(*blobs(n_per_class=5, n_classes=2, dim=4))


def test_prototype_head_with_one_image_per_class():
    X, y = blobs(n_per_class=30, n_classes=5, dim=64, sep=1.0, seed=4)
    first = np.array([np.flatnonzero(y == c)[0] for c in range(5)])
    rest = np.setdiff1d(np.arange(len(y)), first)
    head = HEADS["prototype"]().fit(X[first], y[first])
    assert (head.predict(X[rest]) == y[rest]).mean() >= 0.9


def test_heads_train_without_validation_set():
    X, y = blobs()
    train = np.arange(len(y)) % 4 != 0
    for head in (SoftmaxHead(epochs=30), LogRegHead(Cs=(0.01, 1.0)), HEADS["prototype"]()):
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
    head = LogRegHead(Cs=(1e-4, 1.0)).fit(X[train], y[train], validation_data=(X[val], y[val]))
    scores = head.history_["val_accuracy_by_C"]
    assert scores["0.0001"] <= 0.55 and scores["1.0"] >= 0.9 and head.C_ == 1.0
    assert head.model_.named_steps["logisticregression"].C == 1.0
    # Where both do equally well, the stronger regularization is kept.
    easy = LogRegHead(Cs=(0.01, 1.0)).fit(*blobs(seed=3), validation_data=blobs(seed=3))
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
    head = LogRegHead(Cs=(1e-4, 1.0)).fit(X[y < 4], y[y < 4], validation_data=(X[y < 4][:10], y[y < 4][:10]),
                                          classes=np.arange(5))
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
    with pytest.raises(UserError, match="unknown head 'svm'"):
        make_head("svm")
    with pytest.raises(UserError, match="unexpected keyword"):
        make_head("prototype", epochs=3)
    with pytest.raises(UserError, match="epochs must be"):  # a user error too: one line in the CLI
        SoftmaxHead(epochs=0).fit(*blobs(n_per_class=5, n_classes=2, dim=4))


def test_train_on_codes_writes_a_complete_run(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "cache", **FAST)[0]
    run = train(path, 'logreg', runs_dir=tmp_path / 'runs', Cs=(0.1, 1.0))
    run_dir, metrics = run.path, run.metrics
    assert {p.name for p in run_dir.iterdir()} >= {"head.npz", "head.json", "record.json", "report.txt", "confusion.png"}
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["metrics"]["accuracy"] == metrics["accuracy"] and rec["n_test"] == len(rec["test_paths"])
    cs = CodeSet.load(path)
    test = cs.split == TEST
    assert metrics["accuracy"] == pytest.approx((load_head(run_dir).predict(cs.X[test]) == cs.y[test]).mean())
    assert "precision" in (run_dir / "report.txt").read_text()
    assert "most confused" in (run_dir / "report.txt").read_text()
    assert (run_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
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
