"""Heads on joined code sets, flip-averaged and centre-cropped codes, and heads on codes of any scale."""
import json
import shutil

import h5py
import numpy as np
import pytest
from helpers import FAST
from PIL import Image, ImageOps

from pipeline.codes import CodeSet, JoinedCodeSet, generate_codes
from pipeline.data import load_image
from pipeline.deploy import export_head_run, load_model
from pipeline.errors import UserError
from pipeline.heads import SoftmaxHead, load_head
from pipeline.runs import sweep, train


@pytest.mark.slow
def test_flip_codes_are_the_mean_of_the_image_and_its_mirror(images, tmp_path):
    flip = generate_codes(images, cache_dir=tmp_path / "c", tta="flip", **FAST)[0]
    plain = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    assert flip.parent.name == "efficientnet_lite0-32-random-flip" and plain.parent != flip.parent
    mirrored = tmp_path / "mirrored" / images.name
    for p in images.rglob("*"):
        if p.is_file():
            out = mirrored / p.relative_to(images).with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            ImageOps.mirror(Image.open(p).convert("RGB")).save(out)
    mirror = generate_codes(mirrored, cache_dir=tmp_path / "m", **FAST)[0]
    f, a, m = CodeSet.load(flip), CodeSet.load(plain), CodeSet.load(mirror)
    with h5py.File(flip) as h:
        assert h.attrs["tta"] == "flip"
    for p in f.paths:
        want = (a.X[a.paths.index(p)] + m.X[m.paths.index(p.rsplit(".", 1)[0] + ".png")]) / 2
        got = f.X[f.paths.index(p)]
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
        assert not np.allclose(got, a.X[a.paths.index(p)], rtol=1e-3, atol=0)  # not the plain code


@pytest.mark.slow
def test_crop_keeps_the_centre_and_makes_a_code_set_of_its_own(images, tmp_path):
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :100], wide[:, 100:200], wide[:, 200:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    crop = load_image(tmp_path / "wide.png", 64, resize="crop")
    squash = load_image(tmp_path / "wide.png", 64)
    assert crop.shape == squash.shape == (64, 64, 3)
    # crop: shorter side to 64 / 0.875 = 73 (219 x 73), centre 64 x 64 (columns 77..141 of 219: the green third)
    assert (crop[:, 2:-2, 1] > 250).all() and (crop[:, 2:-2, [0, 2]] < 5).all()
    assert (squash[:, :15, 0] > 250).all() and (squash[:, -15:, 2] > 250).all()  # squash keeps all three
    Image.fromarray(np.ascontiguousarray(wide.transpose(1, 0, 2))).save(tmp_path / "tall.png")
    tall = load_image(tmp_path / "tall.png", 64, resize="crop")  # a portrait image keeps its centre too
    assert (tall[2:-2, :, 1] > 250).all()

    cropped = generate_codes(images, cache_dir=tmp_path / "c", resize="crop", **FAST)[0]
    plain = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    assert cropped.parent.name == "efficientnet_lite0-32-random-crop" and plain.parent != cropped.parent
    c, a = CodeSet.load(cropped), CodeSet.load(plain)
    assert c.attrs["resize"] == "crop" and a.attrs["resize"] == "squash" and c.paths == a.paths
    assert not np.allclose(c.X, a.X, rtol=1e-3, atol=0)
    with pytest.raises(UserError, match="--resize"):
        JoinedCodeSet([cropped, plain])
    run_dir = train(cropped, 'softmax', runs_dir=tmp_path / 'runs', epochs=3).path
    assert load_model(export_head_run(run_dir))[2]["resize"] == "crop"  # predict reads images the same way


def _expected_and_images(run_dir, path, images, size):
    cs = CodeSet.load(path) if "+" not in str(path) else JoinedCodeSet(str(path).split("+"))
    expected = load_head(run_dir).predict_proba(cs.X)
    imgs = np.stack([load_image(images / p, size) for p in cs.paths]).astype(np.float32)
    return expected, imgs, cs


@pytest.mark.slow
def test_export_of_a_head_on_flip_codes_reproduces_it(images, tmp_path):
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    path = generate_codes(images, cache_dir=tmp_path / "c", tta="flip", **dict(FAST, image_size=64))[0]
    run_dir = train(path, 'softmax', runs_dir=tmp_path / 'runs', epochs=5).path
    expected, imgs, _ = _expected_and_images(run_dir, path, images, 64)
    model = keras.saving.load_model(export_head_run(run_dir))  # plain Keras, safe mode, no custom objects
    np.testing.assert_allclose(np.asarray(model(imgs)), expected, atol=1e-4)
    assert load_model(run_dir / "model.keras")[2]["tta"] == "flip"


@pytest.mark.slow
def test_heads_on_joined_code_sets_train_export_and_sweep(logs, images, tmp_path):
    import keras  # (in the test: collecting the suite imports no TensorFlow)

    kw = dict(FAST, image_size=64, cache_dir=tmp_path / "c")
    a = generate_codes(images, **kw)[0]
    b = generate_codes(images, **dict(kw, backbone="efficientnet_lite1"), layers=["block7a_project_bn"])[0]
    run_dir = train([a, b], 'logreg', runs_dir=tmp_path / 'runs', Cs=(1.0,)).path
    assert any("on 25 codes of 1600 values" in l or "codes of 1600 values" in l for l in logs), logs  # 1280 + 320
    record = json.loads((run_dir / "record.json").read_text())
    assert record["code_attrs"]["backbone"] == "efficientnet_lite0+efficientnet_lite1"
    assert run_dir.name.endswith("-efficientnet_lite0+efficientnet_lite1-logreg")
    expected, imgs, cs = _expected_and_images(run_dir, f"{a}+{b}", images, 64)
    assert cs.shape == (36, 1600) and (expected.argmax(1) == cs.y).mean() >= 0.9
    model = keras.saving.load_model(export_head_run(run_dir))  # both bases in one model
    assert {"efficientnet_lite0_0", "efficientnet_lite1_1"} <= {l.name for l in model.layers}
    np.testing.assert_allclose(np.asarray(model(imgs)), expected, atol=1e-4)
    sweep_dir = sweep([f'{a}+{b}', str(a)], heads=['prototype'], ns=['1', 'all'], repeats=1, n_jobs=1, runs_dir=tmp_path / 'sweeps', progress=False).path
    curves = {s["label"] for s in json.loads((sweep_dir / "summary.json").read_text())["summary"]}
    assert len(curves) == 2  # a+b is one curve, a another


@pytest.mark.slow
def test_joined_sets_use_common_images_and_refuse_other_classes_or_splits(logs, images, tmp_path):
    kw = dict(FAST, cache_dir=tmp_path / "c")
    extra = images / "class0" / "only-in-b.png"
    extra.write_bytes((images / "class0" / "img001.png").read_bytes())
    b = generate_codes(images, **dict(kw, cache_dir=tmp_path / "d"))[0]
    extra.write_bytes(b"not an image any more")  # unreadable for a: the same split, one image fewer
    a = generate_codes(images, **kw)[0]
    train([a, b], 'prototype', runs_dir=tmp_path / 'runs')
    assert any("1 image(s) are not in every code set" in l for l in logs), logs
    other_split = generate_codes(images, **dict(kw, cache_dir=tmp_path / "e", seed=5))[0]
    with pytest.raises(UserError, match="split the images differently"):
        JoinedCodeSet([b, other_split])
    shutil.rmtree(images / "class2")
    other_classes = generate_codes(images, **dict(kw, cache_dir=tmp_path / "f"))[0]
    with pytest.raises(UserError, match="different classes"):
        JoinedCodeSet([a, other_classes])


def test_heads_train_on_codes_of_any_scale():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    X = (rng.normal(0, 1, (90, 16)) + 6 * np.eye(3, 16)[y]).astype(np.float32)
    for scale in (1.0, 1e-13, 1e9):  # a random-weight base gives codes near 1e-13
        head = SoftmaxHead().fit(X * scale, y)
        assert (head.predict(X * scale) == y).mean() >= 0.9, scale
        np.testing.assert_allclose(np.asarray(head.to_keras()(X * scale)), head.predict_proba(X * scale), atol=1e-5)
