"""Stage 1, step one: decide once per run what each image needs, and cut the work into partitions.

Each image on disk is *cached* (its code is in the code set and the image has not changed),
*new*, *changed*, or known *failed* (unreadable, and unchanged since); an image in the code set
but no longer on disk is *removed*. New and changed images are cut into partitions whose ids are
a digest of what defines their codes (the settings, the images' paths and fingerprints): the
same work always gets the same id, whichever engine or worker computes it, and two different
pieces of work never share one. A partition whose part files are already there (a run that was
interrupted) is not computed again.

Partition boundaries are content-defined (where a path's hash says so, within a minimum and
maximum size), so an image added or removed between an interrupted run and its resumption moves
only the partition it falls into, not all those after it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from pipeline.codes._format import FailedImage, Index, parts_dir, read_index
from pipeline.codes._settings import MAX_PARTS, CodeIdentity
from pipeline.data import ImageFolder, PathList, PathLookup, content_digest
from pipeline.errors import ParameterError, UserError

STATES = ("cached", "new", "changed", "removed", "failed")


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """One unit of work: images to compute, with the fingerprints they had when planned."""

    id: str
    paths: PathList
    fingerprints: np.ndarray          # (n, 2) int64
    images: np.ndarray                # (n,) their positions in the data set

    def __len__(self) -> int:
        return len(self.paths)

    def load(self) -> Partition:
        """The partition with its listing in memory (this one: see the shelved ones of a run)."""
        return self

    def positions(self, paths) -> np.ndarray:
        """Where each of ``paths`` (of this partition's images) is in the data set; -1 for another."""
        at = PathLookup(self.paths).find(paths)
        return np.where(at >= 0, self.images[at], -1)


@dataclasses.dataclass
class OutputPlan:
    """One code set (layer, pooling) of the run: what of it is kept as it is. Per image and per
    row, as arrays: a million images are a few arrays, not a million records."""

    path: Path
    attrs: dict
    index: Index | None               # its paths released: ``at`` says where they are
    at: np.ndarray                    # each index row's image (position in the data set); -1: gone
    usable: np.ndarray                # each index row: its image is unchanged (the row is kept)
    cached: np.ndarray                # each image of the data set: it has a usable row
    failed: dict[int, FailedImage]    # known unreadable and unchanged since, by position
    gone: list[str]                   # images of the code set no longer on disk

    def staged(self, partition: Partition) -> bool:
        return (parts_dir(self.path) / f"part-{partition.id}.h5").is_file()


@dataclasses.dataclass(frozen=True)
class Plan:
    ds: ImageFolder
    outputs: list[OutputPlan]
    partitions: list[Partition]       # every partition of the new and changed images, in data-set order
    pending: list[Partition]          # those whose parts are not all written yet
    counts: dict[str, int]            # images per state

    @property
    def n_todo(self) -> int:
        return sum(len(p) for p in self.pending)

    def describe(self) -> str:
        return ", ".join(f"{self.counts[s]} {s}" for s in STATES if self.counts[s])


def check_identity(index: Index, attrs: dict) -> None:
    """The rows of a code set are reused only where its identity is the run's (the runtime is
    not part of it: TensorFlow and OpenVINO FP32 give the same codes within 1e-4)."""
    try:
        old = CodeIdentity.from_attrs(index.attrs)
    except ParameterError as exc:
        raise UserError(f"cache file {index.path} does not say how it was made ({exc}); pass --overwrite to "
                        f"replace it or --cache-dir to keep both") from None
    diff = ", ".join(old.differences(CodeIdentity.from_attrs(attrs)))
    if diff:
        raise UserError(f"cache file {index.path} was made with other settings ({diff}); "
                        f"pass --overwrite to replace it or --cache-dir to keep both")


def _plan_output(path: Path, attrs: dict, ds: ImageFolder, lookup: PathLookup | None, digest_of, overwrite: bool,
                 verify: bool) -> OutputPlan:
    """What of one code set can be kept. "Changed", as make and rsync decide it: another size,
    or another modification time and other bytes (a copied or re-extracted image keeps its
    code). ``verify`` re-hashes every image, so that bytes changed behind an unchanged size and
    time are noticed too."""
    index = None if overwrite or not path.exists() else read_index(path)
    if index is None:
        return OutputPlan(path, attrs, None, np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(len(ds), bool), {},
                          [])
    check_identity(index, attrs)
    rows = index.rows
    at = lookup.find(index.paths)
    folder = parts_dir(path)
    lost = np.array([bool(n) and not (folder / n).is_file() for n in rows.part_names])  # computed again
    on = (at >= 0) & ~lost[rows.part]
    now = ds.fingerprints[np.maximum(at, 0)]
    # the same size and time (the usual case) decided for all rows at once
    usable = on & (now == rows.fingerprints).all(axis=1) & (not verify)
    # the same size, another time (or --verify): the same bytes?
    for i in np.flatnonzero(on & ~usable & (now[:, 0] == rows.fingerprints[:, 0]) & (rows.digests != 0)).tolist():
        usable[i] = digest_of(index.paths[i]) == int(rows.digests[i])
    cached = np.zeros(len(ds), bool)
    cached[at[usable]] = True
    failed = {}
    for i, f in zip(lookup.find(list(index.failed)).tolist(), index.failed.values()):
        if i >= 0 and not cached[i] and tuple(ds.fingerprints[i].tolist()) == tuple(f.fingerprint):
            failed[i] = f
    gone = [index.paths[i] for i in np.flatnonzero(at < 0).tolist()]
    index = dataclasses.replace(index, paths=None)  # (a million paths not held through compute and commit)
    return OutputPlan(path, attrs, index, at, usable, cached, failed, gone)


def partition_size(n_todo: int, max_parts: int = MAX_PARTS) -> int:
    """Target images per partition: about 16 partitions of the work (so that workers share it
    and an interruption loses little), within 512-8192 images (so that a code set has few parts),
    and more where that would give the work more than a quarter of ``max_parts`` partitions: a
    build of a few million images would otherwise leave more parts than a code set may have, and
    merging them would write every code a second time."""
    target = 512
    while target < 8192 and target * 16 < n_todo:
        target *= 2
    return max(target, -(-n_todo // max(1, max_parts // 4)))


def cut(paths, target: int) -> list[tuple[int, int]]:
    """Content-defined (start, stop) ranges of ``paths``: a boundary after a path whose hash is
    0 modulo ``target``, none before ``target // 4`` images, always one at ``2 * target``."""
    lo, hi = max(1, target // 4), 2 * target
    out, start = [], 0
    encoded = (p for block in PathList.of(paths).encoded_blocks() for p in block)
    for i, p in enumerate(encoded):
        n = i - start + 1
        if n >= hi or (n >= lo and zlib.crc32(p) % target == 0):
            out.append((start, i + 1))
            start = i + 1
    if start < len(paths):
        out.append((start, len(paths)))
    return out


def make_plan(ds: ImageFolder, files: list[Path], out_attrs: list[dict], *, overwrite=False, verify=False,
              target: int | None = None, max_parts: int = MAX_PARTS) -> Plan:
    # each image's position by path, only while planning (16 bytes an image) and only to match
    # the rows of an existing code set: a build has none
    existing = not overwrite and any(Path(f).exists() for f in files)
    lookup = PathLookup(ds.paths) if existing else None
    digests: dict[str, int] = {}

    def digest_of(p: str) -> int:  # each image hashed at most once per plan (0: unreadable)
        if p not in digests:
            try:
                digests[p] = content_digest(ds.root / p)
            except OSError:
                digests[p] = 0
        return digests[p]

    outputs = [_plan_output(f, a, ds, lookup, digest_of, overwrite, verify) for f, a in zip(files, out_attrs)]
    n = len(ds.paths)
    need, known, failed_first = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    for k, o in enumerate(outputs):
        done = o.cached.copy()
        done[list(o.failed)] = True
        need |= ~done
        if k == 0:
            failed_first[list(o.failed)] = True
        if o.index:
            known[o.at[o.at >= 0]] = True
            failed_at = lookup.find(list(o.index.failed))
            known[failed_at[failed_at >= 0]] = True
    todo = np.flatnonzero(need)
    counts = {
        "cached": n - len(todo) - int(failed_first.sum()),
        "new": int((~known[todo]).sum()),
        "changed": int(known[todo].sum()),
        "removed": len(set().union(*(o.gone for o in outputs))),
        "failed": int((failed_first & ~need).sum()),
    }
    del lookup
    identity = CodeIdentity.from_attrs(out_attrs[0]).model_key()
    todo_paths = ds.paths.take(todo)  # (the partitions' paths: views of the data set's, in a build)
    partitions = []
    for start, stop in cut(todo_paths, target or partition_size(len(todo), max_parts)):
        paths, images = todo_paths[start:stop], todo[start:stop]
        run = images[-1] - images[0] == len(images) - 1  # (a build: a view, not a copy)
        fps = ds.fingerprints[images[0]:images[-1] + 1] if run else ds.fingerprints[images]
        digest = hashlib.blake2b(json.dumps([identity, list(paths), fps.tolist()], sort_keys=True).encode(),
                                 digest_size=8)
        partitions.append(Partition(digest.hexdigest(), paths, fps, images))
    # --overwrite recomputes all (part files of the same id are replaced by equal ones)
    pending = [p for p in partitions if overwrite or not all(o.staged(p) for o in outputs)]
    return Plan(ds, outputs, partitions, pending, counts)
