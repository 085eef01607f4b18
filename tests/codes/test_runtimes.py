"""TensorFlow and OpenVINO runtimes for the forward pass: same codes, a conversion cache, BF16 apart."""
import importlib.util
import shutil

import h5py
import numpy as np
import pytest
from helpers import FAST, ROOT, assert_codes_close, make_images

from pipeline.backbones import REGISTRY, build_feature_model
from pipeline.codes import CodeSet, choose_runtime, generate_codes
from pipeline.codes._runtimes import OpenVINOMapper, TensorFlowMapper
from pipeline.codes._settings import CodeIdentity, ComputeOptions
from pipeline.codes._worker import Worker, WorkSpec
from pipeline.deploy import export_head_run, predict
from pipeline.errors import UserError
from pipeline.runs import train

# (found, not imported: collecting the suite imports no runtime)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")
SAMPLE = ROOT / "examples" / "caltech5"


def test_auto_picks_openvino_on_a_cpu_where_it_is_installed():
    assert choose_runtime("auto", gpus=0, openvino="2026.4") == "openvino"
    assert choose_runtime("auto", gpus=1, openvino="2026.4") == "tensorflow"
    assert choose_runtime("auto", gpus=0, openvino=None) == "tensorflow"
    assert choose_runtime("tensorflow", gpus=0, openvino="2026.4") == "tensorflow"
    assert choose_runtime("openvino", gpus=1, openvino="2026.4") == "openvino"
    assert choose_runtime("auto", "bf16", gpus=1, openvino="2026.4") == "openvino"
    with pytest.raises(UserError, match="pip install openvino"):
        choose_runtime("openvino", gpus=0, openvino=None)
    with pytest.raises(UserError, match="runs on OpenVINO only"):
        choose_runtime("tensorflow", "bf16", gpus=0, openvino="2026.4")
    assert choose_runtime("auto") == "openvino"  # this machine: no GPU, OpenVINO installed


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """Two classes of the shipped real photos, eight each."""
    root = tmp_path_factory.mktemp("sample") / "sample"
    for cls in ("dalmatian", "umbrella"):
        (root / cls).mkdir(parents=True)
        for f in sorted((SAMPLE / cls).iterdir())[:8]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.mark.slow
def test_both_runtimes_give_the_same_codes_on_real_images(sample, tmp_path):
    tf_file = generate_codes(sample, cache_dir=tmp_path / "tf", runtime="tensorflow", progress=False)[0]
    ov_file = generate_codes(sample, cache_dir=tmp_path / "ov", runtime="openvino", progress=False)[0]
    a, b = CodeSet.load(tf_file), CodeSet.load(ov_file)
    assert a.paths == b.paths and np.abs(a.X).max() > 1
    assert np.abs(a.X - b.X).max() < 1e-4
    assert a.attrs["runtime"].startswith("TensorFlow") and b.attrs["runtime"].startswith("OpenVINO")
    assert "fp32" in b.attrs["runtime"]


@pytest.mark.slow
def test_one_cache_holds_rows_of_both_runtimes(sample, tmp_path):
    (sample / "umbrella" / "late.jpg").write_bytes(sorted((SAMPLE / "umbrella").iterdir())[-1].read_bytes())
    try:
        moved = sample / "dalmatian" / sorted(p.name for p in (sample / "dalmatian").iterdir())[0]
        held = tmp_path / moved.name
        shutil.move(moved, held)
        path = generate_codes(sample, cache_dir=tmp_path / "c", runtime="tensorflow", progress=False)[0]
        shutil.move(held, moved)
        stats = {}
        generate_codes(sample, cache_dir=tmp_path / "c", runtime="openvino", progress=False, stats=stats)
        assert stats["images"] == 1  # the image added back; the others kept from TensorFlow
        with h5py.File(path) as f:
            runtimes = f.attrs["runtime"].split("; ")
        assert len(runtimes) == 2 and {r.split()[0] for r in runtimes} == {"OpenVINO", "TensorFlow"}
    finally:
        (sample / "umbrella" / "late.jpg").unlink()


@pytest.mark.slow
def test_the_converted_model_is_cached_and_keyed_by_what_defines_it(tmp_path):
    bb = REGISTRY["efficientnet_lite0"]
    cache = tmp_path / "ov"

    def mapper(weights="none", size=32, precision="fp32", outputs=((bb.default_layer, "avg"),)):
        model, _ = build_feature_model(bb, list(outputs), weights, size)
        return OpenVINOMapper(model, 4, size, f"{bb.name} {outputs}", precision, cache_root=cache)

    assert not mapper().reused
    assert mapper().reused and len(list(cache.iterdir())) == 1
    assert not mapper(size=64).reused
    assert not mapper(precision="bf16").reused
    assert not mapper(outputs=((bb.default_layer, "max"),)).reused
    assert not mapper(weights="imagenet").reused  # other weights, other checksum
    assert len(list(cache.iterdir())) == 5
    model, _ = build_feature_model(bb, [(bb.default_layer, "avg")], "none", 32)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = TensorFlowMapper(model, 4)(x)[0]
    assert_codes_close(mapper()(x)[0], expected, rtol=1e-4)  # the cached model, run


@pytest.mark.slow
def test_several_outputs_come_out_in_order():
    bb = REGISTRY["efficientnet_lite0"]
    outputs = [("block6d_add", "flatten"), (bb.default_layer, "max"), ("block7a_project_bn", "avg")]
    model, _ = build_feature_model(bb, outputs, "none", 64)
    x = np.random.default_rng(1).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    expected = TensorFlowMapper(model, 4)(x[:4])
    got = [c for _, codes in OpenVINOMapper(model, 4, 64, "three outputs").map_batches([x[:4]]) for c in codes]
    assert [g.shape for g in got] == [e.shape for e in expected] == [(4, 2 * 2 * 192), (4, 1280), (4, 320)]
    for g, e in zip(got, expected):
        assert_codes_close(g, e, rtol=1e-4)


@pytest.mark.slow
def test_bf16_codes_are_a_code_set_of_their_own(images, tmp_path):
    fp32 = generate_codes(images, cache_dir=tmp_path, runtime="openvino", **FAST)[0]
    before = fp32.read_bytes()
    bf16 = generate_codes(images, cache_dir=tmp_path, precision="bf16", **FAST)[0]
    assert bf16 != fp32 and bf16.parent.name == fp32.parent.name + "-bf16"
    assert fp32.read_bytes() == before
    assert CodeSet.load(bf16).attrs["precision"] == "bf16" and CodeSet.load(fp32).attrs["precision"] == "fp32"
    shutil.copy(bf16, fp32)  # bf16 codes where fp32 ones belong: refused, never extended
    with pytest.raises(UserError, match="other settings.*precision: bf16 -> fp32"):
        generate_codes(images, cache_dir=tmp_path, **FAST)


def test_files_from_before_the_precision_attribute_are_fp32(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path, **FAST)[0]
    with h5py.File(path, "a") as f:
        del f.attrs["precision"], f.attrs["runtime"]
    stats = {}
    generate_codes(images, cache_dir=tmp_path, stats=stats, **FAST)
    assert stats == {}  # nothing recomputed, nothing refused


@pytest.mark.slow
def test_predict_gives_the_same_probabilities_on_both_runtimes(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "cache", **FAST)[0]
    run_dir = train(path, 'logreg', runs_dir=tmp_path / 'runs', Cs=(1.0,)).path
    model = export_head_run(run_dir)
    rows = {rt: predict(model, images, top_k=3, runtime=rt) for rt in ("tensorflow", "openvino")}
    assert [p for p, _ in rows["tensorflow"]] == [p for p, _ in rows["openvino"]]
    for (_, a), (_, b) in zip(rows["tensorflow"], rows["openvino"]):
        assert [c for c, _ in a] == [c for c, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=1e-4)


@pytest.mark.slow
def test_a_failed_conversion_falls_back_to_tensorflow_with_a_note(logs, images, tmp_path, monkeypatch):
    def cannot_convert(*a, **k):
        raise RuntimeError("unsupported operation")
    monkeypatch.setattr("pipeline.codes._runtimes.convert_to_openvino", cannot_convert)
    monkeypatch.setattr("pipeline.codes._worker.converted_from_source", lambda source: None)  # not cached
    path = generate_codes(images, cache_dir=tmp_path, runtime="openvino", **FAST)[0]
    assert any(l.startswith("note: OpenVINO could not convert") for l in logs), logs
    assert CodeSet.load(path).attrs["runtime"].startswith("TensorFlow")
    with pytest.raises(UserError, match="--precision bf16 needs it"):
        generate_codes(images, cache_dir=tmp_path, precision="bf16", **FAST)


@pytest.mark.slow
def test_a_worker_is_built_without_computing_a_batch(tmp_path, monkeypatch):
    """A batch of zeros computed while a worker was built cost every run a whole batch (0.7 s at
    224 px on this CPU); TensorFlow's graph is traced on construction instead, once."""
    calls = []
    for cls in (OpenVINOMapper, TensorFlowMapper):
        real = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, x, real=real: calls.append(len(x)) or real(self, x))
    workers = {runtime: Worker(_spec(tmp_path, runtime, 4)) for runtime in ("openvino", "tensorflow")}
    assert calls == []
    tf_mapper = workers["tensorflow"].mapper
    assert tf_mapper._fn.experimental_get_tracing_count() == 1
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    got = [c for _, codes in tf_mapper.map_batches([x, x[:1]]) for c in codes]
    assert tf_mapper._fn.experimental_get_tracing_count() == 1  # the traced graph serves every batch
    want = workers["openvino"].mapper(x)[0]
    assert np.abs(want).max() > 1e-3
    assert_codes_close(got[0], want, rtol=1e-4)
    assert_codes_close(got[1], want[:1], rtol=1e-4)


def _spec(folder, runtime, batch_size):
    identity = CodeIdentity.of("efficientnet_lite0", None, "avg", "none", 32)
    return WorkSpec(str(folder), identity, ((identity.layer, "avg"),), "none",
                    ComputeOptions(runtime=runtime, batch_size=batch_size), 1, (str(folder),), ("{}",))


@pytest.mark.slow
def test_fewer_images_than_a_batch_are_computed_without_padding(tmp_path, monkeypatch):
    """A run (or a prediction) of fewer images than one batch compiles the model for any batch
    size and computes only its images; a larger one keeps the static shape (faster a batch)."""
    small, usual = Worker(_spec(tmp_path, "openvino", 8), images=3), Worker(_spec(tmp_path, "openvino", 8), images=8)
    assert [str(w.mapper.compiled.inputs[0].get_partial_shape()) for w in (small, usual)] == ["[?,32,32,3]",
                                                                                               "[8,32,32,3]"]
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    got = [c for _, codes in small.mapper.map_batches([x]) for c in codes]
    want = usual.mapper(x)[0]
    assert got[0].shape == want.shape == (3, 1280) and np.abs(want).max() > 1e-3
    assert_codes_close(got[0], want, rtol=1e-4)

    made = []
    real = OpenVINOMapper.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self.any_batch)
    monkeypatch.setattr(OpenVINOMapper, "__init__", init)
    for n, per_class in ((8, 4), (3, 2)):  # batches of 8: 9 images, then 5 (one unreadable in each)
        data = make_images(tmp_path / f"data{n}", n_classes=2, per_class=per_class)
        (data / "class0" / "broken.jpg").write_bytes(b"not an image")
        generate_codes(data, cache_dir=tmp_path / f"cache{n}", runtime="openvino", **FAST)
    assert made == [False, True]
