"""Backbones: one registry of frozen ImageNet conv bases (EfficientNet-Lite offline, Keras
applications), their preprocessing, and feature models that turn images into codes."""

from pipeline.backbones._registry import (
    DEFAULT_BACKBONE,
    MAX_IMAGE_SIZE,
    POOLING_LAYERS,
    POOLINGS,
    PREPROCESSING,
    REGISTRY,
    Backbone,
    Preprocess,
    apply_preprocessing,
    available_memory,
    build_base,
    build_feature_model,
    check_batch_memory,
    check_layer,
    code_layer_name,
    get_backbone,
    list_backbones,
    list_layers,
    weights_identity,
)
from pipeline.backbones._lite import weights_cache_dir
from pipeline.backbones._torch_pickle import load_legacy_state_dict

__all__ = [
    "DEFAULT_BACKBONE",
    "MAX_IMAGE_SIZE",
    "POOLING_LAYERS",
    "POOLINGS",
    "PREPROCESSING",
    "REGISTRY",
    "Backbone",
    "Preprocess",
    "apply_preprocessing",
    "available_memory",
    "build_base",
    "check_batch_memory",
    "check_layer",
    "code_layer_name",
    "build_feature_model",
    "get_backbone",
    "list_backbones",
    "list_layers",
    "weights_identity",
    "load_legacy_state_dict",
    "weights_cache_dir",
]
