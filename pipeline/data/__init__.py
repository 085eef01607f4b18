"""Data: finding the images and their classes, the train/validation/test split, decoding."""

from pipeline.data._decode import augmentation, image_dataset
from pipeline.data._scan import (
    IMAGE_EXTENSIONS,
    RESIZES,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    ImageError,
    ImageFolder,
    content_digest,
    decode_rgb,
    fingerprint,
    load_image,
    parse_split,
    scan,
    stratified_split,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESIZES",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VAL",
    "ImageError",
    "ImageFolder",
    "content_digest",
    "decode_rgb",
    "fingerprint",
    "load_image",
    "parse_split",
    "scan",
    "stratified_split",
    "augmentation",
    "image_dataset",
]
