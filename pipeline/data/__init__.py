"""Data: finding the images and their classes, the train/validation/test split, decoding."""

from pipeline.data._decode import augmentation, image_dataset
from pipeline.data._edit import LabelsTable, check_class_name, excluded_file
from pipeline.data._layouts import LAYOUTS, SPLIT_WORDS, TASKS, LayoutOptions, read_folder
from pipeline.data._paths import PathList, PathLookup
from pipeline.data._scan import (
    IMAGE_EXTENSIONS,
    RESIZES,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    UNLABELLED,
    VAL,
    ImageError,
    ImageFolder,
    assign_split,
    content_digest,
    decode_rgb,
    describe_skipped,
    fingerprint,
    load_image,
    parse_split,
    relative_inside,
    scan,
    stratified_split,
)
from pipeline.data._walk import walk_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "RESIZES",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VAL",
    "ImageError",
    "ImageFolder",
    "PathList",
    "PathLookup",
    "LAYOUTS",
    "LabelsTable",
    "check_class_name",
    "excluded_file",
    "LayoutOptions",
    "SPLIT_WORDS",
    "TASKS",
    "UNLABELLED",
    "relative_inside",
    "assign_split",
    "read_folder",
    "content_digest",
    "decode_rgb",
    "describe_skipped",
    "walk_images",
    "fingerprint",
    "load_image",
    "parse_split",
    "scan",
    "stratified_split",
    "augmentation",
    "image_dataset",
]
