"""The README's main job on the shipped sample: real EfficientNet-Lite0 codes, a head, an export."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import ROOT, run_script, user_env

from pipeline.codes import CodeSet
from pipeline.data import TEST, VAL
from pipeline.heads import make_head
from pipeline.runs._sweep import draw_train


def shim(script, *args):
    """The top-level scripts people know, run as they run them: python generate_codes.py ..."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, env=user_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_default_job_on_the_embedded_sample(tmp_path):
    """The README's job: stage 1 and a head through the top-level scripts, then export and
    predict through the installed cnn-codes command, run from another folder."""
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    r = shim("generate_codes.py", "--cache-dir", cache, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "120 images x 1280 values" in r.stdout
    assert r.stderr == ""  # TensorFlow's start-up lines are held back; no progress bar asked for
    r = shim("train_head.py", "--head", "logreg", "--cache-dir", cache, "--runs-dir", runs, "--Cs", "0.1", "1")
    assert r.returncode == 0, r.stderr
    run = next(runs.iterdir())
    rec = json.loads((run / "record.json").read_text())
    # (each image's part drawn by its path: about 15% of 120 test images, every class with some)
    assert rec["n_test"] == int((CodeSet(rec["codes"]).split == TEST).sum()) and 10 <= rec["n_test"] <= 30
    assert rec["metrics"]["accuracy"] >= 0.9  # 5 classes: chance is 0.2
    r = run_script("export", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script("predict", ROOT / "examples/caltech5/dalmatian/image_0003.jpg", "--model", run / "model.keras",
                   cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split(": ")[1].startswith("dalmatian"), r.stdout
    r = run_script("compare", cwd=runs.parent)  # runs/ relative to the current folder
    assert r.returncode == 0 and run.name in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "mlp", "logreg", "prototype"])
def test_one_image_per_class_is_enough_on_the_sample(tmp_path_factory, head):
    """Real Lite0 codes, one training image per class: the standardization must not blow up
    values that happen to vary little among five images (it did: 18-49% test accuracy)."""
    cache = tmp_path_factory.getbasetemp() / "sample-cache"
    r = shim("generate_codes.py", "--cache-dir", cache, "--no-progress")
    assert r.returncode == 0, r.stderr
    cs = CodeSet.load(next(cache.rglob("top_activation-avg.h5")))
    val, test = cs.split == VAL, cs.split == TEST
    for repeat in range(3):
        train = draw_train(cs.y, cs.split, 1, 0, repeat)
        params = {"seed": repeat} if head != "prototype" else {}
        model = make_head(head, **params).fit(cs.X[train], cs.y[train], validation_data=(cs.X[val], cs.y[val]),
                                              classes=np.arange(5))
        assert (model.predict(cs.X[test]) == cs.y[test]).mean() >= 0.8, (head, repeat)  # chance: 0.2


def test_compare_marks_runs_made_on_different_splits(tmp_path):
    from helpers import fake_codes

    from pipeline.runs import compare_table, train

    a, _, _ = fake_codes(tmp_path / "a.h5")
    runs = tmp_path / "runs"
    first, again = train(a, "prototype", runs_dir=runs), train(a, "logreg", runs_dir=runs)
    assert first.record["split_digest"] == again.record["split_digest"] == CodeSet(a).split_digest()
    table = compare_table(runs_dir=runs)
    assert first.record["split_digest"][:8] in table and "different splits" not in table
    b, _, split = fake_codes(tmp_path / "b.h5", seed=0)
    with h5py.File(b, "r+") as f:  # the same images and labels, one test image moved to training
        moved = split.copy()
        moved[np.flatnonzero(split == 2)[0]] = 0
        f["split"][...] = moved
    other = train(b, "prototype", runs_dir=runs)
    assert other.record["split_digest"] != first.record["split_digest"]
    assert "tested on 2 different splits" in compare_table(runs_dir=runs)
