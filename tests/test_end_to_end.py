"""The README's main job on the shipped sample: real EfficientNet-Lite0 codes, a head, an export."""
import json


from conftest import ROOT, run_script


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
