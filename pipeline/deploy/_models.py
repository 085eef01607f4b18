"""One deployable Keras model: preprocessing + frozen (or fine-tuned) base + head, with class names.

The model takes raw RGB images, float32 0..255, shape (batch, size, size, 3), and returns class
probabilities. It is built from built-in Keras layers only, so ``keras.saving.load_model`` opens
it without this package; the class names and how the model was made are stored next to Keras's
own files inside the ``.keras`` zip, as ``cnn_codes.json``.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline._checked import ClassNames, Fraction, Schema, Text, check_json
from pipeline._faults import fault_point
from pipeline._files import durable_replace
from pipeline._records import KINDS, load_record, process_alive
from pipeline.backbones import (MAX_IMAGE_SIZE, POOLING_LAYERS, apply_preprocessing, build_base, check_layer,
                                 code_layer_name, get_backbone)
from pipeline.codes import setting, stated_making
from pipeline.data import RESIZES
from pipeline.errors import UserError, one_line
from pipeline.heads import load_head

# Deferred on purpose: Keras, TensorFlow are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.

META_NAME = "cnn_codes.json"


def head_as_keras(head, n_values: int):
    """A Keras model codes (batch, n_values) -> probabilities for any trained head (built-in
    layers only; a logistic-regression head as one Dense softmax layer, same probabilities)."""
    if head.n_features_in_ != n_values:
        raise UserError(f"the head takes codes of {head.n_features_in_} values, not {n_values}")
    return head.to_keras()


def build_classifier(backbone: str, weights: str, image_size: int, layer: str, pooling: str, head_model,
                     tta: str = "none"):
    """Raw RGB images -> probabilities: preprocessing, the base up to ``layer``, pooling, head.
    With ``tta`` flip the codes are the mean of those of the image and of its mirror image, as
    stage 1 made them.

    Returns (model, base) where ``base`` is the functional conv base whose layers the model
    uses (to choose which of them to fine-tune).
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="image")
    codes, trunk = _codes_of(inputs, dict(backbone=backbone, weights=weights, image_size=image_size, layer=layer,
                                          pooling=pooling, tta=tta))
    outputs = head_model(codes)
    return keras.Model(inputs, outputs, name=f"{get_backbone(backbone).name}_classifier"), trunk


def _along_axis(matrix: np.ndarray, axis: str, name: str, matrix_name: str = "matrix"):
    """Multiply the height or width axis of (b, h, w, c) images by ``matrix`` (new length x old)
    from built-in layers (safe-mode loadable, and plain fully-connected ops in TFLite and ONNX):
    that axis moved last, a fixed Dense layer, moved back."""
    import keras

    order = (1, 3, 2) if axis == "width" else (3, 2, 1)
    dense = keras.layers.Dense(matrix.shape[0], use_bias=False, trainable=False, name=f"{name}_{matrix_name}")
    dense.build((None, matrix.shape[1]))
    dense.set_weights([np.asarray(matrix, np.float32).T])
    return lambda x: keras.layers.Permute(order, name=f"{name}_back")(
        dense(keras.layers.Permute(order, name=f"{name}_{axis}_last")(x)))


def _mirror(image_size: int, name: str):
    """A left-right flip of (size, size, 3) images: the width times the reversed identity matrix."""
    return _along_axis(np.eye(image_size, dtype=np.float32)[::-1], "width", name, "reverse")


def _resize(size: int, new: int, name: str):
    """Antialiased bilinear resizing of (size, size, 3) images to (new, new, 3), as Keras's
    ``Resizing(antialias=True)`` does (TensorFlow's ScaleAndTranslate, which TFLite and ONNX
    lack), written as the linear map it is: one matrix along the height, the same along the width."""
    import tensorflow as tf

    basis = np.eye(size, dtype=np.float32).reshape(size, size, 1, 1)  # image j: 1 at row j
    matrix = tf.image.resize(basis, (new, 1), antialias=True).numpy()[:, :, 0, 0].T  # (new, size)
    height = _along_axis(matrix, "height", f"{name}_h")
    width = _along_axis(matrix, "width", f"{name}_w")
    return lambda x: width(height(x))


def _codes_of(images, attrs: dict, suffix: str = ""):
    """(codes, trunk) of one code set's making, applied to ``images`` of its input size."""
    import keras

    bb = get_backbone(attrs["backbone"])
    size = int(attrs["image_size"])
    base = build_base(bb, attrs["weights"], size)
    trunk = keras.Model(base.inputs, base.get_layer(check_layer(bb, base, attrs["layer"])).output, name=bb.name + suffix)
    pool = getattr(keras.layers, POOLING_LAYERS[attrs["pooling"]])
    name = code_layer_name(attrs["layer"], attrs["pooling"]) + suffix

    x = apply_preprocessing(bb.preprocessing, images, name="preprocess" + suffix)
    # training=False: BatchNorm stays in inference mode even where layers are unfrozen later.
    if setting(attrs, "tta") == "flip":  # (a mirror of the preprocessed image: the same thing)
        flipped = _mirror(size, "mirror" + suffix)(x)
        both = [pool(name=f"{name}_image")(trunk(x, training=False)),
                pool(name=f"{name}_mirror")(trunk(flipped, training=False))]
        return keras.layers.Average(name=name)(both), trunk
    return pool(name=name)(trunk(x, training=False)), trunk


def build_joined_classifier(members: list[dict], head_model):
    """Raw RGB images -> probabilities for a head on joined code sets: every base (each at its
    own input size, resized from the largest), their codes concatenated, the head."""
    import keras

    size = max(int(a["image_size"]) for a in members)
    inputs = keras.Input((size, size, 3), name="image")
    parts = []
    for k, a in enumerate(members):
        s = int(a["image_size"])
        x = inputs if s == size else _resize(size, s, f"resize_{k}")(inputs)
        parts.append(_codes_of(x, a, suffix=f"_{k}")[0])
    codes = keras.layers.Concatenate(name="joined_codes")(parts)
    return keras.Model(inputs, head_model(codes), name="joined_classifier")


def save_model(model, path, class_names, info: dict) -> Path:
    """Save as one ``.keras`` file with the class names and ``info`` inside."""
    path = Path(path)
    if path.suffix != ".keras":
        raise UserError(f"{path}: the model file name must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.stem}.*.tmp.keras"):  # left by a killed export
        pid = stale.name.split(".")[-3]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")  # whole or absent: written aside, then renamed
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as z:
            z.writestr(META_NAME, json.dumps({"class_names": list(class_names), **info}, indent=2))
        fault_point("export-tmp-written")
        durable_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class ModelInfo(Schema):
    """``cnn_codes.json`` inside a model file: its classes and how it takes images."""

    class_names: ClassNames
    kind: Literal[KINDS]
    image_size: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]
    source: Text = ""
    resize: Literal[RESIZES] = "squash"
    task: Literal["single-label", "multi-label"] = "single-label"
    thresholds: list[Fraction] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.task == "multi-label" and (self.thresholds is None or len(self.thresholds) != len(self.class_names)):
            raise ValueError(f"a multi-label model needs thresholds, one per label ({len(self.class_names)})")
        return self


def load_model(path):
    """(model, class_names, info) from a file written by :func:`save_model`; the metadata is
    checked (:class:`ModelInfo`) and must fit the model's input and output."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model file at {path}")
    try:
        with zipfile.ZipFile(path) as z:
            if z.getinfo(META_NAME).file_size > 64 << 20:
                raise UserError(f"{path}: its {META_NAME} is larger than a model's description can be")
            text = z.read(META_NAME)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, EOFError):
        raise UserError(f"{path} is not a model exported by this project (no {META_NAME} inside)") from None
    info = check_json(text, ModelInfo, f"{path}: {META_NAME} is not valid")
    try:  # safe mode: Python code inside a model file someone hands us (a Lambda layer) is refused, not run
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise UserError(f"{path} was not loaded: {one_line(exc)}") from None
    want_in, want_out = (None, info.image_size, info.image_size, 3), (None, len(info.class_names))
    got_in, got_out = tuple(getattr(model, "input_shape", ())), tuple(getattr(model, "output_shape", ()))
    if got_in != want_in or got_out != want_out:
        raise UserError(f"{path}: the model takes {got_in} and gives {got_out}; its {META_NAME} says "
                        f"{want_in} and {want_out}")
    meta = info.model_dump(exclude_unset=True)
    return model, meta.pop("class_names"), meta


def classifier_from_head_run(run_dir):
    """(model, trunk, head_model, record) for a head trained on cached codes (a stage-2 run):
    the head on top of the backbone it was trained for, at the layer and pooling of its codes."""

    run_dir = Path(run_dir)
    record = load_record(run_dir, kind="head-on-codes")
    attrs = stated_making(record["code_attrs"], f"{run_dir}/record.json: code_attrs")
    members = json.loads(attrs["members"]) if "members" in attrs else [attrs]
    head_model = head_as_keras(load_head(run_dir), sum(_n_values(a) for a in members))
    if len(members) > 1:
        return build_joined_classifier(members, head_model), None, head_model, record
    model, trunk = build_classifier(attrs["backbone"], attrs["weights"], int(attrs["image_size"]), attrs["layer"],
                                    attrs["pooling"], head_model, setting(attrs, "tta"))
    return model, trunk, head_model, record


def _n_values(attrs: dict) -> int:
    shape = json.loads(attrs["code_shape"])
    return int(np.prod(shape)) if attrs["pooling"] == "flatten" else shape[-1]


def export_head_run(run_dir, out=None) -> Path:
    """Export a head trained on cached codes (a stage-2 run folder) as one deployable model."""
    model, _, _, record = classifier_from_head_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "model.keras"
    info = model_info(record["code_attrs"], "head-on-codes", str(run_dir))
    if record.get("task") == "multi-label":  # sigmoid outputs: each label decided by its own threshold
        info.update(task="multi-label", thresholds=[float(t) for t in record["thresholds"]])
    return save_model(model, out, record["class_names"], info)


def model_info(attrs: dict, kind: str, source: str) -> dict:
    if "members" in attrs:  # joined code sets: the model takes images of the largest input size
        members = json.loads(attrs["members"])
        return {"kind": kind, "source": source, "backbone": attrs["backbone"], "layer": attrs["layer"],
                "pooling": attrs["pooling"], "image_size": max(int(a["image_size"]) for a in members),
                "weights": attrs["weights"], "resize": setting(members[0], "resize"),
                "members": [model_info(a, kind, source) for a in members]}
    return {"kind": kind, "source": source, "backbone": attrs["backbone"], "layer": attrs["layer"],
            "pooling": attrs["pooling"], "image_size": int(attrs["image_size"]), "weights": attrs["weights"],
            "preprocessing": attrs["preprocessing"], "tta": setting(attrs, "tta"),
            "resize": setting(attrs, "resize")}
