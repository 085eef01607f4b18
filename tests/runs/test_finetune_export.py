"""Issue 5: fine-tuning, augmentation, from-scratch baseline, export and predict (small random backbones)."""
import csv
import json

import numpy as np
import pytest
from helpers import FAST, check_html, run_script

from pipeline.backbones import REGISTRY, build_base
from pipeline.codes import CodeSet, generate_codes
from pipeline.data import TEST, TRAIN, VAL, augmentation, image_dataset, load_image
from pipeline.deploy import export_head_run, load_model, predict
from pipeline.deploy._models import head_as_keras
from pipeline.errors import ParameterError, UserError
from pipeline.heads import load_head
from pipeline.reports import GALLERY
from pipeline.runs import _finetune as ft
from pipeline.runs import train


@pytest.fixture
def head_run(images, tmp_path):
    """Codes of the synthetic images (random lite0, 32 px) and a softmax head trained on them."""
    path = generate_codes(images, cache_dir=tmp_path / "cache", **FAST)[0]
    run_dir = train(path, 'softmax', runs_dir=tmp_path / 'runs', epochs=5).path
    return run_dir, path


def _trunk(name="efficientnet_lite0", layer="top_activation", size=32):
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    base = build_base(REGISTRY[name], "none", size)
    return keras.Model(base.inputs, base.get_layer(layer).output)


def check_predictions_and_report(run_dir, cs, te, proba):
    """predictions.csv holds the saved model's predictions on the test images; report.html is
    valid and shows every mistake."""
    with open(run_dir / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [cs.paths[i] for i in te]
    assert [r["predicted"] for r in rows] == [cs.class_names[k] for k in proba.argmax(1)]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], proba.max(1), atol=1e-4)
    c = check_html(run_dir / "report.html")
    wrong = sum(r["true"] != r["predicted"] for r in rows)
    assert sum(img["src"].startswith("data:image/jpeg") for img in c.images) == min(GALLERY, wrong)


def test_cut_points_by_blocks_and_by_layer_name():
    trunk = _trunk()
    assert ft.cut_layer(trunk, "efficientnet_lite0", 1, None) == "block6d_add"  # block7a + top trainable
    assert ft.cut_layer(trunk, "efficientnet_lite0", 2, None) == "block6c_add"
    assert ft.cut_layer(trunk, "efficientnet_lite0", None, "block7a_expand_conv") == "block6d_add"
    with pytest.raises(UserError, match="choose the start of a block"):
        ft.cut_layer(trunk, "efficientnet_lite0", None, "block6d_project_conv")  # its block's add needs block6c_add too
    with pytest.raises(UserError, match="no layer"):
        ft.cut_layer(trunk, "efficientnet_lite0", None, "nope")
    with pytest.raises(UserError, match="fewer blocks"):
        ft.cut_layer(trunk, "efficientnet_lite0", 99, None)
    vgg = _trunk("vgg16", "block5_pool")
    assert ft.cut_layer(vgg, "vgg16", 1, None) == "block4_pool"


@pytest.mark.slow
def test_fine_tuning_changes_only_the_unfrozen_layers_and_no_batchnorm_statistics(head_run, tmp_path):
    run_dir, _ = head_run
    out = ft.finetune(run_dir, unfreeze_blocks=1, epochs=2, learning_rate=0.001, cache_dir=tmp_path / 'cache', runs_dir=tmp_path / 'ft', progress=False).path
    tuned = load_model(out / "model.keras")[0].get_layer("efficientnet_lite0")
    before = _trunk()  # the same seeded random base the head was trained on
    changed = set()
    for layer in before.layers:
        for w0, w1 in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()):
            if not np.array_equal(w0, w1):
                changed.add(layer.name)
    # block7a and the top conv (the last block and what follows), never a BatchNorm layer:
    # neither its scale and offset nor its moving statistics
    assert changed == {"block7a_expand_conv", "block7a_dwconv", "block7a_project_conv", "top_conv"}


@pytest.mark.slow
@pytest.mark.parametrize("head_name", ["softmax", "logreg"])
def test_warmup_head_is_loaded_and_export_reproduces_it(head_name, images, tmp_path):
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    path = generate_codes(images, cache_dir=tmp_path / "cache", **dict(FAST, image_size=64))[0]
    params = {"epochs": 5} if head_name == "softmax" else {"Cs": (1.0,)}
    run_dir = train(path, head_name, runs_dir=tmp_path / 'runs', **params).path
    cs = CodeSet.load(path)
    head = load_head(run_dir)
    expected = head.predict_proba(cs.X)
    # the head, as Keras, on the cached codes
    np.testing.assert_allclose(np.asarray(head_as_keras(head, cs.X.shape[1])(cs.X)), expected, atol=1e-4)
    # the whole exported model on the images themselves
    out = export_head_run(run_dir)
    model = keras.saving.load_model(out)  # plain Keras, no custom objects
    imgs = np.stack([load_image(images / p, 64) for p in cs.paths]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(imgs)), expected, atol=1e-4)
    _, names, info = load_model(out)
    assert names == cs.class_names and info["backbone"] == "efficientnet_lite0" and info["image_size"] == 64


@pytest.mark.slow
def test_finetune_fast_path_end_to_end(head_run, tmp_path):
    run_dir, path = head_run
    run = ft.finetune(run_dir, unfreeze_blocks=1, epochs=2, cache_dir=tmp_path / 'cache', runs_dir=tmp_path / 'ft', progress=False)
    out, metrics = run.path, run.metrics
    rec = json.loads((out / "record.json").read_text())
    assert rec["kind"] == "finetune" and rec["cut_layer"] == "block6d_add" and not rec["augment"]
    assert (tmp_path / "cache" / "data" / "efficientnet_lite0-32-random" / "block6d_add-flatten.h5").exists()
    assert {"model.keras", "report.txt", "confusion.png", "history.png"} <= {p.name for p in out.iterdir()}
    model, names, info = load_model(out / "model.keras")
    cs = CodeSet.load(path)
    te = np.flatnonzero(cs.split == TEST)
    imgs = np.stack([load_image(cs.attrs["data_root"] + "/" + cs.paths[i], 32) for i in te]).astype(np.float32)
    acc = (np.asarray(model(imgs)).argmax(1) == cs.y[te]).mean()
    assert acc == pytest.approx(metrics["accuracy"])  # the saved model is the one evaluated
    check_predictions_and_report(out, cs, te, np.asarray(model(imgs)))
    assert info["kind"] == "finetune"


@pytest.mark.slow
def test_augmentation_only_touches_training_images(head_run, tmp_path, monkeypatch):
    calls = []
    real = image_dataset

    def spy(root, paths, labels, size, batch_size, shuffle=False, augment=None, seed=0, resize="squash"):
        calls.append((len(paths), augment is not None, resize))
        return real(root, paths, labels, size, batch_size, shuffle, augment, seed, resize)

    monkeypatch.setattr("pipeline.runs._finetune.image_dataset", spy)
    run_dir, path = head_run
    ft.finetune(run_dir, unfreeze_blocks=1, epochs=1, augment=True, runs_dir=tmp_path / 'ft', progress=False)
    cs = CodeSet.load(path)
    n = {s: int((cs.split == s).sum()) for s in (TRAIN, VAL, TEST)}
    assert calls == [(n[TRAIN], True, "squash"), (n[VAL], False, "squash"), (n[TEST], False, "squash")]


def test_image_dataset_leaves_images_alone_without_augment(images):
    paths = ["class0/img000.JPG", "class1/img001.png"]
    plain = next(iter(image_dataset(images, paths, [0, 1], 32, 2)))[0].numpy()
    np.testing.assert_array_equal(plain, np.stack([load_image(images / p, 32) for p in paths]))
    aug = next(iter(image_dataset(images, paths, [0, 1], 32, 2, augment=augmentation(0.3))))[0].numpy()
    assert aug.shape == plain.shape and not np.array_equal(aug, plain)


@pytest.mark.slow
def test_scratch_baseline_runs_on_the_same_split(head_run, tmp_path):
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    _, path = head_run
    run = ft.scratch(path, image_size=32, epochs=2, runs_dir=tmp_path / 's', progress=False)
    out, metrics = run.path, run.metrics
    rec = json.loads((out / "record.json").read_text())
    assert rec["kind"] == "scratch" and rec["n_test"] == int((CodeSet.load(path).split == TEST).sum())
    model = keras.saving.load_model(out / "model.keras")
    assert [l.__class__.__name__ for l in model.layers].count("Conv2D") == 4
    cs = CodeSet.load(path)
    te = np.flatnonzero(cs.split == TEST)
    imgs = np.stack([load_image(cs.attrs["data_root"] + "/" + cs.paths[i], 32) for i in te]).astype(np.float32)
    assert (np.asarray(model(imgs)).argmax(1) == cs.y[te]).mean() == pytest.approx(metrics["accuracy"])
    check_predictions_and_report(out, cs, te, np.asarray(model(imgs)))


@pytest.mark.slow
def test_predict_folder_with_a_corrupt_file(logs, head_run, images, tmp_path):
    run_dir, _ = head_run
    model_path = export_head_run(run_dir)
    (images / "class0" / "corrupt.jpg").write_bytes(b"not an image at all")
    rows = predict(model_path, images, top_k=2)
    warnings = [l for l in logs if l.startswith("warning:")]
    assert len(rows) == 36 and len(warnings) == 1 and "corrupt.jpg" in warnings[0]
    assert all(len(top) == 2 and top[0][1] >= top[1][1] for _, top in rows)
    r = run_script("predict", images, "--model", model_path, "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    assert "corrupt.jpg" in r.stderr and "Traceback" not in r.stderr
    table = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(table) == 36 and {"path", "class1", "prob1"} <= set(table[0])
    r = run_script("predict", tmp_path / "nothing.jpg", "--model", model_path)
    assert r.returncode == 2 and "no such image" in r.stderr


@pytest.mark.slow
def test_predict_from_a_run_folder_exports_it_first(logs, head_run, images, tmp_path):
    run_dir, _ = head_run
    assert not (run_dir / "model.keras").exists()
    rows = predict(run_dir, images / "class1", top_k=1)
    assert (run_dir / "model.keras").is_file() and any("exporting" in n for n in logs)
    assert rows and rows == predict(run_dir / "model.keras", images / "class1", top_k=1)
    with pytest.raises(UserError, match="no model.keras in"):
        predict(tmp_path, images, top_k=1)


@pytest.mark.slow
def test_bad_training_options_are_refused_before_any_work(head_run, tmp_path):
    run_dir, path = head_run
    for bad in (dict(learning_rate=0), dict(learning_rate=float("inf")), dict(epochs=0), dict(strength=1.5),
                dict(seed=-1), dict(optimizer="sgd"), dict(epoch=3)):
        (name,) = bad
        with pytest.raises(ParameterError, match=f"^{name} ") as ex:  # a ValueError naming the parameter
            ft.finetune(run_dir, cache_dir=tmp_path / 'c', runs_dir=tmp_path / 'r', progress=False, **bad)
        assert isinstance(ex.value, ValueError) and ex.value.parameter == name
    with pytest.raises(ParameterError, match="^image_size 8: .*at least 16 pixels"):
        ft.scratch(path, image_size=8, runs_dir=tmp_path / 'r', progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()
    with pytest.raises(ParameterError, match="^top_k must be at least 1"):
        predict(export_head_run(run_dir), tmp_path, top_k=0)


@pytest.mark.slow
def test_compare_table(head_run, tmp_path):
    run_dir, _ = head_run
    r = run_script("compare", run_dir)
    assert r.returncode == 0 and "| head-on-codes |" in r.stdout and "%" in r.stdout
    r = run_script("compare", "--runs-dir", tmp_path / "empty")
    assert r.returncode == 2 and "no finished runs" in r.stderr
