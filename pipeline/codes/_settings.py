"""What defines a code set (:class:`CodeIdentity`) and how a run computes it (:class:`ComputeOptions`).

Its fields are the settings two code sets must share for their rows to be interchangeable. From
it come the code set's path in the cache, its file attributes (and back, with defaults for files
written before a field existed), the ``make`` command that creates it, the identity part of a
worker's spec and the command-line options of the settings. Adding a setting is one field here
(with its option's choices and help in ``metadata``) plus its use.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Json, field_validator

from pipeline._checked import Fraction, LaxSchema, Name, Text, check_value
from pipeline.backbones import DEFAULT_BACKBONE, MAX_IMAGE_SIZE, POOLINGS, get_backbone, weights_identity
from pipeline.codes._homes import find_home
from pipeline.codes._runtimes import PRECISIONS
from pipeline.data import RESIZES, LayoutOptions
from pipeline.errors import MAX_SEED, ParameterError

TTAS = ("none", "flip")
ENGINES = ("local", "ray")
DTYPES = ("float32", "float16")


def _setting(default, choices, help, *, folder=True):
    """A setting with a command-line option; ``folder``: a value other than the default makes a
    code set of its own, in a folder named with that value."""
    return dataclasses.field(default=default, metadata={"choices": choices, "help": help, "folder": folder})


MAX_PARTS = 256  # before compaction; each part is an open file while the index is read


@dataclasses.dataclass(frozen=True)
class CodeIdentity:
    """One code set's identity (use :meth:`of` to fill in the backbone's defaults)."""

    backbone: str
    image_size: int
    weights_id: str          # imagenet, random, or file-<sha256 prefix> of a weights file
    layer: str
    pooling: str
    preprocessing: str       # the backbone's (kept: files say how their inputs were made)
    dtype: str = _setting("float32", DTYPES, "dtype of the stored codes", folder=False)
    precision: str = _setting("fp32", PRECISIONS, "precision of the forward pass (bf16 runs on OpenVINO only)")
    tta: str = _setting("none", TTAS, "test-time augmentation: flip stores the mean of the codes of each image "
                        "and of its mirror image")
    resize: str = _setting("squash", RESIZES, "how images become squares: squash the whole image, or crop its "
                           "centre (shorter side to size / 0.875)")

    @classmethod
    def of(cls, backbone=DEFAULT_BACKBONE, layer=None, pooling="avg", weights="imagenet", image_size=None,
           **settings) -> "CodeIdentity":
        """The identity of the codes these options make: the backbone's input size, final conv
        block and preprocessing by default; ``settings`` are the other fields (``dtype``, ...)."""
        bb = get_backbone(backbone)
        unknown = set(settings) - {f.name for f in cls.settings()}
        if unknown:
            raise ParameterError(sorted(unknown)[0], "is not a setting of a code set")
        identity = cls(bb.name, int(bb.input_size if image_size is None else image_size), weights_identity(weights),
                       layer or bb.default_layer,
                       pooling, bb.preprocessing, **settings)
        identity.check()
        return identity

    @classmethod
    def settings(cls) -> list[dataclasses.Field]:
        """The fields with a command-line option of their own (name, default, choices, help)."""
        return [f for f in dataclasses.fields(cls) if f.metadata]

    @classmethod
    def from_attrs(cls, attrs) -> "CodeIdentity":
        """The identity a code set's file attributes state; files written before a setting
        existed have its default."""
        values = {}
        for f in dataclasses.fields(cls):
            value = attrs.get(f.name, f.default)
            if value is dataclasses.MISSING:
                raise ParameterError(f.name, "is missing from the code set's attributes")
            values[f.name] = int(value) if f.name == "image_size" else str(value)
        return cls(**values)

    def check(self) -> None:
        """Every setting one of its choices, the pooling known (a ParameterError naming it)."""
        if self.pooling not in POOLINGS:
            raise ParameterError("pooling", f"{self.pooling}: choose one of {', '.join(POOLINGS)}")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ParameterError("image_size", f"{self.image_size}: give 1 to {MAX_IMAGE_SIZE} pixels a side")
        for f in self.settings():
            if getattr(self, f.name) not in f.metadata["choices"]:
                raise ParameterError(f.name, f"{getattr(self, f.name)}: choose one of "
                                             f"{', '.join(f.metadata['choices'])}")

    def to_attrs(self) -> dict:
        return dataclasses.asdict(self)

    def model_key(self) -> dict:
        """The identity without the output's layer and pooling: what defines the forward pass."""
        return {k: v for k, v in self.to_attrs().items() if k not in ("layer", "pooling")}

    def differences(self, other: "CodeIdentity") -> list[str]:
        """``name: ours -> theirs`` of each field that differs."""
        return [f"{f.name}: {getattr(self, f.name)} -> {getattr(other, f.name)}" for f in dataclasses.fields(self)
                if str(getattr(self, f.name)) != str(getattr(other, f.name))]

    def _folder_suffixes(self) -> list[tuple[str, str]]:
        return [(f.name, getattr(self, f.name)) for f in self.settings()
                if f.metadata["folder"] and getattr(self, f.name) != f.default]

    def path(self, cache_dir, data) -> Path:
        """``<cache_dir>/<data folder name>/<backbone>-<size>-<weights>[-<setting>...]/<layer>-<pooling>.h5``
        (the data folder's own cache folder: :func:`~pipeline.codes._homes.find_home`)."""
        return self.file_in(find_home(cache_dir, data))

    def file_in(self, home) -> Path:
        """The code set's file in the cache folder ``home`` of its data folder."""
        suffixes = "".join(f"-{v}" for _, v in self._folder_suffixes())
        model = f"{self.backbone}-{self.image_size}-{self.weights_id}{suffixes}"
        return Path(home) / model / f"{self.layer}-{self.pooling}.h5"

    def make_command(self, data) -> str:
        """The make command that creates this code set (for messages)."""
        extra = [f"--{name.replace('_', '-')} {value}" for name, value in self._folder_suffixes()]
        return (f"make codes DATA={data} BACKBONE={self.backbone} LAYER={self.layer} POOLING={self.pooling}"
                + (f" IMAGE_SIZE={self.image_size}"
                   if self.image_size != get_backbone(self.backbone).input_size else "")
                + (f" ARGS='{' '.join(extra)}'" if extra else ""))


@dataclasses.dataclass(frozen=True)
class ComputeOptions:
    """How a stage-1 run computes and stores codes, never what they are: whatever these are, the
    code set is the same (tested for engines, worker counts, partition sizes and runtimes)."""

    engine: str = "local"             # local (threads of this process) or ray (an actor pool)
    workers: int = 1                  # model workers, each with its own copy of the model
    decode_threads: int | None = None  # image decoders per worker (None: one per core, at most 8)
    runtime: str = "auto"             # auto, tensorflow or openvino ("auto" is resolved where a worker runs)
    batch_size: int = 32              # images per forward pass
    partition_size: int | None = None  # images per partition (None: see _plan.partition_size)
    ray_address: str | None = None    # a running Ray cluster to join (None: start a local one)
    max_parts: int = MAX_PARTS        # part files a code set may have before the smallest are merged
    overwrite: bool = False           # recompute every image
    verify: bool = False              # re-hash every image to find changed bytes behind the same size and time
    wait: bool = True                 # wait for another run writing the same code set (False: refuse)

    def check(self) -> None:
        """Each option in range, or a ParameterError naming it (``runtime``: by
        :func:`~pipeline.codes._runtimes.choose_runtime`, which also knows the precision)."""
        if self.engine not in ENGINES:
            raise ParameterError("engine", f"{self.engine}: choose one of {', '.join(ENGINES)}")
        for name, least in (("workers", 1), ("batch_size", 1), ("max_parts", 2), ("decode_threads", 1),
                            ("partition_size", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ParameterError(name, f"must be at least {least}")


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """Keyword options of stage 1 as (identity settings, compute options, layout options); any
    other name is a ParameterError."""
    groups = ({f.name for f in CodeIdentity.settings()}, {f.name for f in dataclasses.fields(ComputeOptions)},
              {f.name for f in dataclasses.fields(LayoutOptions)} - {"exclude"})
    for name in options:
        if not any(name in g for g in groups):
            raise ParameterError(name, "is not an option of generate_codes")
    return tuple({k: v for k, v in options.items() if k in g} for g in groups)


class StoredSplit(LaxSchema):
    """How a code set's split was drawn, as its attributes state it (stage 1 reads it back to keep
    the split; a model rebuilt from the codes, to redraw it)."""

    split_fractions: Json[Annotated[list[Fraction], Field(min_length=3, max_length=3)]] | None = None
    split_seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None


class StatedMaking(StoredSplit):
    """A code set's making as its attributes state them (in the file, or copied as text into a
    run's record): what exporting and fine-tuning rebuild the model from."""

    backbone: Name
    weights: Name
    image_size: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)]
    layer: Name
    pooling: Literal[POOLINGS]
    preprocessing: Name
    code_shape: Json[Annotated[list[Annotated[int, Field(ge=1, le=1 << 24)]], Field(min_length=1, max_length=3)]]
    tta: Literal[TTAS] = "none"
    resize: Literal[RESIZES] = "squash"
    data_root: Text | None = None

    @field_validator("backbone")
    @classmethod
    def _known(cls, name):
        get_backbone(name)  # a UserError naming the backbones there are
        return name


class JoinedMaking(LaxSchema):
    members: Json[Annotated[list[StatedMaking], Field(min_length=1, max_length=64)]]


class IndexAttrs(LaxSchema):
    """The attributes of a code file that its readers parse: JSON where JSON is stored, numbers
    where numbers are (each optional: codes written by other means may not state them)."""

    format_version: Annotated[int, Field(ge=1, le=1000)] = 1
    code_shape: Json[Annotated[list[Annotated[int, Field(ge=1, le=1 << 24)]], Field(min_length=1, max_length=3)]] | None = None
    # (split_fractions and split_seed: stage 1 reads them with a message of its own, and
    # --resplit mends them; a model rebuilt from them checks them in StatedMaking)
    layout: Json[dict[str, Any]] | None = None
    members: Json[Annotated[list[dict[str, Any]], Field(min_length=1, max_length=64)]] | None = None
    data_root: Text | None = None
    image_size: Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)] | None = None
    task: Literal["single-label", "multi-label"] = "single-label"
    tta: Literal[TTAS] = "none"
    resize: Literal[RESIZES] = "squash"
    pooling: Literal[POOLINGS] | None = None


def stated_making(attrs: dict, where: str) -> dict:
    """``attrs`` if they state a making a model can be rebuilt from (:class:`StatedMaking`; a
    joined set's: each member's); else a :class:`UserError` naming ``where`` and the field."""
    check_value(attrs, JoinedMaking if "members" in attrs else StatedMaking, where)
    return attrs


def setting(info: dict, name: str):
    """A setting of an identity read from a dictionary (attributes, a model's info) that may
    predate it: its value, or the default."""
    return info.get(name, next(f.default for f in dataclasses.fields(CodeIdentity) if f.name == name))
