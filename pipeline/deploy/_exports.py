"""Exports of a run's ``model.keras`` for other runtimes, each checked against the Keras model.

- ``model.tflite``: TensorFlow Lite, float32 (``tf.lite.TFLiteConverter``);
- ``model-int8.tflite``: TensorFlow Lite with int8 dynamic-range quantized weights (activations
  stay float: no calibration images needed);
- ``model.onnx``: ONNX (opset 17) by ``tf2onnx``.

All take what ``model.keras`` takes: float32 images (batch, size, size, 3) with values 0..255,
resized to the square as the codes were (``resize`` in ``exports.json``), and give class
probabilities; ``labels.txt`` holds the class names, one per line, in output order. Each export
is loaded in its own runtime (LiteRT's interpreter, ONNX Runtime) and run on the run's test images
beside the Keras model: the share of images on which the top-1 class agrees, the largest
probability difference and single-image latency go to ``exports.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from pipeline._files import durable_replace
from pipeline._records import load_record
from pipeline.codes import open_code_sets, setting
from pipeline.codes import batches_of, read_batches
from pipeline.data import TEST
from pipeline.deploy._models import export_head_run, load_model
from pipeline.errors import ParameterError, UserError, one_line
from pipeline.heads import read_thresholds

logger = logging.getLogger(__name__)

# Deferred on purpose: TensorFlow, ONNX Runtime, LiteRT, tf2onnx are imported inside the functions
# that use them, so that commands and workers that never need them start without loading them.

FORMATS = ("tflite", "tflite-int8", "onnx")
FILES = {"tflite": "model.tflite", "tflite-int8": "model-int8.tflite", "onnx": "model.onnx"}
MIN_AGREEMENT = {"tflite": 1.0, "tflite-int8": 0.99, "onnx": 1.0}  # below: a warning
ONNX_OPSET = 17


@dataclasses.dataclass
class ExportResult:
    """One exported file and how it compares with the Keras model."""

    format: str
    file: str
    bytes: int
    images_checked: int = 0
    top1_agreement: float | None = None       # share of test images with the Keras model's top-1 class
    max_probability_difference: float | None = None
    latency_ms: float | None = None           # one image, median of repeated runs, this machine


def convert(model, fmt: str, path: Path) -> Path:
    """Write ``model`` (a Keras model) in format ``fmt`` to ``path``."""
    import tensorflow as tf

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if fmt in ("tflite", "tflite-int8"):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if fmt == "tflite-int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]  # weights int8, no representative data
            with _quiet_fds():
                data = converter.convert()
            tmp.write_bytes(data)
        elif fmt == "onnx":
            import tf2onnx
            spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image"),)
            with _quiet_fds():
                tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET, output_path=str(tmp))
        else:
            raise UserError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
        durable_replace(tmp, path)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"the {fmt} export needs {exc.name}: pip install tf2onnx onnxruntime ai-edge-litert") from None
    except Exception as exc:  # a converter failing on some layer: say which format and why
        raise UserError(f"{fmt} export failed: {one_line(exc)[:300]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _quiet_fds:
    """The converters print pages of C++ and Python logging on stdout/stderr: silenced while they run."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)
        os.dup2(self.null, 2)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(self.null)


def runner(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function images (n, size, size, 3) float32 -> probabilities, running the exported file in
    its own runtime."""
    if fmt in ("tflite", "tflite-int8"):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf
            Interpreter = tf.lite.Interpreter
        interp = Interpreter(model_path=str(path), num_threads=os.cpu_count())
        inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
        shape = [None]

        def run(images):
            if shape[0] != images.shape:
                interp.resize_tensor_input(inp, images.shape)
                interp.allocate_tensors()
                shape[0] = images.shape
            interp.set_tensor(inp, images)
            interp.invoke()
            return interp.get_tensor(out).copy()
        return run
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def latency_ms(run: Callable, image: np.ndarray, repeats: int = 20) -> float:
    """Median wall time of ``run`` on one image, after two warm-up runs."""
    for _ in range(2):
        run(image)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def test_images(record: dict, limit: int | None):
    """(data root, relative paths) of a run's test images (at most ``limit``, spread evenly)."""

    cs = open_code_sets(record["codes"])
    if cs.data_root is None:
        raise UserError(f"{cs.path} does not say which image folder it was made from (no data_root): "
                        f"no test images to check the exports on (--check-images 0 skips the check)")
    idx = np.flatnonzero(cs.split == TEST)
    if limit is not None and len(idx) > limit:
        idx = idx[np.linspace(0, len(idx) - 1, limit).round().astype(int)]
    return cs.data_root, [cs.paths[i] for i in idx]


def export_formats(run_dir, model_path, formats=FORMATS, check_limit: int | None = None, batch_size: int = 32,
                   progress: bool = True) -> list[ExportResult]:
    """Write each of ``formats`` beside ``model_path`` (the .keras model of run ``run_dir``), check
    each against the Keras model on the run's test images (all, or ``check_limit`` of them; 0: no
    check) and write ``labels.txt`` and ``exports.json`` there. Returns the results."""


    model_path = Path(model_path)
    folder = model_path.parent
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserError(f"unknown export format(s) {', '.join(unknown) or '(none given)'}; choose from: "
                        f"{', '.join(FORMATS)}")
    model, class_names, info = load_model(model_path)
    size, resize = int(info["image_size"]), setting(info, "resize")
    results = []
    for fmt in formats:
        path = convert(model, fmt, folder / FILES[fmt])
        results.append(ExportResult(fmt, path.name, path.stat().st_size))
        logger.info(f"{fmt}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    labels = folder / ".labels.txt.tmp"
    labels.write_text("".join(f"{c}\n" for c in class_names))  # one class per line (stage 1 refuses line breaks)
    durable_replace(labels, folder / "labels.txt")
    runners = {r.format: runner(r.format, folder / r.file) for r in results}
    if check_limit != 0:
        root, paths = test_images(load_record(run_dir), check_limit)
        hits = {f: 0 for f in runners}
        diff = {f: 0.0 for f in runners}
        seen = 0
        batches = read_batches(root, paths, batches_of(len(paths), batch_size), size, 4, resize)
        with tqdm(total=len(paths), unit="img", desc="checking exports", disable=not progress) as bar:
            for batch in batches:
                if len(batch.images):
                    x = batch.images.astype(np.float32)
                    want = np.asarray(model(x, training=False))
                    for f, run in runners.items():
                        got = run(x)
                        hits[f] += int((got.argmax(1) == want.argmax(1)).sum())
                        diff[f] = max(diff[f], float(np.abs(got - want).max()))
                    seen += len(x)
                bar.update(len(batch.indices))
        for r in results:
            r.images_checked, r.max_probability_difference = seen, diff[r.format]
            r.top1_agreement = hits[r.format] / seen if seen else None
    one = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    keras_ms = latency_ms(lambda x: model(x, training=False), one)
    for r in results:
        r.latency_ms = latency_ms(runners[r.format], one)
    for r in results:
        agree = "" if r.top1_agreement is None else (
            f"top-1 agrees with Keras on {100 * r.top1_agreement:.2f}% of {r.images_checked} test images "
            f"(largest probability difference {r.max_probability_difference:.2g}), ")
        logger.info(f"{r.format}: {agree}{r.latency_ms:.1f} ms per image (Keras {keras_ms:.1f} ms)")
        if r.top1_agreement is not None and r.top1_agreement < MIN_AGREEMENT[r.format]:
            logger.warning(f"warning: the {r.format} export agrees with the Keras model on only "
                           f"{100 * r.top1_agreement:.2f}% of the test images (expected at least "
                           f"{100 * MIN_AGREEMENT[r.format]:.0f}%)")
    record = {"model": model_path.name, "image_size": size, "resize": resize, "input": "float32 (n, size, size, 3), 0..255",
              "keras_latency_ms": keras_ms, "onnx_opset": ONNX_OPSET,
              "exports": [dataclasses.asdict(r) for r in results],
              # multi-label: sigmoid outputs, label i present when its probability >= thresholds[i]
              **({"task": "multi-label",
                  "thresholds": read_thresholds(info.get("thresholds"), len(class_names), model_path).tolist()}
                 if info.get("task") == "multi-label" else {})}
    tmp = folder / "exports.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    durable_replace(tmp, folder / "exports.json")
    return results


def export(run, formats=FORMATS, out=None, check_images: int | None = None, progress: bool = True) -> dict[str, Path]:
    """Export a run (a run folder or its :class:`~pipeline.Run`): ``model.keras`` (a head run's is
    built first, at ``out`` if given), then each of ``formats`` beside it, each checked against the
    Keras model on ``check_images`` of the run's test images (None: all; 0: no check). Returns
    the files written, by format (``"keras"`` first)."""
    if check_images is not None and check_images < 0:
        raise ParameterError("check_images", "must be 0 or more")
    unknown = [f for f in formats if f not in ("keras", *FORMATS)]
    if unknown:
        raise ParameterError("formats", f"{', '.join(map(str, unknown))}: choose from keras, {', '.join(FORMATS)}")
    run = Path(run)
    record = load_record(run)
    if record["kind"] == "head-on-codes":
        model = export_head_run(run, out=out)
    elif out:
        raise ParameterError("out", f"is for head runs; {run} already holds its model.keras")
    else:
        model = run / "model.keras"
    logger.info(f"exported -> {model}")
    written = {"keras": model}
    formats = [f for f in formats if f != "keras"]
    if formats:
        for result in export_formats(run, model, formats, check_limit=check_images, progress=progress):
            written[result.format] = model.parent / FILES[result.format]
    return written
