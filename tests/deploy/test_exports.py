"""Exports for other runtimes: TensorFlow Lite (float, int8 dynamic range) and ONNX, loaded in their
own runtimes (LiteRT's interpreter, ONNX Runtime) and compared with the Keras model."""
import json

import numpy as np
import pytest
from helpers import FAST, run_script, user_error_lines

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import TEST, load_image
from pipeline.deploy import export_formats, export_head_run, load_model
from pipeline.runs import train


def _tflite(path, images):
    from ai_edge_litert.interpreter import Interpreter  # (the runtimes imported by the tests that use them:
                                                         # collecting the suite imports none)
    interp = Interpreter(model_path=str(path))
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], images.shape)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], images)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def _onnx(path, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.mark.slow
def test_cli_export_writes_checked_tflite_and_onnx_files(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "c", **dict(FAST, image_size=64))[0]
    run_dir = train(path, 'softmax', runs_dir=tmp_path / 'runs', epochs=5).path
    out = run_script("export", run_dir, "--no-progress")
    assert out.returncode == 0, out.stderr
    for name in ("model.keras", "model.tflite", "model-int8.tflite", "model.onnx", "labels.txt", "exports.json"):
        assert (run_dir / name).is_file(), name
    model, class_names, info = load_model(run_dir / "model.keras")
    assert (run_dir / "labels.txt").read_text().splitlines() == class_names
    cs = CodeSet.load(path)
    test = [p for p, s in zip(cs.paths, cs.split) if s == TEST]
    x = np.stack([load_image(images / p, 64) for p in cs.paths]).astype(np.float32)
    want = np.asarray(model(x))
    for name in ("model.tflite", "model.onnx"):  # float exports: the same probabilities
        got = (_tflite if name.endswith(".tflite") else _onnx)(run_dir / name, x)
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)
    int8 = _tflite(run_dir / "model-int8.tflite", x)
    assert int8.shape == want.shape and np.allclose(int8.sum(1), 1, atol=1e-3)
    record = json.loads((run_dir / "exports.json").read_text())
    by_format = {e["format"]: e for e in record["exports"]}
    assert set(by_format) == {"tflite", "tflite-int8", "onnx"}
    for fmt in ("tflite", "onnx"):
        assert by_format[fmt]["top1_agreement"] == 1.0 and by_format[fmt]["images_checked"] == len(test)
        assert by_format[fmt]["latency_ms"] > 0 and by_format[fmt]["bytes"] == (run_dir / by_format[fmt]["file"]).stat().st_size
    agree = (int8.argmax(1) == want.argmax(1))[[cs.paths.index(p) for p in test]].mean()
    assert abs(by_format["tflite-int8"]["top1_agreement"] - agree) < 1e-9  # what it reports is what it measured
    assert "top-1 agrees with Keras on 100.00%" in out.stdout


@pytest.mark.slow
def test_export_of_joined_flip_codes_and_of_a_scratch_run(images, tmp_path):
    kw = dict(FAST, image_size=48, cache_dir=tmp_path / "c")
    a = generate_codes(images, **kw, tta="flip")[0]
    b = generate_codes(images, **dict(kw, image_size=32), tta="flip")[0]
    run_dir = train([a, b], 'logreg', runs_dir=tmp_path / 'runs').path
    results = export_formats(run_dir, export_head_run(run_dir), ["tflite", "onnx"], progress=False)
    assert [r.top1_agreement for r in results] == [1.0, 1.0]
    assert all(r.max_probability_difference < 1e-4 for r in results)

    from pipeline.runs import scratch
    scratch_dir = scratch(a, image_size=16, epochs=1, runs_dir=tmp_path / 'runs', progress=False).path
    out = run_script("export", scratch_dir, "--formats", "onnx", "--check-images", "5", "--no-progress")
    assert out.returncode == 0, out.stderr
    (onnx,) = json.loads((scratch_dir / "exports.json").read_text())["exports"]
    n_test = int((CodeSet(a).split == TEST).sum())  # (checked on test images: at most 5)
    assert onnx["format"] == "onnx" and onnx["images_checked"] == min(5, n_test) >= 2 and onnx["top1_agreement"] == 1.0
    assert not (scratch_dir / "model.tflite").exists()


@pytest.mark.slow
def test_export_refuses_bad_options_in_one_line(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    run_dir = train(path, 'softmax', runs_dir=tmp_path / 'runs', epochs=2).path
    out = run_script("export", run_dir, "--check-images", "-1")
    assert out.returncode == 2 and len(user_error_lines(out.stderr)) == 1 and "Traceback" not in out.stderr
    out = run_script("export", tmp_path, "--no-progress")
    assert out.returncode == 2 and "not a run folder" in out.stderr and "Traceback" not in out.stderr
