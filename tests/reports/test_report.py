import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
from helpers import check_html, fake_codes, run_script, user_error_lines, write_code_file

from pipeline.data import TEST, TRAIN, VAL
from pipeline.reports import GALLERY, build_report
from pipeline.runs import train


def noisy_run(tmp_path, n_classes=4, per_class=40, noise=2.5, seed=0):
    """A code set over real image files whose classes overlap (so a head makes mistakes), and a
    logistic-regression run on it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = tmp_path / "data"
    y = np.repeat(np.arange(n_classes), per_class)
    paths = [f"c{c}/img{i:03d}.png" for i, c in enumerate(y)]
    for i, p in enumerate(paths):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(root / p)
    split = np.tile(np.array([TRAIN] * 6 + [VAL] * 2 + [TEST] * 2, np.int8), len(y) // 10)
    X = rng.normal(0, 1, (n_classes, 16))[y] + rng.normal(0, noise, (len(y), 16))
    codes = write_code_file(tmp_path / "codes.h5", X, y, split, paths, [f"c{c}" for c in range(n_classes)],
                            backbone="fake", layer="top", pooling="avg", image_size=32, data_root=str(root))
    run_dir = train(codes, 'logreg', runs_dir=tmp_path / 'runs', Cs=(1.0,)).path
    return run_dir


def test_every_run_writes_predictions_and_a_valid_report_with_its_mistakes(tmp_path):
    run = noisy_run(tmp_path)
    record = json.loads((run / "record.json").read_text())
    with open(run / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == record["test_paths"]
    accuracy = np.mean([r["true"] == r["predicted"] for r in rows])
    assert accuracy == pytest.approx(record["metrics"]["accuracy"])
    wrong = sorted((r for r in rows if r["true"] != r["predicted"]), key=lambda r: -float(r["confidence"]))
    assert 5 <= len(wrong) < len(rows)

    page = run / "report.html"
    c = check_html(page)
    text = page.read_text()
    tiles = [img for img in c.images if img["src"].startswith("data:image/jpeg")]
    assert len(tiles) == min(GALLERY, len(wrong))
    # most confident mistake first, with its true and predicted class and confidence
    assert [t["alt"].split(":")[0] for t in tiles] == [r["path"] for r in wrong[:GALLERY]]
    first = text.index(f">{wrong[0]['path']}<")
    assert f"true: {wrong[0]['true']}" in text[first - 400:first]
    assert f"predicted: {wrong[0]['predicted']} ({100 * float(wrong[0]['confidence']):.1f}%)" in text[first - 400:first]
    # one sortable per-class row per class; the confusion matrix embedded
    classes = text[text.index('id="classes"'):text.index('id="confusion"')]
    assert classes.count("<tr>") == 1 + 4 and 'class="sortable"' in classes
    assert sum(img["alt"] == "confusion matrix" for img in c.images) == 1

    # fewer tiles on request; a moved data folder gives placeholders, not broken images
    shutil.move(tmp_path / "data", tmp_path / "moved")
    build_report(run, limit=3)
    c = check_html(page)
    assert not any(img["src"].startswith("data:image/jpeg") for img in c.images)
    assert page.read_text().count("image not readable") == 3


@pytest.mark.slow
def test_sweep_folder_gets_a_report_with_chart_and_table(tmp_path):

    from pipeline.runs import sweep

    path, _, _ = fake_codes(tmp_path / "codes.h5")
    run = sweep([path], heads=('logreg',), ns=[1, 'all'], repeats=2, runs_dir=tmp_path / 'runs', n_jobs=1, progress=False).path
    c = check_html(run / "report.html")
    assert [img["alt"] for img in c.images] == ["sweep chart"]
    text = (run / "report.html").read_text()
    summary = json.loads((run / "summary.json").read_text())
    for s in summary["summary"]:
        assert f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}" in text
    assert "N=1" in text and "N=all" in text


@pytest.mark.slow
def test_report_command_rebuilds_it_and_refuses_what_is_not_a_run(tmp_path):
    run = noisy_run(tmp_path)
    (run / "report.html").unlink()
    r = run_script("report", run, "--gallery", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report -> {run / 'report.html'}"
    check_html(run / "report.html")
    for bad in (tmp_path, tmp_path / "nothing"):
        r = run_script("report", bad)
        assert r.returncode == 2 and len(user_error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr


def chromium():
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_with_its_gallery_and_sorting(tmp_path):
    run = noisy_run(tmp_path)
    with open(run / "predictions.csv") as fh:
        wrong = sum(r["true"] != r["predicted"] for r in csv.DictReader(fh))
    probe = """<script>window.addEventListener('load', function () {
      var shown = Array.from(document.querySelectorAll('#gallery img'))
        .filter(function (i) { return i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0; });
      var t = document.querySelector('#classes table'), th = t.querySelectorAll('th')[3];
      th.click(); th.click();  // recall, descending
      var recall = Array.from(t.tBodies[0].rows).map(function (r) { return r.cells[3].dataset.v; });
      document.body.setAttribute('data-probe', JSON.stringify({shown: shown.length, recall: recall}));
    });</script>"""
    page = tmp_path / "probe.html"
    page.write_text((run / "report.html").read_text().replace("</body>", probe + "</body>"))
    out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    start = dom.index('data-probe="') + len('data-probe="')
    import html as html_
    probe_result = json.loads(html_.unescape(dom[start:dom.index('"', start)]))
    assert probe_result["shown"] == min(GALLERY, wrong) > 0
    recall = [float(v) for v in probe_result["recall"]]
    assert recall == sorted(recall, reverse=True) and len(recall) == 4


def test_a_head_run_from_before_predictions_gets_them_recomputed(tmp_path):
    run = noisy_run(tmp_path)
    before = (run / "predictions.csv").read_text()
    gallery = [img["alt"] for img in check_html(run / "report.html").images if img["src"].startswith("data:image/jpeg")]
    record = json.loads((run / "record.json").read_text())
    del record["data_root"]  # as runs recorded before
    (run / "record.json").write_text(json.dumps(record))
    (run / "predictions.csv").unlink()
    build_report(run)
    assert (run / "predictions.csv").read_text() == before  # same head, same test codes
    assert [img["alt"] for img in check_html(run / "report.html").images
            if img["src"].startswith("data:image/jpeg")] == gallery  # images found from the code set's folder
    (run / "predictions.csv").unlink()
    (tmp_path / "codes.h5").unlink()
    build_report(run)
    assert not (run / "predictions.csv").exists()
    assert "cannot be recomputed" in (run / "report.html").read_text()
