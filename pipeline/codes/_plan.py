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

from pipeline.codes._format import FailedImage, Index, Row, parts_dir, read_index
from pipeline.codes._settings import CodeIdentity
from pipeline.data import ImageFolder, content_digest
from pipeline.errors import ParameterError, UserError

STATES = ("cached", "new", "changed", "removed", "failed")


@dataclasses.dataclass(frozen=True)
class Partition:
    """One unit of work: images to compute, with the fingerprints they had when planned."""

    id: str
    paths: tuple[str, ...]
    fingerprints: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass
class OutputPlan:
    """One code set (layer, pooling) of the run: what of it is kept as it is."""

    path: Path
    attrs: dict
    index: Index | None
    usable: dict[str, Row]            # cached rows whose image is unchanged
    failed: dict[str, FailedImage]    # known unreadable, unchanged since

    def staged(self, partition: Partition) -> bool:
        return (parts_dir(self.path) / f"part-{partition.id}.h5").is_file()


@dataclasses.dataclass
class Plan:
    ds: ImageFolder
    outputs: list[OutputPlan]
    partitions: list[Partition]       # every partition of the new and changed images, in data-set order
    pending: list[Partition]          # those whose parts are not all written yet
    counts: dict[str, int]            # images per state
    fingerprints: dict[str, tuple[int, int]]  # of every image on disk now, by path

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


def _plan_output(path: Path, attrs: dict, ds: ImageFolder, current: dict, digest_of, overwrite: bool,
                 verify: bool) -> OutputPlan:
    """What of one code set can be kept. "Changed", as make and rsync decide it: another size,
    or another modification time and other bytes (a copied or re-extracted image keeps its
    code). ``verify`` re-hashes every image, so that bytes changed behind an unchanged size and
    time are noticed too."""
    index = None if overwrite or not path.exists() else read_index(path)
    if index is None:
        return OutputPlan(path, attrs, None, {}, {})
    check_identity(index, attrs)

    def unchanged(p: str, fingerprint, digest: int) -> bool:
        now = current.get(p)
        if now is None or now[0] != fingerprint[0]:
            return False
        if now == tuple(fingerprint) and not verify:
            return True
        return digest != 0 and digest_of(p) == digest

    folder = parts_dir(path)
    lost = {n for n in {r.part for r in index.rows} if n and not (folder / n).is_file()}  # computed again
    # the same size and time (the usual case) decided without a call per image
    usable = {r.path: r for r in index.rows if r.part not in lost and (
        (not verify and current.get(r.path) == r.fingerprint) or unchanged(r.path, r.fingerprint, r.digest))}
    failed = {p: f for p, f in index.failed.items() if current.get(p) == tuple(f.fingerprint) and p not in usable}
    return OutputPlan(path, attrs, index, usable, failed)


def partition_size(n_todo: int) -> int:
    """Target images per partition: about 16 partitions of the work (so that workers share it
    and an interruption loses little), within 512-8192 images (so that a code set has few parts)."""
    target = 512
    while target < 8192 and target * 16 < n_todo:
        target *= 2
    return target


def cut(paths: list[str], target: int) -> list[tuple[int, int]]:
    """Content-defined (start, stop) ranges of ``paths``: a boundary after a path whose hash is
    0 modulo ``target``, none before ``target // 4`` images, always one at ``2 * target``."""
    lo, hi = max(1, target // 4), 2 * target
    out, start = [], 0
    for i, p in enumerate(paths):
        n = i - start + 1
        if n >= hi or (n >= lo and zlib.crc32(p.encode()) % target == 0):
            out.append((start, i + 1))
            start = i + 1
    if start < len(paths):
        out.append((start, len(paths)))
    return out


def make_plan(ds: ImageFolder, files: list[Path], out_attrs: list[dict], *, overwrite=False, verify=False,
              target: int | None = None) -> Plan:
    current = dict(zip(ds.paths, map(tuple, np.asarray(ds.fingerprints).tolist())))
    digests: dict[str, int] = {}

    def digest_of(p: str) -> int:  # each image hashed at most once per plan (0: unreadable)
        if p not in digests:
            try:
                digests[p] = content_digest(ds.root / p)
            except OSError:
                digests[p] = 0
        return digests[p]

    outputs = [_plan_output(f, a, ds, current, digest_of, overwrite, verify) for f, a in zip(files, out_attrs)]
    if len(outputs) == 1:  # the usual case, without a generator per image
        todo = [p for p in ds.paths if p not in outputs[0].usable and p not in outputs[0].failed]
    else:
        todo = [p for p in ds.paths if any(p not in o.usable and p not in o.failed for o in outputs)]
    indexed = set().union(*({r.path for r in o.index.rows} for o in outputs if o.index))
    known = indexed.union(*(o.index.failed for o in outputs if o.index))
    on_disk = set(ds.paths)
    first_failed = outputs[0].failed  # usually none: no pass over the paths for them
    counts = {
        "cached": len(ds.paths) - len(todo) - (sum(p in first_failed for p in ds.paths) if first_failed else 0),
        "new": sum(p not in known for p in todo),
        "changed": sum(p in known for p in todo),
        "removed": len(indexed - on_disk),
        "failed": sum(p in first_failed and p not in todo for p in ds.paths) if first_failed else 0,
    }
    identity = CodeIdentity.from_attrs(out_attrs[0]).model_key()
    partitions = []
    for start, stop in cut(todo, target or partition_size(len(todo))):
        paths = tuple(todo[start:stop])
        fps = tuple(current[p] for p in paths)
        digest = hashlib.blake2b(json.dumps([identity, paths, fps], sort_keys=True).encode(), digest_size=8)
        partitions.append(Partition(digest.hexdigest(), paths, fps))
    # --overwrite recomputes all (part files of the same id are replaced by equal ones)
    pending = [p for p in partitions if overwrite or not all(o.staged(p) for o in outputs)]
    return Plan(ds, outputs, partitions, pending, counts, current)


def labels_of(ds: ImageFolder) -> dict:
    """Each image's label (multi-label: its row of 0/1 targets), by path."""
    return dict(zip(ds.paths, (ds.targets if ds.multi_label else np.asarray(ds.labels)).tolist()))
