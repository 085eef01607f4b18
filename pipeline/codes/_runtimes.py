"""Where the forward pass runs: TensorFlow, or OpenVINO on a CPU (1.4-2.8x faster there).

Both mappers take batches of raw RGB images, (n, size, size, 3) uint8, and give one (n, D)
float32 array per output of the Keras feature model they were made from, in order. The
OpenVINO model is converted from that same Keras model (preprocessing included), cached on disk
under a key of everything that defines it, and run with several inference requests in flight
so that decoding the next batches overlaps with it. By default it runs in FP32 (OpenVINO would
pick BF16 by itself on CPUs that have it): its codes equal TensorFlow's within 1e-4, so one
cache may hold rows of both. BF16 is a different code set (``precision``), never mixed in.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline._tf import quiet_tensorflow
from pipeline.backbones import weights_cache_dir
from pipeline.errors import ParameterError, UserError

logger = logging.getLogger(__name__)

# Deferred on purpose: OpenVINO, TensorFlow are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.

RUNTIMES = ("auto", "tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def openvino_version() -> str | None:
    """The installed OpenVINO's version; None where it is not installed. Found without importing
    it (a fifth of a second, paid by every update that computes nothing)."""
    if importlib.util.find_spec("openvino") is None:
        return None
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def openvino_core():
    """One OpenVINO Core per process: compiled models outliving the temporary Core they came
    from made the process abort at exit (std::system_error from a plug-in thread). It is
    released by an exit handler, before the interpreter tears modules down."""

    import openvino as ov
    atexit.register(openvino_core.cache_clear)
    return ov.Core()


def tensorflow_gpus() -> int:
    """GPUs TensorFlow sees; 0 without importing it (seconds) where no GPU driver exposes a device."""
    if not any(Path(p).exists() for p in GPU_DEVICES):
        return 0
    quiet_tensorflow()  # where stage 1 first imports TensorFlow: without its start-up chatter
    import tensorflow as tf
    return len(tf.config.list_physical_devices("GPU"))


GPU_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")  # CUDA, ROCm, WSL


def choose_runtime(runtime: str, precision: str = "fp32", *, gpus: int | None = None,
                   openvino: str | None = "unknown") -> str:
    """The runtime to use: ``auto`` is OpenVINO where TensorFlow sees no GPU and OpenVINO is
    installed, else TensorFlow. BF16 needs OpenVINO. ``precision`` is one of :data:`PRECISIONS`
    (a code set's checks it, :meth:`~pipeline.codes.CodeIdentity.check`)."""
    if runtime not in RUNTIMES:
        raise ParameterError("runtime", f"{runtime}: choose one of {', '.join(RUNTIMES)}")
    openvino = openvino_version() if openvino == "unknown" else openvino
    if runtime == "openvino" or (precision != "fp32" and runtime == "auto"):
        if openvino is None:
            raise UserError("the OpenVINO runtime is not installed: pip install openvino"
                            + (f" (--precision {precision} needs it)" if precision != "fp32" else ""))
        return "openvino"
    if runtime == "tensorflow":
        if precision != "fp32":
            raise ParameterError("precision", f"{precision} runs on OpenVINO only; use --runtime openvino or auto")
        return "tensorflow"
    gpus = tensorflow_gpus() if gpus is None else gpus
    return "openvino" if openvino is not None and gpus == 0 else "tensorflow"


class TensorFlowMapper:
    """Compiled Keras forward pass. Batches smaller than ``batch_size`` are zero-padded so the
    graph is traced only once: here, when ``image_size`` is given (traced, not run: a batch of
    zeros computed to trace it cost a whole batch, 0.7 s at 224 px on a CPU)."""

    name = "tensorflow"

    def __init__(self, model, batch_size: int, image_size: int | None = None):
        import tensorflow as tf
        self.batch_size = batch_size
        self._fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), autograph=False)
        if image_size:
            self._fn.get_concrete_function(tf.TensorSpec([batch_size, image_size, image_size, 3], tf.uint8))
        self.description = f"TensorFlow {tf.__version__} on {_tf_device()}"

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        n = len(images)
        out = self._fn(_pad(images, self.batch_size))
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o, dtype=np.float32)[:n] for o in out]

    def map_batches(self, batches: Iterable, images=lambda b: b) -> Iterator[tuple]:
        """(batch, codes) for each batch, in order; ``images(batch)`` gives its uint8 images."""
        for batch in batches:
            yield batch, self(images(batch))


@dataclasses.dataclass(frozen=True)
class ConversionKey:
    """Everything that defines a converted model: one folder of the conversion cache each."""

    model: str         # backbone and outputs, or "classifier"
    image_size: int
    batch_size: int
    weights_sha256: str
    precision: str
    openvino: str

    def folder(self, root: Path) -> Path:
        return Path(root) / f"{self.model.split()[0]}-{_digest(self)}"


def _digest(key) -> str:
    """16 hex digits naming a key dataclass (its fields, as JSON)."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(key), sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class SourceKey:
    """What a converted model is made from, known without building the Keras model (which costs
    an update seconds of importing TensorFlow): the outputs, sizes, precision, where the weights
    come from, and the versions of what builds and converts the model, this project's code among
    them. It names the conversion (:class:`ConversionKey`) made from the same source before."""

    model: str
    image_size: int
    batch_size: int
    weights: str
    precision: str
    versions: str

    def file(self, root: Path) -> Path:
        return Path(root) / "by-source" / f"{_digest(self)}.json"


def converted_from_source(source: SourceKey, cache_root: Path | None = None):
    """(OpenVINO model, code shapes) converted earlier from ``source``; None if there is none or
    it cannot be read (then it is converted again)."""
    root = cache_root or conversion_cache()
    try:
        note = json.loads(source.file(root).read_text())
        xml = root / str(note["folder"]) / "model.xml"
        shapes = [tuple(int(d) for d in shape) for shape in note["shapes"]]
        if note["source"] != dataclasses.asdict(source) or not xml.is_file():
            return None
        return openvino_core().read_model(xml), shapes
    except Exception:  # absent, damaged or foreign: convert again
        return None


def remember_source(source: SourceKey, folder: Path, shapes, cache_root: Path | None = None) -> None:
    """Note that ``source`` converts to the model in ``folder`` (written whole: temporary file, rename)."""
    path = source.file(cache_root or conversion_cache())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"source": dataclasses.asdict(source), "folder": Path(folder).name,
                               "shapes": [list(s) for s in shapes]}))
    os.replace(tmp, path)


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def conversion_cache() -> Path:
    return weights_cache_dir() / "openvino"


def convert_to_openvino(model, key: ConversionKey, cache_root: Path | None = None):
    """The OpenVINO model of Keras ``model`` (uint8 images in, float32 codes out), converted
    once per key and read from the cache after that; returns (ov model, reused?)."""
    import openvino as ov

    folder = key.folder(cache_root or conversion_cache())
    xml = folder / "model.xml"
    if xml.is_file() and (folder / "key.json").is_file():
        return openvino_core().read_model(xml), True
    import tensorflow as tf

    # A traced function converts in a third of the time of an exported SavedModel.
    forward = tf.function(lambda x: model(x, training=False), autograph=False,
                          input_signature=[tf.TensorSpec([None, key.image_size, key.image_size, 3], tf.float32)])
    ov_model = ov.convert_model(forward)
    ov_model.reshape({0: [key.batch_size, key.image_size, key.image_size, 3]})  # static shapes run faster
    ppp = ov.preprocess.PrePostProcessor(ov_model)
    ppp.input().tensor().set_element_type(ov.Type.u8)  # uint8 in, cast inside: 4x less to copy
    ov_model = ppp.build()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    ov.save_model(ov_model, staging / "model.xml", compress_to_fp16=False)
    (staging / "key.json").write_text(json.dumps(dataclasses.asdict(key), indent=2))
    try:
        staging.rename(folder)  # whole or absent
    except OSError:  # another process converted the same model meanwhile: keep its copy
        shutil.rmtree(staging, ignore_errors=True)
    return ov_model, False


class OpenVINOMapper:
    """The same forward pass on OpenVINO's CPU plug-in, ``requests`` batches in flight."""

    name = "openvino"

    def __init__(self, model, batch_size: int, image_size: int, model_name: str, precision: str = "fp32",
                 requests: int = 2, cache_root: Path | None = None, converted=None, images: int | None = None):
        """``model``: the Keras model, converted (or read from the conversion cache); or None and
        ``converted`` the OpenVINO model read already (:func:`converted_from_source`).
        ``images``: how many it will map, where known. Fewer than one batch: the model is
        compiled for batches of any size, which then are not padded (a batch padded to 32 costs
        0.45 s at 224 px on this CPU, 5 images 0.09 s); more: the static shape (a full batch 20%
        faster than on the dynamic one)."""
        import openvino as ov

        self.batch_size = batch_size
        self.any_batch = images is not None and images < batch_size
        if converted is not None:
            ov_model, self.reused, self.folder = converted, True, None
        else:
            key = ConversionKey(model_name, image_size, batch_size, weights_sha256(model), precision, ov.__version__)
            ov_model, self.reused = convert_to_openvino(model, key, cache_root)
            self.folder = key.folder(cache_root or conversion_cache())
        if self.any_batch:
            ov_model.reshape({0: [-1, image_size, image_size, 3]})  # (in place: the model is this mapper's)
        self.compiled = openvino_core().compile_model(ov_model, "CPU", {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],  # else BF16 wherever the CPU has it
            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(requests)})
        self.requests = requests
        self.n_outputs = len(self.compiled.outputs)
        self.description = f"OpenVINO {ov.__version__} on CPU ({precision}, {requests} requests in flight)"

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        n = len(images)
        out = self.compiled(self._padded(images))
        return [np.array(out[i], dtype=np.float32)[:n] for i in range(self.n_outputs)]

    def _padded(self, images: np.ndarray) -> np.ndarray:
        return images if self.any_batch else _pad(images, self.batch_size)

    def map_batches(self, batches: Iterable, images=lambda b: b) -> Iterator[tuple]:
        """(batch, codes) for each batch, in order, with up to ``requests`` batches computing
        while the next ones are decoded.

        Requests are waited for here, not given a Python callback: a callback's last reference,
        dropped on OpenVINO's own stream thread, could free the compiled model there, whose
        destructor then joins that very thread (the process aborted at exit, now and then)."""
        requests = [self.compiled.create_infer_request() for _ in range(self.requests)]
        pending: deque = deque()  # (request, batch, n images), oldest first; requests taken in turn

        def collect():
            request, batch, n = pending.popleft()
            request.wait()
            return batch, [np.array(request.get_output_tensor(k).data[:n], dtype=np.float32)
                           for k in range(self.n_outputs)]

        for i, batch in enumerate(batches):
            if len(pending) == len(requests):  # the oldest holds the request this batch takes
                yield collect()
            imgs = images(batch)
            request = requests[i % len(requests)]
            request.start_async({0: self._padded(imgs)})
            pending.append((request, batch, len(imgs)))
        while pending:
            yield collect()


def make_mapper(model, *, runtime: str, batch_size: int, image_size: int, model_name: str, precision: str = "fp32",
                images: int | None = None):
    """A mapper for ``runtime`` (already chosen); a failed OpenVINO conversion falls back to
    TensorFlow (FP32 only) with a note. ``images``: see :class:`OpenVINOMapper` (TensorFlow
    pads every batch: one graph traced)."""
    if runtime == "openvino":
        try:
            return OpenVINOMapper(model, batch_size, image_size, model_name, precision, images=images)
        except Exception as exc:  # conversion of an unusual model: TensorFlow still runs it
            if precision != "fp32":
                raise UserError(f"OpenVINO could not convert {model_name} ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); --precision {precision} "
                                f"needs it") from None
            logger.info(f"note: OpenVINO could not convert {model_name} ({type(exc).__name__}); running on TensorFlow")
    return TensorFlowMapper(model, batch_size, image_size)


def _pad(images: np.ndarray, batch_size: int) -> np.ndarray:
    n = len(images)
    if n >= batch_size:
        return images
    return np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])


def _tf_device() -> str:
    gpus = tensorflow_gpus()
    return f"{gpus} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"
