"""Stage 1's commit: the index that makes a run's part files and the rows kept one code set
(written a piece at a time, replaced atomically), the merging of small parts (compaction) and
the deletion of parts no index refers to (garbage collection)."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from pipeline import __version__
from pipeline._faults import fault_point
from pipeline._files import check_room, durable_replace, unique_tmp
from pipeline.codes._format import (CHUNK, FORMAT_VERSION, STR, FailedImage, IndexContent, Rows, parts_dir,
                                    read_content, read_part, read_part_rows)
from pipeline.codes._parts import PartWriter
from pipeline.codes._plan import OutputPlan, Partition, Plan
from pipeline.codes._settings import CodeIdentity
from pipeline.data import PathList, content_digest
from pipeline.errors import UserError

logger = logging.getLogger(__name__)


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
        tmp = unique_tmp(dst)
        try:
            os.link(path, tmp)
        except OSError:
            check_room(dst, path.stat().st_size)
            shutil.copyfile(path, tmp)
        durable_replace(tmp, dst)
    return name


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
        self.tmp = unique_tmp(self.path)
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


def commit_all(plan: Plan, split: np.ndarray, split_attrs: dict, max_parts) -> list:
    """Commit every code set of the plan; returns the unreadable images of the first."""
    failed = []
    for out in plan.outputs:
        rows = _gather(out, plan)
        attrs = _index_attrs(out, plan, rows, split_attrs)
        if _unchanged(out, plan, rows, split, dict(split_attrs, **out.attrs, data_root=attrs["data_root"])):
            n_parts = len(out.index.rows.names())
        else:
            n_parts = _write_index(out, plan, rows, split, attrs)
        if n_parts > max_parts:  # also when a run was killed before it compacted
            content = read_content(out.path)
            part_attrs = dict(CodeIdentity.from_attrs(out.attrs).to_attrs(), code_shape=attrs["code_shape"])
            content = compact(out.path, content, attrs, max_parts, part_attrs)
            logger.info(f"note: merged small parts of {out.path.name}: {len(content.rows.names())} parts now")
        collect_garbage(out.path)
        fault_point("output-done")
        logger.info(f"{out.path}: {rows.n_rows} images x {rows.dim} values"
                    + (f"; {len(rows.failed)} unreadable image(s) skipped" if rows.failed else "")
                    + (f" ({len(plan.ds.missing)} of them listed in the labels file and missing)"
                       if plan.ds.missing else ""))
        failed = failed or rows.failed
    return failed


@dataclasses.dataclass
class _PartRows:
    """The rows a part of this run gives a code set: which of the part's rows (None: all) and
    each one's image (its position in the data set; None: the partition's own, read when
    written: a build holds no position per image through its commit)."""

    name: str
    which: np.ndarray | None
    images: np.ndarray | None
    partition: Partition

    def __len__(self) -> int:
        return len(self.partition) if self.images is None else len(self.images)


@dataclasses.dataclass
class _NewRows:
    """What a code set holds after this run, as the commit writes it: the rows of the index
    kept (in their order), then the rows of this run's parts (in plan order); unreadable images
    kept or newly found; the shape and runtimes of the codes."""

    kept: np.ndarray              # rows of the committed index kept
    parts: list[_PartRows]
    failed: list[FailedImage]
    dim: int
    code_shape: list
    runtimes: set[str]

    @property
    def n_rows(self) -> int:
        return len(self.kept) + sum(len(p) for p in self.parts)


def _gather(out: OutputPlan, plan: Plan) -> _NewRows:
    """Which rows one code set has after this run (the parts' paths read, their codes not)."""
    ds, folder = plan.ds, parts_dir(out.path)
    fresh = np.zeros(len(ds), bool)  # images whose row comes from this run's parts (or that failed now)
    parts, new_failed, with_codes = [], [], []
    for partition in plan.partitions:
        part = read_part(folder / f"part-{partition.id}.h5")
        p = partition.load()  # (its listing, a partition at a time)
        at = p.positions(part.paths + [f.path for f in part.failed])  # rows with codes, then failures
        at, failed_at = at[:len(part.paths)], at[len(part.paths):]
        # An image this code set already holds unchanged keeps its row (computed again only for
        # another code set of the run, or before an interruption).
        new = (at >= 0) & ~out.cached[np.maximum(at, 0)]
        fresh[at[new]] = True
        fresh[failed_at[failed_at >= 0]] = True
        if new.all():
            parts.append(_PartRows(part.name, None, None if np.array_equal(at, p.images) else at, partition))
        elif new.any():
            parts.append(_PartRows(part.name, np.flatnonzero(new), at[new], partition))
        new_failed += part.failed
        if part.n_rows:
            with_codes.append((part.dim, part.code_shape, part.runtime))  # (not its rows: kept for every part)
    kept = np.flatnonzero(out.usable & ~fresh[np.maximum(out.at, 0)])
    failed = [f for i, f in out.failed.items() if not fresh[i]] + new_failed
    failed += [FailedImage(name, "listed in the labels file, not found", (-1, -1)) for name in ds.missing]
    rows = _NewRows(kept, parts, failed, 0, [], {runtime for _, _, runtime in with_codes})
    if not rows.n_rows:
        if out.index is None:  # nothing to keep: no code set, no parts
            collect_garbage(out.path)
        raise UserError(f"none of the {len(ds)} images under {ds.root} could be read"
                        + (f" (e.g. {failed[0].path}: {failed[0].reason})" if failed else ""))
    old = out.index.attrs if out.index else {}
    rows.dim = with_codes[0][0] if with_codes else out.index.dim
    rows.code_shape = (with_codes[0][1] if with_codes and with_codes[0][1] is not None
                       else json.loads(old["code_shape"]) if "code_shape" in old else [rows.dim])  # (checked when read)
    if len(kept) and "runtime" in old:
        rows.runtimes |= set(str(old["runtime"]).split("; "))
    return rows


def _index_attrs(out: OutputPlan, plan: Plan, rows: _NewRows, split_attrs: dict) -> dict:
    return dict(out.attrs, **split_attrs, code_shape=json.dumps(list(rows.code_shape)), versions=_versions(),
                runtime="; ".join(sorted(rows.runtimes)) or "unknown", data_root=str(plan.ds.root.resolve()),
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _labels_of(ds, images: np.ndarray) -> np.ndarray:
    """The labels of ``images`` as the index stores them; a multi-label set: rows of 0/1 targets."""
    return (ds.targets[images].astype(np.uint8, copy=False) if ds.multi_label
            else ds.labels[images].astype(np.int32, copy=False))


BLOCK = 65536  # kept rows written a block at a time


def _kept_rows(out: OutputPlan, ds, kept: np.ndarray):
    """The kept rows of the committed index, a block at a time, with their images: unchanged
    images keep their row; one whose time changed over the same bytes records its new time."""
    legacy = [adopt_legacy(out.path)] if len(kept) and out.index.format_version < 2 else None
    for s in range(0, len(kept), BLOCK):
        which = kept[s:s + BLOCK]
        rows, at = out.index.rows.take(which), out.at[which]
        if legacy:  # the old file becomes the first part, as it is
            rows.part_names = legacy
        now = ds.fingerprints[at]
        stale = np.flatnonzero((rows.digests == 0) | (rows.fingerprints != now).any(axis=1))
        rows.fingerprints[stale] = now[stale]
        for i in stale[rows.digests[stale] == 0].tolist():
            rows.digests[i] = content_digest(ds.root / ds.paths[at[i]])
        yield rows, at


def _write_index(out: OutputPlan, plan: Plan, rows: _NewRows, split: np.ndarray, attrs: dict) -> int:
    """Write the new index a piece at a time: kept rows a block at a time, then each part's.
    Returns the number of parts it names."""
    ds, folder = plan.ds, parts_dir(out.path)
    split = np.asarray(split)
    with IndexWriter(out.path, n_rows=rows.n_rows, dim=rows.dim, dtype=out.attrs["dtype"],
                     path_width=ds.paths.max_bytes(), labels_shape=ds.targets.shape[1:] if ds.multi_label else ()
                     ) as writer:
        for piece, at in _kept_rows(out, ds, rows.kept):
            writer.add(piece, ds.paths.take(at), _labels_of(ds, at), split[at])
        for p in rows.parts:
            piece = read_part_rows(folder / p.name)
            if p.images is None:  # (the partition's own images, in its order)
                own = p.partition.load()
                images, paths = own.images, own.paths
            else:
                images, paths = p.images, ds.paths.take(p.images)
            writer.add(piece if p.which is None else piece.take(p.which), paths, _labels_of(ds, images),
                       split[images])
        writer.close(list(ds.class_names), rows.failed, attrs)
        return writer.n_parts


def _unchanged(out: OutputPlan, plan: Plan, rows: _NewRows, split: np.ndarray, attrs: dict) -> bool:
    """True when the committed index (as the plan read it) already says exactly this: every row
    kept as it is, in its order, nothing added; then it is not rewritten."""
    index, ds = out.index, plan.ds
    if index is None or index.format_version < 2 or rows.parts or len(rows.kept) != len(out.at):
        return False
    return (not (index.rows.digests == 0).any()
            and np.array_equal(index.rows.fingerprints, ds.fingerprints[out.at])
            and np.array_equal(index.labels, _labels_of(ds, out.at)) and np.array_equal(index.split, split[out.at])
            and index.class_names == list(ds.class_names)
            and sorted(index.failed) == sorted(x.path for x in rows.failed)
            and all(str(index.attrs.get(k)) == str(v) for k, v in attrs.items()))


def _versions() -> str:

    def of(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "unknown"
    return json.dumps({"pipeline": __version__, "tensorflow": of("tensorflow"), "keras": of("keras"),
                       "numpy": np.__version__, "h5py": h5py.__version__, "pillow": of("pillow")})
