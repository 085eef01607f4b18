"""Multi-label heads on codes (fast, synthetic) and a multi-label code set: stored as targets, never
readable as single-label, trained, reported, predicted."""
import csv

import h5py
import numpy as np
import pytest
from helpers import FAST

from pipeline.codes import CodeSet, generate_codes
from pipeline.heads import HEADS, make_head
from pipeline.heads import best_f1_thresholds, load_head
from pipeline.reports import evaluate_multi_label
from pipeline.runs import train


def separable(n=400, d=32, labels=4, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, labels))
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, ((X @ W) > 0.5).astype(int)


@pytest.mark.parametrize("name", [pytest.param(h, marks=pytest.mark.slow) if h in ("softmax", "mlp") else h
                                  for h in HEADS])
def test_each_head_learns_labels_and_keeps_its_thresholds(name, tmp_path):
    from sklearn.metrics import average_precision_score

    X, Y = separable()
    tr, va, te = slice(0, 250), slice(250, 320), slice(320, 400)
    head = make_head(name, **({} if name == "prototype" else {"seed": 0})).fit(
        X[tr], Y[tr], validation_data=(X[va], Y[va]))
    P = head.predict_proba(X[te])
    assert P.shape == (80, 4) and not np.allclose(P.sum(1), 1)  # independent probabilities, not a softmax
    mAP = np.mean([average_precision_score(Y[te][:, j], P[:, j]) for j in range(4)])
    assert mAP >= 0.85, mAP  # chance: the share of positives, about 0.3
    assert np.array_equal(head.predict(X[te]), (P >= head.thresholds_).astype(int))
    assert np.array_equal(head.thresholds_, best_f1_thresholds(Y[va], head.predict_proba(X[va])))
    head.save(tmp_path)
    again = load_head(tmp_path)
    np.testing.assert_allclose(again.predict_proba(X[te]), P, atol=1e-5)
    np.testing.assert_array_equal(again.thresholds_, head.thresholds_)
    np.testing.assert_allclose(np.asarray(head.to_keras()(X[te])), P, atol=1e-4)  # what export builds on


def test_thresholds_maximise_f1_and_metrics_are_right():
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    P = np.array([[0.9, 0.2], [0.4, 0.1], [0.3, 0.8], [0.35, 0.3]])
    t = best_f1_thresholds(Y, P)
    assert t[0] == pytest.approx(0.4) and t[1] == pytest.approx(0.8)
    m = evaluate_multi_label(Y, P, t, ["a", "b"])
    assert m["mAP"] == pytest.approx(1.0) and m["accuracy"] == 1.0 and m["micro_f1"] == 1.0
    worse = evaluate_multi_label(Y, P[:, ::-1], t, ["a", "b"])  # probabilities of the wrong labels
    assert worse["mAP"] < 0.6 and worse["accuracy"] < 1.0
    assert [r["label"] for r in m["per_label"]] == ["a", "b"] and m["per_label"][1]["test_images"] == 1


def test_multi_label_code_set_end_to_end(tmp_path, logs):
    """Coloured halves side by side, labelled with both colours: codes, training, the run."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220), "yellow": (220, 220, 40)}
    names = list(colours)
    data = tmp_path / "pairs"
    data.mkdir()
    rows = []
    for i in range(80):
        a, b = rng.choice(4, 2, replace=False)
        halves = [np.clip(rng.normal(colours[names[c]], 30, (32, 16, 3)), 0, 255) for c in (a, b)]
        Image.fromarray(np.concatenate(halves, 1).astype(np.uint8)).save(data / f"im{i:03d}.png")
        rows.append((f"im{i:03d}.png", f"{names[a]}|{names[b]}"))
    with open(data / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "tags"), *rows])
    path = generate_codes(data, cache_dir=tmp_path / "cache", **FAST)[0]
    assert "4 labels, multi-label" in logs[0]
    with h5py.File(path) as f:  # no single-label "labels" a reader could take for classes
        assert "labels" not in f and f["targets"].shape == (80, 4) and f.attrs["task"] == "multi-label"
        assert sorted(f["targets"][()].sum(1).tolist()) == [2] * 80
    cs = CodeSet(path)
    assert cs.multi_label and cs.class_names == sorted(names)
    logs.clear()
    run = train(path, "logreg", runs_dir=tmp_path / "runs")
    line = next(l for l in logs if l.startswith("logreg on "))
    assert "test accuracy" in line and " mAP " in line and "codes of 1280 values -> " in line
    assert run.metrics["mAP"] > 0.5 and run.record["task"] == "multi-label" and len(run.record["thresholds"]) == 4
    with open(run.path / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == run.record["n_test"] and all("|" in p["true"] for p in preds)
    html = (run.path / "report.html").read_text()
    assert "Per label" in html and "mAP" in html and "false positives and false negatives" in html


@pytest.mark.parametrize("bad", ["x", [0.5], [0.5, 0.5, 0.5, 2.0], None, [[0.5] * 4]])
def test_a_head_file_with_malformed_thresholds_is_one_error(tmp_path, bad):
    import json

    from pipeline.errors import UserError

    X, Y = separable()
    make_head("prototype").fit(X[:300], Y[:300], validation_data=(X[300:], Y[300:])).save(tmp_path)
    desc = json.loads((tmp_path / "head.json").read_text())
    assert len(desc["thresholds"]) == 4 and load_head(tmp_path).thresholds_.shape == (4,)
    desc["thresholds"] = bad
    (tmp_path / "head.json").write_text(json.dumps(desc))
    with pytest.raises(UserError, match=r"head\.json is not a valid head description: .*thresholds"):
        load_head(tmp_path)
