"""The code-set file format: part files, the index that makes them one code set, and reading it.

A code set is one path, ``<layer>-<pooling>.h5``, that plain h5py opens: datasets ``codes``
(N, D), ``paths``, ``labels``, ``split``, ``class_names`` (and ``fingerprints``, ``digests``,
``failed_*``) at the top. Since format version 2 it is a small *index*: ``codes`` is an HDF5
virtual dataset over *part files* in the folder beside it, ``<layer>-<pooling>.parts/``, each
written once, whole, by one partition of stage 1 and never modified. So an update writes the
parts of the images it computes plus a new index, never the codes already there; a removed
image is a row the index no longer maps. The index is replaced atomically, so a reader sees the
old code set or the new one; parts no index refers to are deleted after it. When updates have
left many small parts, :func:`compact` merges them.

Trade-off (see the README): a virtual dataset opens its part files lazily and reads nothing
for a part it cannot open but its fill value, so the index records its parts, the reader
checks they exist, the fill value is NaN (never a plausible code) and the number of parts is
kept bounded by compaction (HDF5 keeps each part open while the index is open).

Format version 1 (one file holding the codes) still loads; its first update turns the old file
into the first part, without copying it where the file system allows a hard link.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from pipeline._faults import fault_point
from pipeline._files import durable_replace
from pipeline.data import PathList
from pipeline.errors import UserError

FORMAT_VERSION = 2
STR = h5py.string_dtype()
MAX_PARTS = 256  # before compaction; each part is an open file while the index is read
PATH_BLOCK = 4096  # a part's paths written a block at a time


def parts_dir(path: Path) -> Path:
    """The folder of a code set's part files (not named ``<layer>-<pooling>.h5``)."""
    path = Path(path)
    return path.with_name(path.stem + ".parts")


def check_room(path: Path, n_bytes: int, kept: str = "") -> None:
    """Refuse to start writing ``path`` where it cannot fit: HDF5 does not survive a failed
    write (it crashes the process while closing the file), so a full disk must be found first.
    Counts the free space and this process's file-size limit (``ulimit -f``)."""
    need = int(n_bytes * 1.02) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    room = min(free, limit if limit != resource.RLIM_INFINITY else free)
    if room < need:
        why = "free on that disk" if room == free else "allowed per file by ulimit -f"
        raise UserError(f"not enough room to write {path}: it needs about {need / 1e6:.1f} MB, "
                        f"{room / 1e6:.1f} MB are {why}" + (f"; {kept}" if kept else ""))


def _unique_tmp(final: Path) -> Path:
    return final.with_name(f"{final.stem}.{os.getpid()}-{os.urandom(4).hex()}.tmp.h5")


# ------------------------------------------------------------------ part files

@dataclasses.dataclass
class FailedImage:
    path: str
    reason: str
    fingerprint: tuple[int, int]


class PartWriter:
    """Writes one part file: codes appended batch by batch under a temporary name, the
    bookkeeping at the end, then moved into place whole (``part-<id>.h5``)."""

    def __init__(self, folder: Path, part_id: str, dim: int, dtype: str, max_rows: int, attrs: dict):
        self.final = Path(folder) / f"part-{part_id}.h5"
        self.tmp = _unique_tmp(self.final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        check_room(self.final, max_rows * dim * np.dtype(dtype).itemsize + max_rows * 200,
                   kept=f"the parts finished so far are kept in {folder}: make room and run the same command again")
        # a chunk cache that holds a chunk until it is full: each chunk written once
        chunk_bytes = max(1, min(256, max_rows)) * dim * np.dtype(dtype).itemsize
        self.f = h5py.File(self.tmp, "w", rdcc_nbytes=max(1 << 20, 4 * chunk_bytes))
        self.codes = self.f.create_dataset("codes", (0, dim), dtype=dtype, maxshape=(None, dim),
                                           chunks=(max(1, min(256, max_rows)), dim))
        self.f.attrs.update(attrs, format_version=FORMAT_VERSION, partition=part_id)
        # held as arrays and blocks of bytes, not a str and an int an image: a partition of a
        # large build has 30,000 images, and a worker holds its part's columns until it closes
        self.n_rows, self.paths, self.fingerprints, self.digests, self.failed = 0, [], [], [], []

    def append(self, codes: np.ndarray, paths, fingerprints, digests, failed: list[FailedImage]) -> None:
        n = self.n_rows
        self.codes.resize(n + len(codes), axis=0)
        self.codes[n:] = codes
        self.n_rows += len(codes)
        self.paths.append(PathList.of(paths))
        self.fingerprints.append(np.asarray(fingerprints, np.int64).reshape(-1, 2))
        self.digests.append(np.asarray(digests, np.uint64).reshape(-1))
        self.failed += failed

    def close(self, runtime: str) -> Path:
        f = self.f
        paths = PathList.concat(self.paths)
        column = f.create_dataset("paths", shape=(len(paths),), dtype=STR)
        for s in range(0, len(paths), PATH_BLOCK):  # (strings made a block at a time)
            column[s:s + PATH_BLOCK] = np.array(list(paths[s:s + PATH_BLOCK]), dtype=object)
        f.create_dataset("fingerprints", data=np.concatenate(self.fingerprints or [np.zeros((0, 2), np.int64)]))
        f.create_dataset("digests", data=np.concatenate(self.digests or [np.zeros(0, np.uint64)]))
        f.create_dataset("failed_paths", data=[x.path for x in self.failed], dtype=STR)
        f.create_dataset("failed_reasons", data=[x.reason for x in self.failed], dtype=STR)
        f.create_dataset("failed_fingerprints",
                         data=np.asarray([x.fingerprint for x in self.failed], np.int64).reshape(-1, 2))
        f.attrs["runtime"] = runtime
        f.close()
        fault_point("part-tmp-written")
        durable_replace(self.tmp, self.final)
        fault_point("part-saved")
        return self.final

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


@dataclasses.dataclass
class PartInfo:
    """What a part file holds, without its codes."""

    name: str                     # file name inside the parts folder
    paths: list[str]
    fingerprints: np.ndarray      # (n, 2)
    digests: np.ndarray           # (n,)
    failed: list[FailedImage]
    n_rows: int
    dim: int
    code_shape: list | None
    runtime: str


def read_part(file: Path) -> PartInfo:
    with h5py.File(file, "r") as f:
        return PartInfo(Path(file).name, list(f["paths"].asstr()[()]), f["fingerprints"][()], f["digests"][()],
                        _failed(f), f["codes"].shape[0], f["codes"].shape[1],
                        json.loads(f.attrs["code_shape"]) if "code_shape" in f.attrs else None,
                        str(f.attrs.get("runtime", "unknown")))


def read_part_rows(file: Path) -> Rows:
    """A part's rows (fingerprints and digests), without its paths or codes."""
    with h5py.File(file, "r") as f:
        return Rows.of_part(Path(file).name, f["fingerprints"][()], f["digests"][()])


def _failed(f) -> list[FailedImage]:
    if "failed_fingerprints" not in f:  # before it (0.1.0): failures are retried
        return []
    return [FailedImage(p, r, tuple(fp)) for p, r, fp in
            zip(f["failed_paths"].asstr()[()], f["failed_reasons"].asstr()[()],
                np.asarray(f["failed_fingerprints"][()], np.int64).reshape(-1, 2).tolist())]


# ------------------------------------------------------------------ the index

@dataclasses.dataclass
class Rows:
    """Where the codes of a code set's images are, as columns (a million images: a few arrays,
    not a million objects): image i's code is row ``row[i]`` of part file
    ``part_names[part[i]]``; ``fingerprints[i]`` and ``digests[i]`` are what the image was."""

    part_names: list[str]         # "" for a format-1 file's own rows
    part: np.ndarray              # (n,) int32, into part_names
    row: np.ndarray               # (n,) int32
    fingerprints: np.ndarray      # (n, 2) int64: size in bytes, mtime in ns
    digests: np.ndarray           # (n,) uint64; 0: unknown (files of version 0.1.0)

    @classmethod
    def of_part(cls, name: str, fingerprints, digests) -> Rows:
        n = len(digests)
        return cls([name], np.zeros(n, np.int32), np.arange(n, dtype=np.int32),
                   np.asarray(fingerprints, np.int64).reshape(-1, 2), np.asarray(digests, np.uint64))

    def __len__(self) -> int:
        return len(self.part)

    def take(self, which) -> Rows:
        """The rows selected by a mask or by indices, in that order."""
        return Rows(self.part_names, self.part[which], self.row[which], self.fingerprints[which], self.digests[which])

    def names(self) -> list[str]:
        """The part names in use, sorted (counted, not sorted per row: a commit asks more than once)."""
        used = np.flatnonzero(np.bincount(self.part, minlength=len(self.part_names)))
        return sorted({self.part_names[i] for i in used.tolist()})

    def renumbered(self, names: list[str]) -> np.ndarray:
        """Each row's part as an index into ``names`` (which must hold every part in use)."""
        number = {n: i for i, n in enumerate(names)}
        return np.asarray([number.get(n, -1) for n in self.part_names], np.int32)[self.part]


@dataclasses.dataclass
class Index:
    """A committed code set as stage 1 sees it: its images and rows, known-unreadable images, attributes."""

    path: Path
    paths: PathList | None        # None once the plan has mapped them to the data set's images
    rows: Rows
    failed: dict[str, FailedImage]
    attrs: dict
    dim: int
    format_version: int
    labels: np.ndarray            # (N,) class per image; multi-label: (N, labels) 0/1 targets
    split: np.ndarray
    class_names: list[str]


def read_index(path: Path) -> Index:
    """The rows of an existing code set (format 1 or 2); a :class:`UserError` if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", 1))
            if version > FORMAT_VERSION:
                raise UserError(f"{path} was written by a newer version (format {version}); "
                                f"update cnn-codes or pass --overwrite")
            labels, split, paths, class_names = check_code_file(f, path, compact=True)
            n = len(paths)
            fps = _integers(f, "fingerprints", (n, 2), -2**63, 2**63 - 1)
            digests = (_integers(f, "digests", (n,), 0, 2**64 - 1) if "digests" in f
                       else np.zeros(n, np.uint64))
            if version >= 2:
                names = _strings(f, "part_names")
                part = _integers(f, "row_part", (n,), 0, len(names) - 1).astype(np.int32)
                row = _integers(f, "row_in_part", (n,), 0, 2**31 - 1).astype(np.int32)
            else:
                names, part, row = [""], np.zeros(n, np.int32), np.arange(n, dtype=np.int32)
            failed = {x.path: x for x in _failed(f)}
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
            dim = f["codes"].shape[1]
    except CodeFileError as exc:
        raise UserError(f"cache file {path} is not a valid code set ({exc}); move it away or pass --overwrite") from None
    except (OSError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise UserError(f"cache file {path} is unreadable ({type(exc).__name__}); "
                        f"move it away or pass --overwrite") from None
    rows = Rows(names, part, row, fps.astype(np.int64, copy=False), digests.astype(np.uint64, copy=False))
    return Index(Path(path), paths, rows, failed, attrs, dim, version, labels, split, class_names)


def read_content(path: Path) -> IndexContent:
    """Everything a committed index (format 2) holds besides its attributes, read back whole."""
    index = read_index(path)
    return IndexContent(PathList.of(index.paths), index.rows, index.labels, index.split, index.class_names,
                        list(index.failed.values()), index.dim, str(index.attrs["dtype"]))


def legacy_part_name(path: Path) -> str:
    """The part name a format-1 file takes when it becomes the first part of its code set."""
    st = path.stat()
    return f"part-v1-{hashlib.blake2b(f'{st.st_size}-{st.st_mtime_ns}'.encode(), digest_size=8).hexdigest()}.h5"


def adopt_legacy(path: Path) -> str:
    """Make a format-1 file's codes a part of its code set: a hard link (no copy) where the
    file system allows, else a copy. Returns the part name."""
    name = legacy_part_name(path)
    dst = parts_dir(path) / name
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = _unique_tmp(dst)
        try:
            os.link(path, tmp)
        except OSError:
            check_room(dst, path.stat().st_size)
            shutil.copyfile(path, tmp)
        durable_replace(tmp, dst)
    return name


@dataclasses.dataclass
class IndexContent:
    """Everything a new index holds besides its attributes."""

    paths: Sequence[str]          # a PathList (compact) or a list
    rows: Rows
    labels: np.ndarray            # (N,) int; a multi-label set: (N, labels) 0/1, stored as ``targets``
    split: np.ndarray
    class_names: list[str]
    failed: list[FailedImage]
    dim: int
    dtype: str


def _segments(part: np.ndarray, row: np.ndarray):
    """Runs of consecutive rows of one part: (part, first row in part, count, first code-set row)."""
    if not len(part):
        return []
    starts = np.flatnonzero(np.r_[True, (part[1:] != part[:-1]) | (row[1:] != row[:-1] + 1)])
    stops = np.r_[starts[1:], len(part)]
    return list(zip(part[starts].tolist(), row[starts].tolist(), (stops - starts).tolist(), starts.tolist()))


MAX_BLOCKS = 256  # runs of rows of one part a mapping of the virtual codes may join


def _virtual_codes(f, sources: list[str], shapes: list[tuple], segments, shape: tuple, dtype: str) -> None:
    """The ``codes`` virtual dataset over segments (part, first row, count, first row here),
    made with h5py's low-level calls. Consecutive segments of one part, in increasing rows, are
    one mapping whose source is the union of their rows (up to ``MAX_BLOCKS`` of them: HDF5
    joins each in a time that grows with those before it): HDF5 holds about 19 KB per mapping
    once the index is opened, so the 20,000 runs that scattered removals leave in a million rows
    took 374 MB and 0.45 s to open, one mapping each; joined, 7 MB and 0.05 s."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.VIRTUAL)
    dcpl.set_fill_value(np.array([np.nan], dtype))
    space = h5py.h5s.create_simple(shape)
    names = [s.encode() for s in sources]
    source, first, p_open, end, n_blocks = None, 0, -1, 0, 0
    for p, start, count, at in [*segments, (-1, 0, 0, shape[0])]:
        if p != p_open or start < end or n_blocks == MAX_BLOCKS:  # a mapping ends (the selections are copied)
            if source is not None:
                space.select_hyperslab((first, 0), (at - first, shape[1]))
                dcpl.set_virtual(space, names[p_open], b"codes", source)
            if p < 0:
                break
            source, first, p_open, n_blocks = h5py.h5s.create_simple(tuple(shapes[p])), at, p, 0
            source.select_none()
        source.select_hyperslab((start, 0), (count, shape[1]), op=h5py.h5s.SELECT_OR)
        end, n_blocks = start + count, n_blocks + 1
    h5py.h5d.create(f.id, b"codes", h5py.h5t.py_create(np.dtype(dtype), logical=1), h5py.h5s.create_simple(shape),
                    dcpl=dcpl)


CHUNK = 65536  # rows per chunk of the index's per-row columns
MAX_FIXED_WIDTH = 256  # bytes: paths longer than this make the index's paths text of variable length


class _Column:
    """One per-row column of an index being written: rows appended in pieces of any size,
    written a whole chunk at a time (a chunk written in parts would be compressed again for
    each), compressed: the index is rewritten by every update."""

    def __init__(self, f, name: str, shape: tuple, dtype):
        self.chunk = max(1, min(shape[0], CHUNK))
        self.ds = f.create_dataset(name, shape, dtype=dtype, chunks=(self.chunk, *shape[1:]), compression="gzip",
                                   compression_opts=1, shuffle=True)
        self.dtype = dtype  # (text: fixed-width bytes given, marked UTF-8 for h5py as written)
        self.pending: list[np.ndarray] = []
        self.n_pending = self.at = 0

    def add(self, values: np.ndarray) -> None:
        self.pending.append(values)
        self.n_pending += len(values)
        if self.n_pending >= self.chunk:
            self._write(self.n_pending // self.chunk * self.chunk)

    def _write(self, n: int) -> None:
        block = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.ds[self.at:self.at + n] = block[:n].view(self.dtype)
        self.at += n
        rest = block[n:]
        self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)

    def finish(self) -> None:
        if self.n_pending:
            self._write(self.n_pending)
        if self.at != self.ds.shape[0]:
            raise ValueError(f"index column {self.ds.name}: {self.at} rows written of {self.ds.shape[0]}")


class IndexWriter:
    """Writes the index of a code set (format 2) a piece of rows at a time, so that a million
    rows are never held at once: the per-row columns are appended as the pieces come, the
    virtual ``codes`` over every part they name is made at the end. Under a temporary name,
    moved into place by :meth:`close`; :meth:`abort` (or an exception inside ``with``) leaves
    nothing behind. ``n_rows`` and ``path_width`` (the longest path in UTF-8 bytes) are known
    before the first piece: the columns are made whole at once."""

    def __init__(self, path: Path, *, n_rows: int, dim: int, dtype: str, path_width: int, labels_shape: tuple):
        self.path, self.folder, self.n_rows, self.dim, self.dtype = Path(path), parts_dir(path), n_rows, dim, dtype
        self.width = max(1, path_width)
        check_room(self.path, n_rows * (min(self.width, MAX_FIXED_WIDTH) + 80),
                   kept=f"the computed parts are kept in {self.folder}: make room and run the same command again")
        self.tmp = _unique_tmp(self.path)
        self.f = h5py.File(self.tmp, "w")
        # fixed width (written from the bytes as they are), unless one long path would widen every
        # row: then text of variable length (a Python object per path while a chunk is written)
        self.fixed = self.width <= MAX_FIXED_WIDTH
        text = h5py.string_dtype("utf-8", self.width if self.fixed else None)
        n = (n_rows,)
        self.columns = {
            "paths": _Column(self.f, "paths", n, text),
            # A multi-label set has no ``labels``: a reader that knows one label per image cannot
            # mistake it for a single-label set (attribute task = multi-label).
            "labels": _Column(self.f, "targets" if len(labels_shape) == 1 else "labels", n + tuple(labels_shape),
                              np.uint8 if len(labels_shape) == 1 else np.int32),
            "split": _Column(self.f, "split", n, np.int8),
            "fingerprints": _Column(self.f, "fingerprints", (n_rows, 2), np.int64),
            "digests": _Column(self.f, "digests", n, np.uint64),
            "part": _Column(self.f, "row_part", n, np.int32),
            "row": _Column(self.f, "row_in_part", n, np.int32),
        }
        self.names: list[str] = []
        self.number: dict[str, int] = {}
        self.segments: list[tuple[int, int, int, int]] = []
        self.at = 0

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            self.abort()

    @property
    def n_parts(self) -> int:
        return len(self.names)

    def add(self, rows: Rows, paths: PathList, labels: np.ndarray, split: np.ndarray) -> None:
        """Append ``rows`` (where the codes are), with their images' paths, labels and split."""
        n = len(rows)
        if not len(paths) == len(labels) == len(split) == n or self.at + n > self.n_rows:
            raise ValueError(f"a piece of {n} rows with {len(paths)} paths, {len(labels)} labels, {len(split)} "
                             f"split values at row {self.at} of {self.n_rows}")
        if paths.max_bytes() > self.width:
            raise ValueError(f"a path of {paths.max_bytes()} bytes in an index of paths {self.width} wide")
        used = np.flatnonzero(np.bincount(rows.part, minlength=len(rows.part_names))).tolist()
        number = np.full(len(rows.part_names), -1, np.int32)
        for i in used:  # parts numbered in order of first use: a piece's names are only those it uses
            name = rows.part_names[i]
            if name not in self.number:
                self.number[name] = len(self.names)
                self.names.append(name)
            number[i] = self.number[name]
        part = number[rows.part]
        self.segments += [(p, start, count, self.at + at) for p, start, count, at in _segments(part, rows.row)]
        for block in paths.encoded_blocks(CHUNK):
            self.columns["paths"].add(np.array(block, dtype=f"S{self.width}" if self.fixed else object))
        self.columns["labels"].add(np.asarray(labels, self.columns["labels"].dtype))
        self.columns["split"].add(np.asarray(split, np.int8))
        self.columns["fingerprints"].add(rows.fingerprints.astype(np.int64, copy=False).reshape(-1, 2))
        self.columns["digests"].add(rows.digests.astype(np.uint64, copy=False))
        self.columns["part"].add(part)
        self.columns["row"].add(rows.row.astype(np.int32, copy=False))
        self.at += n

    def close(self, class_names: list[str], failed: list[FailedImage], attrs: dict) -> None:
        """Finish the index and move it into place."""
        try:
            for column in self.columns.values():
                column.finish()
            f = self.f
            shapes = []
            for n in self.names:
                with h5py.File(self.folder / n, "r") as part:
                    shapes.append(part["codes"].shape)
            _virtual_codes(f, [f"{self.folder.name}/{n}" for n in self.names], shapes, self.segments,
                           (self.n_rows, self.dim), self.dtype)
            f.create_dataset("class_names", data=class_names, dtype=STR)
            failed = sorted(failed, key=lambda x: x.path)
            f.create_dataset("failed_paths", data=[x.path for x in failed], dtype=STR)
            f.create_dataset("failed_reasons", data=[x.reason for x in failed], dtype=STR)
            f.create_dataset("failed_fingerprints",
                             data=np.asarray([x.fingerprint for x in failed], np.int64).reshape(-1, 2))
            f.create_dataset("part_names", data=self.names, dtype=STR)
            f.attrs.update(attrs, format_version=FORMAT_VERSION, parts=self.folder.name)
            f.close()
            fault_point("index-tmp-written")
            durable_replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fault_point("index-moved")

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_index(path: Path, content: IndexContent, attrs: dict) -> None:
    """Write the index of a code set whose rows are all in memory (see :class:`IndexWriter`)."""
    paths = PathList.of(content.paths)
    with IndexWriter(path, n_rows=len(content.rows), dim=content.dim, dtype=content.dtype,
                     path_width=paths.max_bytes(), labels_shape=content.labels.shape[1:]) as writer:
        writer.add(content.rows, paths, content.labels, content.split)
        writer.close(content.class_names, content.failed, attrs)


def referenced_parts(path: Path) -> set[str]:
    with h5py.File(path, "r") as f:
        return set(f["part_names"].asstr()[()]) if "part_names" in f else set()


def collect_garbage(path: Path) -> None:
    """Delete what the committed index does not refer to: parts of removed or replaced images,
    parts staged by a plan that no longer applies, temporary files of killed writers, the
    staging folder of format 1. Called with the writer lock held."""
    folder = parts_dir(path)
    keep = referenced_parts(path) if path.exists() else set()
    if folder.exists():
        for p in folder.iterdir():
            if p.name not in keep:
                p.unlink()
        if not keep:
            folder.rmdir()
    legacy = path.with_name(path.stem + ".partial")
    if legacy.exists():
        shutil.rmtree(legacy, ignore_errors=True)
    for tmp in path.parent.glob(f"{path.stem}.*.tmp.h5"):
        tmp.unlink(missing_ok=True)
    fault_point("parts-cleaned")


def compact(path: Path, content: IndexContent, attrs: dict, max_parts: int, write_attrs: dict) -> IndexContent:
    """Merge the parts with fewer rows in use than a part would have at ``max_parts // 2`` parts
    into parts of that size, and write the index over them: the same rows in the same order.
    Each new part is written whole before the index refers to it; the old ones go with the next
    garbage collection."""
    folder = parts_dir(path)
    rows = content.rows
    names = rows.names()
    part = rows.renumbered(names)
    live = np.bincount(part, minlength=len(names))
    target = -(-len(rows) // max(1, max_parts // 2))  # rows per part at half the limit
    merging = np.flatnonzero(live < target)
    if len(merging) < 2:
        merging = np.array(sorted(range(len(names)), key=lambda p: (live[p], names[p]))[:2])
    moving = np.flatnonzero(np.isin(part, merging))
    new_part, new_row, new_names = part.copy(), rows.row.copy(), list(names)
    for s in range(0, len(moving), target):
        chunk = moving[s:s + target]
        paths = [content.paths[i] for i in chunk.tolist()]
        fps = rows.fingerprints[chunk]
        digest = hashlib.blake2b(json.dumps([[p, fp] for p, fp in zip(paths, fps.tolist())]).encode(),
                                 digest_size=8)
        part_id = "merged-" + digest.hexdigest()
        writer = PartWriter(folder, part_id, content.dim, content.dtype, len(chunk), write_attrs)
        try:
            block = np.empty((len(chunk), content.dim), content.dtype)
            for p in np.unique(part[chunk]).tolist():  # each source part read once
                with h5py.File(folder / names[p], "r") as f:
                    codes = f["codes"][()]
                mine = part[chunk] == p
                block[mine] = codes[rows.row[chunk][mine]]
            writer.append(block, paths, fps, rows.digests[chunk], [])
            writer.close(str(attrs.get("runtime", "unknown")))
        except BaseException:
            writer.abort()
            raise
        fault_point("compact-part-saved")
        new_part[chunk] = len(new_names)
        new_row[chunk] = np.arange(len(chunk))
        new_names.append(writer.final.name)
    content = dataclasses.replace(content, rows=Rows(new_names, new_part, new_row, rows.fingerprints, rows.digests))
    write_index(path, content, attrs)
    return content


# ------------------------------------------------------------------ reading a code set

class CodeFileError(ValueError):
    """A code file's datasets do not hold what a code set holds (the message names the dataset)."""


def _check_text(ds, name: str, n: int | None) -> None:
    if ds.ndim != 1 or h5py.check_string_dtype(ds.dtype) is None:
        raise CodeFileError(f"{name} is not a list of text")
    if n is not None and ds.shape[0] != n:
        raise CodeFileError(f"{name} has {ds.shape[0]} entries for {n} codes")


def _strings(f, name: str, n: int | None = None) -> list[str]:
    ds = f[name]
    _check_text(ds, name, n)
    try:
        out: list[str] = []
        for start in range(0, ds.shape[0], 65536):  # a block at a time: a million at once hold 150 MB more
            raw = ds[start:start + 65536].tolist()  # bytes (fixed or variable length: h5py gives text as bytes)
            text = b"\0".join(raw).decode("utf-8").split("\0") if isinstance(raw[0], bytes) else []
            if len(text) != len(raw):  # a NUL inside one (or not bytes): decoded one by one
                return list(ds.asstr()[()])
            out += text
        return out
    except UnicodeDecodeError:
        raise CodeFileError(f"{name} holds text that is not UTF-8") from None


def _path_list(f, name: str, n: int) -> PathList:
    """The text of dataset ``name`` as a :class:`PathList`, read a block at a time from its bytes
    (no str per path: a million of them held 80 MB more while an update is planned); checked as
    :func:`_strings` checks it. A path holding a NUL is refused as leading out of the folder."""
    from pipeline.data import relative_inside

    ds = f[name]
    _check_text(ds, name, n)
    if n and not isinstance(ds[0], bytes):  # (h5py gives text as bytes; anything else: read as str)
        return PathList.of(_strings(f, name, n))

    def blocks():
        for start in range(0, n, CHUNK):
            items = ds[start:start + CHUNK].tolist()  # bytes, fixed or variable length
            joined = b"\0".join(items)
            try:
                joined.decode("utf-8")
            except UnicodeDecodeError:
                raise CodeFileError(f"{name} holds text that is not UTF-8") from None
            if joined.count(b"\0") != len(items) - 1:  # (one by one only where a path holds a NUL)
                try:
                    relative_inside(next(x for x in items if b"\0" in x).decode("utf-8"))
                except ValueError as exc:
                    raise CodeFileError(f"{name}: {exc}") from None
            yield items

    return PathList.of_encoded(blocks())


def _integers(f, name: str, shape: tuple, low: int, high: int) -> np.ndarray:
    ds = f[name]
    if ds.dtype.kind not in "iub" or ds.shape != shape:
        raise CodeFileError(f"{name} is not {' x '.join(map(str, shape))} whole numbers")
    values = ds[()]
    if values.dtype.kind != "u" or values.dtype.itemsize < 8:
        values = values.astype(np.int64, copy=False)
    if values.size and (values.min() < low or values.max() > high):
        raise CodeFileError(f"{name} holds {int(values.min() if values.min() < low else values.max())}, "
                            f"outside {low}..{high}")
    return values


def _attrs_problem(attrs: dict) -> str | None:
    """What is wrong with the attributes a code set's readers parse (JSON, numbers), if anything."""
    from pydantic import ValidationError

    from pipeline._checked import problem
    from pipeline.codes._settings import IndexAttrs

    try:
        IndexAttrs.model_validate({k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()})
    except ValidationError as exc:
        return f"attribute {problem(exc)}"
    return None


_DRIVE = re.compile(rb"\0[^\0]{0,8}:")  # (two characters of up to 4 bytes, then a colon)


def _check_inside(paths: Sequence[str]) -> None:
    """A :class:`CodeFileError` if any of ``paths`` (a PathList or a list) leads out of the data
    folder (:func:`~pipeline.data.relative_inside`). Looked for in the bytes of a block of 65,536
    at once (absolute, ``..``, a drive, a NUL: it may find one where there is none, never the
    reverse); only the paths of a block where it finds one are checked one by one: a million
    paths in a tenth of a second."""
    from pipeline.data import relative_inside

    for start in range(0, len(paths), 65536):
        block = paths[start:start + 65536]
        text = b"\0" + (block.encoded() if isinstance(block, PathList)
                        else "\0".join(block).encode("utf-8", "surrogateescape"))
        if (text.count(b"\0") != len(block) or b"\0/" in text or b"\0\\" in text or b".." in text
                or (b":" in text and _DRIVE.search(text) is not None)):
            for p in block:
                try:
                    relative_inside(p)
                except ValueError as exc:
                    raise CodeFileError(f"paths: {exc}") from None


def check_code_file(f, path: Path, compact: bool = False) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(labels or targets, split, paths, class_names) of an open code file (``compact``: the
    paths as a :class:`PathList`), each checked: shapes
    that agree, labels within the classes, split values known, paths inside the data folder,
    class names unique and on one line, and a ``codes`` dataset of floats whose parts (a
    virtual dataset's sources) all lie in the code set's own parts folder. A
    :class:`CodeFileError` naming the dataset for anything else."""
    from pipeline.data import UNLABELLED

    if "codes" not in f or not isinstance(f["codes"], h5py.Dataset):
        raise CodeFileError("it has no codes")
    codes = f["codes"]
    if codes.ndim != 2 or codes.shape[1] < 1 or codes.dtype.kind != "f":
        raise CodeFileError(f"codes are not a table of numbers ({codes.ndim}-D, {codes.dtype})")
    n = codes.shape[0]
    if codes.is_virtual:
        own = parts_dir(path).name
        dcpl = codes.id.get_create_plist()  # (h5py's virtual_sources() also reads every selection)
        for i in range(dcpl.get_virtual_count()):
            file_name, dset_name = dcpl.get_virtual_filename(i), dcpl.get_virtual_dsetname(i)
            folder, _, name = file_name.partition("/")
            if folder != own or not name or "/" in name or name in (".", "..") or dset_name != "codes":
                raise CodeFileError(f"its codes reach {file_name!r}, outside its parts folder {own}/")
    if "part_names" in f and any("/" in p or "\\" in p or p in ("", ".", "..") for p in _strings(f, "part_names")):
        raise CodeFileError("part_names are not file names inside its parts folder")
    problem = _attrs_problem(dict(f.attrs))
    if problem:
        raise CodeFileError(problem)
    class_names = _strings(f, "class_names")
    if len(set(class_names)) != len(class_names) or any(
            c in name for name in class_names for c in "\r\n\0"):
        raise CodeFileError("class_names are not distinct one-line names")
    paths = _path_list(f, "paths", n) if compact else _strings(f, "paths", n)
    _check_inside(paths)
    k = len(class_names)
    split = _integers(f, "split", (n,), 0, UNLABELLED).astype(f["split"].dtype)  # as stored (int8): a row each
    if "targets" in f:
        labels = _integers(f, "targets", (n, k), 0, 1)
    elif "labels" in f:
        labels = _integers(f, "labels", (n,), -1, k - 1)
        if np.any((labels < 0) & (split != UNLABELLED)):
            raise CodeFileError("labels gives -1 (no label) to images in the train, validation or test part")
    else:
        raise CodeFileError("it has neither labels nor targets")
    return labels, split, paths, class_names
