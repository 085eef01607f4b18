"""The whole chain on the data sets users bring: two classes, three, and a 10:1 unbalanced pair.

codes -> each head -> sweep -> fine-tuning (fast path) -> export -> predict (and the
from-scratch baseline), on generated images with a small random backbone, and on real
Caltech-101 subsets with the real EfficientNet-Lite0 where ../shared is present.
"""
import json

import numpy as np
import pytest
from helpers import CALTECH, FAST, make_images, needs_caltech

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import TEST
from pipeline.deploy import export_head_run, predict
from pipeline.runs import finetune, scratch, sweep, train

HEADS = ("softmax", "mlp", "logreg")
FAST_HEADS = {"softmax": {"epochs": 20}, "mlp": {"epochs": 20}, "logreg": {"Cs": (0.1, 1.0)}}


def generated(root, kind):
    if kind == "unbalanced":  # 40 images against 4
        data = make_images(root, n_classes=2, per_class=40)
        for p in sorted((data / "class1").rglob("*.*"))[4:]:
            p.unlink()
        return data
    return make_images(root, n_classes={"two": 2, "three": 3}[kind], per_class=16)


def check_run(run_dir, n_classes):
    record = json.loads((run_dir / "record.json").read_text())
    m = record["metrics"]
    assert 0 < m["n"] and m["mean_per_class_accuracy"] is not None
    assert (m["top5_accuracy"] is None) == (n_classes <= 5)
    if n_classes == 2:
        assert m["positive_class"] == record["class_names"][1]
        assert 0 <= m["roc_auc"] <= 1 and (run_dir / "roc_pr.png").is_file()
    else:
        assert "roc_auc" not in m and not (run_dir / "roc_pr.png").exists()
    return m


KINDS = {"two": 2, "three": 3, "unbalanced": 2}


@pytest.fixture(scope="module")
def generated_codes(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    return {kind: (data, generate_codes(data, cache_dir=root / "cache", **FAST)[0])
            for kind, data in ((kind, generated(root / kind, kind)) for kind in KINDS)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_whole_chain_on_generated_data(kind, generated_codes, tmp_path):
    data, codes = generated_codes[kind]
    n_classes = KINDS[kind]
    runs = tmp_path / "runs"
    head_runs = {}
    for head in HEADS:
        run_dir = train(codes, head, runs_dir=runs, **FAST_HEADS[head]).path
        check_run(run_dir, n_classes)  # accuracy is checked on real data below (random weights here)
        head_runs[head] = run_dir
    ft_dir = finetune(head_runs['logreg'], epochs=1, cache_dir=tmp_path / 'cache', runs_dir=runs, progress=False).path
    check_run(ft_dir, n_classes)
    scratch_dir = scratch(codes, image_size=16, epochs=1, runs_dir=runs, progress=False).path
    check_run(scratch_dir, n_classes)
    for run_dir in (head_runs["softmax"], ft_dir, scratch_dir):
        model = export_head_run(run_dir) if run_dir == head_runs["softmax"] else run_dir / "model.keras"
        rows = predict(model, data / "class1", top_k=5)
        assert len(rows) == len(list((data / "class1").rglob("*.*")))
        assert all(len(top) == n_classes for _, top in rows)  # top-k capped by the class count
        assert all(abs(sum(p for _, p in top) - 1) < 1e-3 for _, top in rows)


@pytest.mark.slow
def test_one_sweep_over_two_three_and_unbalanced_classes(generated_codes, tmp_path):
    paths = [codes for _, codes in generated_codes.values()]
    sweep_dir = sweep(paths, heads=HEADS, ns=['1', '2', 'all'], repeats=1, n_jobs=1, runs_dir=tmp_path, head_params=FAST_HEADS, progress=False).path
    summary = json.loads((sweep_dir / "summary.json").read_text())["summary"]
    assert len(summary) == 3 * 3 * 3 and all(0 <= s["accuracy_mean"] <= 1 for s in summary)
    unbalanced = [s for s in summary if s["code_set"] == str(generated_codes["unbalanced"][1]) and s["n"] == "all"]
    assert {s["head"] for s in unbalanced} == set(HEADS)
    assert (sweep_dir / "sweep.png").is_file()


def test_positive_class_can_be_named(tmp_path):
    data = generated(tmp_path / "two", "two")
    codes = generate_codes(data, cache_dir=tmp_path / "cache", **FAST)[0]
    m = train(codes, 'logreg', runs_dir=tmp_path / 'runs', positive_class='class0', **FAST_HEADS['logreg']).metrics
    assert m["positive_class"] == "class0"
    d = train(codes, 'logreg', runs_dir=tmp_path / 'runs', **FAST_HEADS['logreg']).metrics
    # Swapping the positive class mirrors the scores: the same ROC AUC, other precision-recall figures.
    assert m["roc_auc"] == pytest.approx(d["roc_auc"]) and d["positive_class"] == "class1"


def caltech_subset(root, classes):
    """Symlinks to the first ``n`` images of each named Caltech-101 class."""
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for src in sorted((CALTECH / name).iterdir())[:n]:
            (root / name / src.name).symlink_to(src)
    return root


REAL = {
    "two": {"watch": 40, "brain": 40},
    "three": {"watch": 30, "brain": 30, "sunflower": 30},
    "unbalanced": {"airplanes": 200, "cougar_face": 20},
}


@pytest.mark.slow
@needs_caltech
@pytest.mark.parametrize("kind", list(REAL))
def test_real_caltech_subsets_with_every_head(kind, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"real-{kind}")
    data = caltech_subset(root / kind, REAL[kind])
    codes = generate_codes(data, cache_dir=root / "cache", progress=False)[0]
    cs = CodeSet.load(codes)
    assert len(cs.paths) == sum(REAL[kind].values())
    n_classes = len(REAL[kind])
    for head in HEADS:
        run_dir = train(codes, head, runs_dir=root / 'runs').path
        m = check_run(run_dir, n_classes)
        assert m["accuracy"] >= 0.9, (kind, head, m)
        if kind == "unbalanced":
            assert m["mean_per_class_accuracy"] >= 0.8, (kind, head, m)
    if kind == "two":  # the rest of the chain, with the real backbone
        head_run = run_dir
        sweep_dir = sweep([codes], heads=('logreg',), ns=['1', '5', 'all'], repeats=2, n_jobs=1, runs_dir=root / 'runs', progress=False).path
        assert json.loads((sweep_dir / "summary.json").read_text())["summary"][-1]["accuracy_mean"] >= 0.9
        run = finetune(head_run, epochs=1, cache_dir=root / 'cache', runs_dir=root / 'runs', progress=False)
        ft_dir, ft = run.path, run.metrics
        assert ft["accuracy"] >= 0.9
        rows = predict(ft_dir / "model.keras", data / "brain", top_k=1)
        test_brains = [p for p, s in zip(cs.paths, cs.split) if s == TEST and p.startswith("brain/")]
        picked = {r[0].split("brain/")[-1]: r[1][0][0] for r in rows}
        assert np.mean([picked[p.split("/", 1)[1]] == "brain" for p in test_brains]) >= 0.9
