"""The converted EfficientNet-Lite weights: reader, numerical match with PyTorch, real photos."""
import glob
import json

import numpy as np
import pytest
from helpers import CALTECH, needs_caltech

from pipeline.backbones import REGISTRY, build_feature_model, load_legacy_state_dict
from pipeline.backbones import _lite as el
from pipeline.data import load_image

LITES = list(el.VARIANTS)


@pytest.fixture(autouse=True)
def private_weight_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIPELINE_WEIGHTS_CACHE", str(tmp_path_factory.getbasetemp() / "weights"))


@pytest.mark.parametrize("name", LITES)
def test_reader_gives_every_parameter_of_the_architecture(name):
    sd = load_legacy_state_dict(str(el.source_weight_file(name)))
    n_blocks = len(el.block_specs(el.VARIANTS[name]))
    assert n_blocks == {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}[name]
    assert f"_blocks.{n_blocks - 1}._project_conv.weight" in sd and f"_blocks.{n_blocks}._bn1.weight" not in sd
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_fc.weight"].shape == (1000, 1280)
    assert not any("_se_" in k for k in sd)  # Lite: no squeeze-and-excitation
    model = el.build_efficientnet_lite(name, include_top=True)
    n_params = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert model.count_params() == n_params


def test_reader_matches_torch_load():
    torch = pytest.importorskip("torch")
    path = str(el.source_weight_file("efficientnet_lite0"))
    ours = load_legacy_state_dict(path)
    ref = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(ours[k], v.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("name", LITES)
def test_logits_match_the_stored_reference_logits(name):
    """The conversion against the reference PyTorch implementation's logits, stored by
    tests/fixtures/make_reference_logits.py (no PyTorch needed here)."""
    from fixtures.make_reference_logits import OUT, reference_inputs
    with np.load(OUT) as ref:
        expected = ref[f"{name}/logits"]
        assert str(ref[f"{name}/source_sha256"]) == el._sha256(el.source_weight_file(name))  # same weights
    model = el.build_efficientnet_lite(name, include_top=True)
    el.load_converted_weights(model)
    got = np.asarray(model(reference_inputs(name).transpose(0, 2, 3, 1), training=False))
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 1  # real logits, not zeros


@pytest.mark.parametrize("name", LITES)
def test_logits_match_reference_pytorch_implementation(name):
    """The same check against PyTorch itself (opt-in: pip install -e '.[crosscheck]')."""
    torch = pytest.importorskip("torch")
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=str(el.source_weight_file(name)))
    ref.eval()
    size = el.VARIANTS[name].resolution
    x = np.random.default_rng(0).normal(0, 1, (2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    model = el.build_efficientnet_lite(name, include_top=True)
    el.load_converted_weights(model)
    got = np.asarray(model(x.transpose(0, 2, 3, 1), training=False))
    assert np.abs(got - expected).max() < 1e-3
    assert np.abs(expected).max() > 1  # real logits, not zeros


@pytest.mark.slow
def test_converted_weights_are_cached_with_a_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_WEIGHTS_CACHE", str(tmp_path))
    m = el.build_efficientnet_lite("efficientnet_lite0")
    ident = el.load_converted_weights(m)
    cached = list(tmp_path.glob("efficientnet_lite0-*.weights.h5"))
    assert len(cached) == 1 and ident["source_sha256"].startswith("57934424")
    meta = json.loads(cached[0].with_suffix(".json").read_text())
    reference = m.get_layer("top_conv").get_weights()[0].copy()
    cached[0].write_bytes(cached[0].read_bytes()[:-100] + b"\0" * 100)  # damage the cache
    m2 = el.build_efficientnet_lite("efficientnet_lite0")
    el.load_converted_weights(m2)  # checksum mismatch -> converted again
    np.testing.assert_array_equal(m2.get_layer("top_conv").get_weights()[0], reference)
    assert json.loads(cached[0].with_suffix(".json").read_text())["sha256"] == meta["sha256"]


def test_registry_layers_exist_in_every_lite_model():
    for name in LITES:
        bb = REGISTRY[name]
        model = el.build_efficientnet_lite(name)
        names = {l.name for l in model.layers}
        assert bb.default_layer == "top_activation" and set(bb.suggested_layers) <= names
        assert len(bb.suggested_layers) >= 4


# Caltech-101 classes with a clear ImageNet-1k counterpart -> accepted ImageNet class ids.
IMAGENET_IDS = {
    "accordion": {401}, "laptop": {620, 681}, "pizza": {963}, "soccer_ball": {805}, "umbrella": {879},
    "revolver": {763}, "dalmatian": {251}, "grand_piano": {579}, "panda": {388}, "strawberry": {949},
    "electric_guitar": {546}, "saxophone": {776}, "schooner": {780}, "starfish": {327},
    "trilobite": {69}, "scorpion": {71}, "nautilus": {117}, "llama": {355}, "binocular": {447},
    "platypus": {103},
}


@pytest.mark.slow
@needs_caltech
def test_names_the_right_imagenet_class_on_real_photos():
    """Semantic check of the whole chain: decoding, preprocessing, conversion, classifier."""
    import keras
    bb = REGISTRY["efficientnet_lite0"]
    base = el.build_efficientnet_lite(bb.name, include_top=True)
    el.load_converted_weights(base)
    from pipeline.backbones import Preprocess
    inp = keras.Input((224, 224, 3))
    model = keras.Model(inp, base(Preprocess(bb.preprocessing)(inp)))  # the same layer as in stage 1
    hits1 = hits5 = n = 0
    for cls, ids in IMAGENET_IDS.items():
        files = sorted(glob.glob(str(CALTECH / cls / "*.jpg")))[:6]
        x = np.stack([load_image(f, 224) for f in files])
        top5 = np.argsort(-np.asarray(model(x, training=False)), 1)[:, :5]
        hits1 += sum(t[0] in ids for t in top5)
        hits5 += sum(bool(ids & set(t)) for t in top5)
        n += len(files)
    assert n == 120
    assert hits5 / n >= 0.85, (hits1 / n, hits5 / n)
    assert hits1 / n >= 0.6


@pytest.mark.slow
@needs_caltech
def test_real_codes_separate_real_classes(tmp_path):
    """Real backbone on a handful of real images: pooled codes of two classes are far apart."""
    model, shapes = build_feature_model(REGISTRY["efficientnet_lite0"], [("top_activation", "avg")])
    assert shapes == [(7, 7, 1280)]
    a = np.stack([load_image(f, 224) for f in sorted(glob.glob(str(CALTECH / "dalmatian" / "*.jpg")))[:4]])
    b = np.stack([load_image(f, 224) for f in sorted(glob.glob(str(CALTECH / "pizza" / "*.jpg")))[:4]])
    ca, cb = np.asarray(model(a)), np.asarray(model(b))
    within = np.linalg.norm(ca - ca.mean(0), axis=1).mean()
    between = np.linalg.norm(ca.mean(0) - cb.mean(0))
    assert between > within
