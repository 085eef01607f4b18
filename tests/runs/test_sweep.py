import csv
import json

import numpy as np
import pytest
from helpers import fake_codes, run_script, user_error_lines

from pipeline.data import TEST, TRAIN, VAL
from pipeline.errors import UserError
from pipeline.runs import parse_ns, sweep
from pipeline.runs._sweep import draw_train


def test_draw_takes_min_n_per_class_from_training_split_only():
    y = np.repeat(np.arange(3), [10, 4, 7])
    split = np.tile([TRAIN, TRAIN, TEST, VAL, TRAIN, TRAIN, TRAIN], 3)
    for n in (1, 2, 3, 5, "all"):
        idx = draw_train(y, split, n, seed=0, repeat=1)
        assert (split[idx] == TRAIN).all()
        for c in range(3):
            available = ((y == c) & (split == TRAIN)).sum()
            assert (y[idx] == c).sum() == (available if n == "all" else min(n, available))
    a2, a5 = draw_train(y, split, 2, 0, 0), draw_train(y, split, 5, 0, 0)
    assert set(a2) <= set(a5)  # nested draws
    assert not np.array_equal(draw_train(y, split, 2, 0, 0), draw_train(y, split, 2, 0, 1))


def test_parse_ns():
    assert parse_ns(["5", "1", "all", "5"]) == [1, 5, "all"]
    for bad in ([], ["0"], ["x"]):
        with pytest.raises(UserError):
            parse_ns(bad)


@pytest.mark.slow
def test_sweep_outputs_and_determinism_across_workers(tmp_path):
    path, y, split = fake_codes(tmp_path / "codes.h5")
    kw = dict(heads=("logreg", "softmax"), ns=["1", "3", "all"], repeats=2, seed=3, progress=False,
              head_params={"softmax": {"epochs": 15}, "logreg": {"Cs": (0.1, 1.0)}})
    one = sweep([path], n_jobs=1, runs_dir=tmp_path / 'r1', **kw).path
    two = sweep([path], n_jobs=2, runs_dir=tmp_path / 'r2', **kw).path
    rows1 = list(csv.DictReader(open(one / "sweep.csv")))
    rows2 = list(csv.DictReader(open(two / "sweep.csv")))
    assert len(rows1) == 2 * 3 * 2
    key = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    assert [key(r) for r in rows1] == [key(r) for r in rows2]
    n_train = {(r["head"], r["n"]): int(r["n_train"]) for r in rows1}
    train_counts = np.bincount(y[split == TRAIN])
    assert n_train[("logreg", "1")] == 4 and n_train[("logreg", "3")] == 12
    assert n_train[("logreg", "all")] == train_counts.sum()
    summary = json.loads((one / "summary.json").read_text())
    s_all = [s for s in summary["summary"] if s["head"] == "logreg" and s["n"] == "all"][0]
    assert len(s_all["accuracy_per_repeat"]) == 2 and s_all["accuracy_mean"] > 0.8
    assert "mean_per_class_accuracy_mean" in s_all
    s3 = [s for s in summary["summary"] if s["head"] == "logreg" and s["n"] == 3][0]
    assert s3["classes_with_fewer_than_n"] == []
    png = (one / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(one / "sweep.png") as im:
        assert im.size[0] > 500 and im.size[1] > 300


@pytest.mark.slow
def test_capped_classes_are_recorded(tmp_path):
    path, y, split = fake_codes(tmp_path / "codes.h5")
    run = sweep([path], heads=('logreg',), ns=['5'], repeats=1, progress=False, n_jobs=1, runs_dir=tmp_path / 'r').path
    s = json.loads((run / "summary.json").read_text())["summary"][0]
    # class c3 has 8 images: 2 test, 2 val, 4 train < 5
    assert s["classes_with_fewer_than_n"] == ["c2"]


@pytest.mark.slow
def test_default_ns_leave_out_what_no_class_reaches(logs, tmp_path):
    path, *_ = fake_codes(tmp_path / "codes.h5")  # largest class: 21 training images
    run = sweep([path], heads=('logreg',), repeats=1, progress=False, n_jobs=1, runs_dir=tmp_path / 'r').path
    assert json.loads((run / "summary.json").read_text())["ns"] == [1, 2, 5, 10, 15, 20, "all"]
    assert any("N=30 left out" in n for n in logs)


@pytest.mark.slow
def test_bad_sweep_input(tmp_path):
    path, *_ = fake_codes(tmp_path / "codes.h5")
    with pytest.raises(UserError, match="larger than any class"):
        sweep([path], ns=['500'], progress=False, runs_dir=tmp_path / 'r')
    with pytest.raises(UserError, match="empty"):
        sweep([path], ns=[], progress=False)
    r = run_script("sweep", "--data", tmp_path / "nodata", "--cache-dir", tmp_path / "cache")
    assert r.returncode == 2 and "make codes DATA=" in r.stderr and len(user_error_lines(r.stderr)) == 1
    r = run_script("sweep", "--codes", path, "--n")
    assert r.returncode == 2 and "empty" in r.stderr and "Traceback" not in r.stderr
