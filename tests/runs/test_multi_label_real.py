"""A real multi-label set built from Caltech-101 photos (two photos of different classes side by side,
labelled with both) through every step: codes, each head, sweep, report, export, predict, audit.
Skips cleanly where ../shared is absent."""
import csv
import json

import numpy as np
import pytest
from helpers import CALTECH, check_html, needs_caltech

import pipeline as cc
from pipeline.codes import CodeSet

pytestmark = [pytest.mark.slow, needs_caltech]

CLASSES = ("airplanes", "Faces_easy", "Leopards", "Motorbikes", "watch")
N_IMAGES = 150


def side_by_side(root):
    """``N_IMAGES`` pictures of two photos of different classes side by side, and labels.csv."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = {c: sorted((CALTECH / c).glob("*.jpg"))[:60] for c in CLASSES}
    root.mkdir(parents=True)
    rows = []
    for i in range(N_IMAGES):
        a, b = rng.choice(len(CLASSES), 2, replace=False)
        halves = [Image.open(photos[CLASSES[c]][rng.integers(60)]).convert("RGB").resize((160, 160)) for c in (a, b)]
        picture = Image.new("RGB", (320, 160))
        picture.paste(halves[0], (0, 0))
        picture.paste(halves[1], (160, 0))
        picture.save(root / f"pair{i:03d}.jpg", quality=90)
        rows.append((f"pair{i:03d}", ";".join(sorted((CLASSES[a], CLASSES[b])))))  # ids, labels joined by ;
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image_id", "labels"), *rows])
    return rows


def test_a_real_multi_label_set_through_every_step(tmp_path, logs):
    data = tmp_path / "pairs"
    rows = side_by_side(data)
    codes = cc.generate_codes(data, "efficientnet_lite0", cache_dir=tmp_path / "cache", progress=False)[0]
    assert logs[0].startswith("layout: labels file labels.csv") and "5 labels, multi-label" in logs[0]
    cs = CodeSet(codes)
    assert cs.multi_label and cs.y.shape == (N_IMAGES, 5) and (cs.y.sum(1) == 2).all()
    runs_dir = tmp_path / "runs"

    results = {}
    for head in ("logreg", "softmax", "mlp", "prototype"):
        run = cc.train(codes, head, runs_dir=runs_dir)
        results[head] = run.metrics["mAP"]
        assert run.record["task"] == "multi-label" and len(run.record["thresholds"]) == 5
        check_html(run.path / "report.html")
    print("mAP per head:", results)
    assert results["logreg"] >= 0.90, results  # chance: the share of positives, 0.4
    assert min(results.values()) >= 0.7, results

    logreg = sorted(runs_dir.glob("*-logreg"))[-1]
    html = (logreg / "report.html").read_text()
    assert "Per label" in html and "false positives and false negatives" in html
    with open(logreg / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    truth = {f"pair{i:03d}.jpg": set(r[1].split(";")) for i, r in enumerate(rows)}
    assert all(set(p["true"].split("|")) == truth[p["path"]] for p in preds)
    exact = np.mean([p["true"] == p["predicted"] for p in preds])
    assert exact == pytest.approx(json.loads((logreg / "record.json").read_text())["metrics"]["accuracy"])

    sweep = cc.sweep([codes], heads=("logreg", "prototype"), ns=[2, 10, "all"], repeats=2, runs_dir=runs_dir,
                     progress=False, n_jobs=2)
    summary = json.loads((sweep.path / "summary.json").read_text())
    assert summary["metric"] == "mAP"
    curve = [s["accuracy_mean"] for s in summary["summary"] if s["head"] == "logreg"]
    assert curve[-1] >= 0.9 and curve[-1] >= curve[0], curve  # more images per label: no worse

    exported = cc.export(logreg, formats=["tflite", "onnx"], progress=False)
    assert exported["tflite"].is_file() and exported["onnx"].is_file()
    manifest = json.loads((logreg / "exports.json").read_text())
    assert {e["format"] for e in manifest["exports"]} == {"tflite", "onnx"}
    assert all(e["max_probability_difference"] < 1e-3 and e["top1_agreement"] == 1.0 for e in manifest["exports"])
    assert manifest["task"] == "multi-label" and manifest["thresholds"] == pytest.approx(
        json.loads((logreg / "record.json").read_text())["thresholds"])

    test = [p["path"] for p in preds][:12]
    predicted = dict(cc.predict(logreg, data))
    rows_pred = {path.rsplit("/", 1)[-1]: [name for name, _ in top] for path, top in predicted.items()}
    want = {p["path"]: p["predicted"].split("|") if p["predicted"] else [] for p in preds}
    assert all(sorted(rows_pred[t]) == sorted(want[t]) for t in test), [(t, rows_pred[t], want[t]) for t in test]

    audit = cc.audit(codes, runs_dir=runs_dir, progress=False)
    with open(audit.path / "label_issues.csv") as fh:
        issues = list(csv.DictReader(fh))
    assert all("|" in r["given_class"] for r in issues)
    assert len(issues) < N_IMAGES // 5  # correct labels: few flagged
