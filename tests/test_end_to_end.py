"""The README's main job on the shipped sample: real EfficientNet-Lite0 codes, a head, an export."""
import json

import pytest

from conftest import ROOT, run_script
from pipeline.codes import CodeSet
from pipeline.dataset import TEST, VAL
from pipeline.heads import make_head
from pipeline.sweep import draw_train


def test_default_job_on_the_embedded_sample(tmp_path):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    r = run_script("generate_codes.py", "--cache-dir", cache, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "120 images x 1280 values" in r.stdout
    assert r.stderr == ""  # TensorFlow's start-up lines are held back; no progress bar asked for
    r = run_script("train_head.py", "--head", "logreg", "--cache-dir", cache, "--runs-dir", runs)
    assert r.returncode == 0, r.stderr
    run = next(runs.iterdir())
    rec = json.loads((run / "record.json").read_text())
    assert rec["n_test"] == 20 and rec["metrics"]["accuracy"] >= 0.9  # 5 classes: chance is 0.2
    r = run_script("export.py", run)
    assert r.returncode == 0, r.stderr
    r = run_script("predict.py", ROOT / "examples/caltech5/dalmatian/image_0003.jpg", "--model", run / "model.keras")
    assert r.returncode == 0 and r.stdout.split(": ")[1].startswith("dalmatian"), r.stdout


@pytest.mark.parametrize("head", ["softmax", "mlp", "logreg"])
def test_one_image_per_class_is_enough_on_the_sample(tmp_path_factory, head):
    """Real Lite0 codes, one training image per class: the standardization must not blow up
    values that happen to vary little among five images (it did: 18-49% test accuracy)."""
    cache = tmp_path_factory.getbasetemp() / "sample-cache"
    r = run_script("generate_codes.py", "--cache-dir", cache, "--no-progress")
    assert r.returncode == 0, r.stderr
    cs = CodeSet.load(next(cache.rglob("top_activation-avg.h5")))
    val, test = cs.split == VAL, cs.split == TEST
    for repeat in range(3):
        train = draw_train(cs.y, cs.split, 1, 0, repeat)
        model = make_head(head, seed=repeat).fit(cs.X[train], cs.y[train], cs.X[val], cs.y[val], n_classes=5)
        assert (model.predict(cs.X[test]) == cs.y[test]).mean() >= 0.8, (head, repeat)  # chance: 0.2
