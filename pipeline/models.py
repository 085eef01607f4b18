"""One deployable Keras model: preprocessing + frozen (or fine-tuned) base + head, with class names.

The model takes raw RGB images, float32 0..255, shape (batch, size, size, 3), and returns class
probabilities. It is built from built-in Keras layers only, so ``keras.saving.load_model`` opens
it without this package; the class names and how the model was made are stored next to Keras's
own files inside the ``.keras`` zip, as ``cnn_codes.json``.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .backbones import apply_preprocessing, build_base, get_backbone, pooling_layer
from .errors import UserError, one_line
from .runs import load_record

META_NAME = "cnn_codes.json"


def head_as_keras(head, n_values: int):
    """A Keras model codes (batch, n_values) -> probabilities for any trained head (built-in
    layers only; a logistic-regression head as one Dense softmax layer, same probabilities)."""
    if head.n_features_in_ != n_values:
        raise UserError(f"the head takes codes of {head.n_features_in_} values, not {n_values}")
    return head.to_keras()


def build_classifier(backbone: str, weights: str, image_size: int, layer: str, pooling: str, head_model):
    """Raw RGB images -> probabilities: preprocessing, the base up to ``layer``, pooling, head.

    Returns (model, base) where ``base`` is the functional conv base whose layers the model
    uses (to choose which of them to fine-tune).
    """
    import keras

    bb = get_backbone(backbone)
    base = build_base(bb, weights, image_size)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = apply_preprocessing(bb.preprocessing, inputs)
    trunk = keras.Model(base.inputs, base.get_layer(layer).output, name=bb.name)
    # training=False: BatchNorm stays in inference mode even where layers are unfrozen later.
    x = trunk(x, training=False)
    x = pooling_layer(pooling, layer)(x)
    outputs = head_model(x)
    return keras.Model(inputs, outputs, name=f"{bb.name}_classifier"), trunk


def save_model(model, path, class_names, info: dict) -> Path:
    """Save as one ``.keras`` file with the class names and ``info`` inside."""
    path = Path(path)
    if path.suffix != ".keras":
        raise UserError(f"{path}: the model file name must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(META_NAME, json.dumps({"class_names": list(class_names), **info}, indent=2))
    return path


def load_model(path):
    """(model, class_names, info) from a file written by :func:`save_model`."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no model file at {path}")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read(META_NAME))
    except (zipfile.BadZipFile, KeyError, ValueError):
        raise UserError(f"{path} is not a model exported by this project (no {META_NAME} inside)") from None
    try:  # safe mode: Python code inside a model file someone hands us (a Lambda layer) is refused, not run
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise UserError(f"{path} was not loaded: {one_line(exc)}") from None
    return model, meta.pop("class_names"), meta


def classifier_from_head_run(run_dir):
    """(model, trunk, head_model, record) for a head trained on cached codes (a stage-2 run):
    the head on top of the backbone it was trained for, at the layer and pooling of its codes."""
    from .heads import load_head

    run_dir = Path(run_dir)
    record = load_record(run_dir, kind="head-on-codes")
    attrs = record["code_attrs"]
    shape = json.loads(attrs["code_shape"])
    n_values = int(np.prod(shape)) if attrs["pooling"] == "flatten" else shape[-1]
    head_model = head_as_keras(load_head(run_dir), n_values)
    model, trunk = build_classifier(attrs["backbone"], attrs["weights"], int(attrs["image_size"]), attrs["layer"],
                                    attrs["pooling"], head_model)
    return model, trunk, head_model, record


def export_head_run(run_dir, out=None) -> Path:
    """Export a head trained on cached codes (a stage-2 run folder) as one deployable model."""
    model, _, _, record = classifier_from_head_run(run_dir)
    out = Path(out) if out else Path(run_dir) / "model.keras"
    return save_model(model, out, record["class_names"], model_info(record["code_attrs"], "head-on-codes", str(run_dir)))


def model_info(attrs: dict, kind: str, source: str) -> dict:
    return {"kind": kind, "source": source, "backbone": attrs["backbone"], "layer": attrs["layer"],
            "pooling": attrs["pooling"], "image_size": int(attrs["image_size"]), "weights": attrs["weights"],
            "preprocessing": attrs["preprocessing"]}
