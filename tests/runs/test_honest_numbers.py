"""Numbers a user can trust: every figure with its 95% interval on the right n, cross-validation
that never tests a fold's head on its own training images, compare on common test images."""
import csv
import json
import math
import re

import h5py
import numpy as np
import pytest
from helpers import fake_codes, write_code_file
from sklearn.metrics import average_precision_score

from pipeline.data import TEST, TRAIN, VAL
from pipeline.reports import mean_per_class_interval, wilson
from pipeline.reports._intervals import weighted_average_precision
from pipeline.runs import compare_table, train

LINE = re.compile(r"test accuracy (?P<a>[0-9.]+) 95% CI \[(?P<l>[0-9.]+), (?P<h>[0-9.]+)\], .*\(n=(?P<n>\d+)\)")
CV_LINE = re.compile(r"^(?P<k>\d+)-fold accuracy (?P<a>[0-9.]+) ± (?P<s>[0-9.]+) over (?P=k) folds, "
                     r"95% CI \[(?P<l>[0-9.]+), (?P<h>[0-9.]+)\]")


def wilson_by_hand(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's score interval from its formula (not SciPy's code)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def width_ratio(printed, accuracy, n) -> float:
    low, high = wilson_by_hand(accuracy, n)
    return (printed[1] - printed[0]) / (high - low)


def test_the_summary_line_carries_an_interval_of_the_test_images(tmp_path, logs):
    path, y, split = fake_codes(tmp_path / "codes.h5", per_class=(30, 12, 8, 20), dim=4)
    with h5py.File(path, "r+") as f:  # overlapping classes: an accuracy well inside (0, 1)
        f["codes"][...] = f["codes"][...] + np.random.default_rng(1).normal(0, 6, f["codes"].shape)
    run = train(path, "logreg", runs_dir=tmp_path / "runs")
    line = next(l for l in logs if "test accuracy" in l)
    m = LINE.search(line)
    assert m, line
    accuracy, n = float(m["a"]), int(m["n"])
    printed = (float(m["l"]), float(m["h"]))
    assert n == int((split == TEST).sum()) == run.metrics["n"] and 0.2 < accuracy < 0.95
    assert printed[0] < accuracy < printed[1] and printed[1] - printed[0] > 0.1
    assert 1 / 1.5 < width_ratio(printed, accuracy, n) < 1.5
    assert width_ratio(printed, accuracy, 4 * n) > 1.5  # the check rejects an interval of the wrong n (shown once)
    assert run.metrics["accuracy_ci"] == pytest.approx(printed, abs=1e-4)
    assert run.metrics["accuracy_ci"] == pytest.approx(wilson_by_hand(accuracy, n), abs=1e-4)
    record = json.loads((run.path / "record.json").read_text())
    assert record["metrics"]["mean_per_class_accuracy_ci"][0] < record["metrics"]["mean_per_class_accuracy"]
    html = (run.path / "report.html").read_text()
    assert "95% CI" in html and "what the intervals mean" in html


def test_wilson_and_the_bootstrap_behave():
    assert wilson(42, 42)[1] == pytest.approx(1.0) and wilson(20, 20)[0] == pytest.approx(0.8389, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 15)
    pred = np.where(rng.random(150) < 0.7, y, (y + 1) % 10)
    small = mean_per_class_interval(y, pred)
    big = mean_per_class_interval(np.repeat(y, 16), np.repeat(pred, 16))
    point = np.mean([(pred[y == c] == c).mean() for c in range(10)])
    assert small[0] < point < small[1] and big[0] < point < big[1]
    assert 0.05 < small[1] - small[0] and (big[1] - big[0]) < 0.5 * (small[1] - small[0])  # 16x the images: 1/4 wide
    assert mean_per_class_interval(y, pred) == small  # seeded


def test_weighted_average_precision_is_scikit_learns():
    rng = np.random.default_rng(3)
    for _ in range(5):
        truth, score = rng.random(50) < 0.3, np.round(rng.random(50), 1)  # ties too
        W = rng.integers(0, 3, size=(4, 50)).astype(float)
        want = [average_precision_score(truth, score, sample_weight=w) if (w * truth).sum() else np.nan for w in W]
        assert np.allclose(weighted_average_precision(W, truth, score), want, equal_nan=True)


def noise_codes(path, n=90, dim=300, classes=3, seed=0):
    """Codes of pure noise with random labels: a head that memorizes its training images (more
    values than images) is right on them and at chance elsewhere."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes)
    split = np.where(np.arange(n) % 5 == 0, TEST, TRAIN).astype(np.int8)
    write_code_file(path, rng.normal(0, 1, (n, dim)), y, split, [f"c{c}/{i}.jpg" for i, c in enumerate(y)],
                    [f"c{c}" for c in range(classes)], backbone="fake", layer="top", pooling="avg", image_size=32)
    return path, y


def test_cross_validation_tests_each_image_by_a_head_that_never_saw_it(tmp_path, logs, monkeypatch):
    path, y = noise_codes(tmp_path / "noise.h5")
    run = train(path, "logreg", runs_dir=tmp_path / "runs", cv=5, Cs=(1e4,))
    m = next(CV_LINE.match(l) for l in logs if CV_LINE.match(l))
    assert int(m["k"]) == 5 and float(m["l"]) < float(m["a"]) < float(m["h"]) and float(m["s"]) > 0
    assert any("the stored split is not used" in l for l in logs)
    assert float(m["a"]) < 0.6  # chance is 1/3; a head tested on its own training images would be near 1
    with open(run.path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == sorted(f"c{c}/{i}.jpg" for i, c in enumerate(y))  # every image
    record = run.record
    assert record["n_train"] == len(y) and record["cv"]["folds"] == 5 and len(record["cv"]["fold_scores"]) == 5
    summary = next(l for l in logs if "test accuracy" in l and "->" in l)
    assert re.search(r"on 90 codes of 300 values .*-> ", summary)

    # the check rejects a leak (shown once): folds whose test images are also trained on
    from sklearn.model_selection import StratifiedKFold
    real_split = StratifiedKFold.split

    def leaky(self, X, y=None, groups=None):
        for fit_on, test_on in real_split(self, X, y, groups):
            yield np.union1d(fit_on, test_on), test_on
    monkeypatch.setattr(StratifiedKFold, "split", leaky)
    logs.clear()
    train(path, "logreg", runs_dir=tmp_path / "runs", cv=5, Cs=(1e4,))
    leaked = next(CV_LINE.match(l) for l in logs if CV_LINE.match(l))
    assert float(leaked["a"]) > 0.9


def test_cross_validation_of_a_multi_label_set(tmp_path, logs):
    rng = np.random.default_rng(0)
    Y = (rng.random((60, 3)) < 0.4).astype(np.uint8)
    X = Y @ rng.normal(0, 1, (3, 8)) + rng.normal(0, 1.5, (60, 8))  # overlapping: an mAP below 1
    split = np.where(np.arange(60) % 4 == 0, TEST, np.where(np.arange(60) % 4 == 1, VAL, TRAIN)).astype(np.int8)
    write_code_file(tmp_path / "m.h5", X, Y, split, [f"x/{i}.jpg" for i in range(60)], ["a", "b", "c"],
                    backbone="fake", layer="top", pooling="avg", image_size=32, task="multi-label")
    with h5py.File(tmp_path / "m.h5", "r+") as f:  # a multi-label set holds 0/1 targets, not labels
        f.move("labels", "targets")
    run = train(tmp_path / "m.h5", "logreg", runs_dir=tmp_path / "runs", cv=3)
    line = next(l for l in logs if l.startswith("3-fold mAP "))
    assert re.match(r"3-fold mAP [0-9.]+ ± [0-9.]+ over 3 folds, 95% CI \[[0-9.]+, [0-9.]+\]", line)
    assert run.metrics["n"] == 60 and run.metrics["mAP_ci"][0] < run.metrics["mAP"] <= run.metrics["mAP_ci"][1]


def test_compare_marks_runs_it_cannot_tell_apart_and_uses_common_test_images(tmp_path):
    path, _, split = fake_codes(tmp_path / "a.h5")
    runs = tmp_path / "runs"
    train(path, "prototype", runs_dir=runs)
    train(path, "logreg", runs_dir=runs)
    table = compare_table(runs_dir=runs)
    assert "best" in table and "not distinguishable" in table and "% [" in table  # separable: both near 100%
    assert "common" not in table and "different splits" not in table
    train(path, "logreg", runs_dir=runs, cv=4)  # tested on every labelled image
    table = compare_table(runs_dir=runs)
    n_test = int((split == TEST).sum())
    assert f"on the {n_test} test images all these runs were tested on" in table, table


def test_a_run_lists_what_it_trained_on_and_a_warm_up_head_never_tests_on_it(tmp_path, logs):
    from pipeline.codes import CodeSet
    from pipeline.reports import read_trained_on
    from pipeline.runs._finetune import _never_seen

    path, _, split = fake_codes(tmp_path / "a.h5")
    run = train(path, "logreg", runs_dir=tmp_path / "runs")
    cs = CodeSet(path)
    seen = read_trained_on(run.path)
    assert seen == {p for p, s in zip(cs.paths, split) if s in (TRAIN, VAL)} and run.record["train_digest"]
    test = np.flatnonzero(split == TEST)
    assert np.array_equal(_never_seen(test, cs, run.path)[0], test)  # the same split: every test image counts
    with h5py.File(path, "r+") as f:  # split anew since: two of the head's training images now test images
        moved = np.flatnonzero(split == TRAIN)[:2]
        f["split"][moved] = TEST
    cs = CodeSet(path)
    test = np.flatnonzero(cs.split == TEST)
    kept, _ = _never_seen(test, cs, run.path)
    assert len(kept) == len(test) - 2 and not set(kept) & set(moved)
    assert any(f"2 of the {len(test)} test images" in line and "never saw" in line for line in logs)
