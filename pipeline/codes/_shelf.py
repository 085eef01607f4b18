"""Stage 1 between plan and commit: the run's per-image listing kept in a temporary file.

What stage 1 knows of each image (its path, fingerprint, label, where it is among the work) is
needed to plan, then again only a partition at a time while computing and a block at a time
while committing. Held in memory through the computing (the longest phase, where the model and
its buffers already peak), it made a build's peak grow by about 60 bytes an image; on the
shelf, the computing holds a partition's listing at a time and the peak does not grow with the
data set. The file, beside the code set, has no name (POSIX: unlinked as it is made; elsewhere
deleted once closed, by the system if the process dies): whatever ends the run, kill -9
included, leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import tempfile
import threading
from pathlib import Path

import numpy as np

from pipeline.codes._plan import Partition, Plan
from pipeline.data import PathList

WINDOW = 65536  # rows read at a time when rows are taken in any order


class Shelf:
    """An anonymous temporary file that arrays are appended to and read back from, by row."""

    def __init__(self, folder: Path):
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".listing-")
        self._lock = threading.Lock()  # (the worker's decoding threads read partitions)
        self._end = 0

    def put(self, data, dtype, row_shape=()) -> ShelvedArray:
        """Append ``data`` (an array, or a list of arrays written one after the other) as one
        column of ``dtype`` items, rows of ``row_shape``."""
        start = self._end
        with self._lock:
            self._file.seek(self._end)
            for piece in data if isinstance(data, list) else [data]:
                view = memoryview(np.ascontiguousarray(piece, dtype).reshape(-1)).cast("B")
                self._file.write(view)
                self._end += view.nbytes
        row = np.dtype(dtype).itemsize * int(np.prod(row_shape, dtype=np.int64))
        return ShelvedArray(self, start, (self._end - start) // row, np.dtype(dtype), tuple(row_shape))

    def read(self, offset: int, n_bytes: int) -> bytearray:
        buffer = bytearray(n_bytes)
        with self._lock:
            self._file.seek(offset)
            if self._file.readinto(buffer) != n_bytes:
                raise OSError("the temporary listing of this run was cut short")
        return buffer

    def close(self) -> None:
        self._file.close()


@dataclasses.dataclass(frozen=True, eq=False)
class ShelvedArray:
    """A column on the shelf: ``rows`` rows of ``row_shape`` items each, read back as arrays."""

    shelf: Shelf
    offset: int
    rows: int
    dtype: np.dtype
    row_shape: tuple

    @property
    def shape(self) -> tuple:
        return (self.rows, *self.row_shape)

    def __len__(self) -> int:
        return self.rows

    def range(self, lo: int, hi: int) -> np.ndarray:
        row = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        data = self.shelf.read(self.offset + lo * row, (hi - lo) * row)
        return np.frombuffer(data, self.dtype).reshape(hi - lo, *self.row_shape)

    def __getitem__(self, at) -> np.ndarray:
        """Rows ``at`` (an array of positions, in any order; or one position), a window of rows
        read at a time: never the whole column."""
        if np.ndim(at) == 0:
            i = int(at)
            return self.range(i, i + 1)[0]
        at = np.asarray(at, np.int64).reshape(-1)
        out = np.empty((len(at), *self.row_shape), self.dtype)
        for lo, hi, which, sorted_at in _windows(at):
            out[which] = self.range(lo, hi)[sorted_at - lo]
        return out


def _windows(at: np.ndarray):
    """(lo, hi, which, positions) for rows ``at`` in windows of at most WINDOW rows: read rows
    lo..hi, put rows ``positions`` at ``which``."""
    order = np.argsort(at, kind="stable")
    ordered = at[order]
    i = 0
    while i < len(ordered):
        lo = int(ordered[i])
        j = int(np.searchsorted(ordered, lo + WINDOW, "left"))
        yield lo, int(ordered[j - 1]) + 1, order[i:j], ordered[i:j]
        i = j


@dataclasses.dataclass(frozen=True, eq=False)
class ShelvedPaths:
    """A :class:`~pipeline.data.PathList` on the shelf: its bytes and where each path starts."""

    blob: ShelvedArray           # uint8: each path's bytes ended by a NUL
    starts: ShelvedArray         # int64, one more than the paths
    longest: int                 # bytes of the longest path

    @classmethod
    def put(cls, shelf: Shelf, pieces: list[PathList]) -> ShelvedPaths:
        """``pieces`` one after the other (each written as it is held: a view is not copied)."""
        buffers = [p.buffers() for p in pieces]
        ends = np.cumsum([0] + [len(b) for b, _ in buffers]).tolist()
        blob = shelf.put([b for b, _ in buffers], np.uint8)
        starts = shelf.put([s[:-1] + end for (_, s), end in zip(buffers, ends)] + [np.array([ends[-1]])], np.int64)
        return cls(blob, starts, max((p.max_bytes() for p in pieces), default=0))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def max_bytes(self) -> int:
        return self.longest

    def range(self, lo: int, hi: int) -> PathList:
        """Paths ``lo``..``hi``."""
        starts = self.starts.range(lo, hi + 1)
        return PathList(bytes(self.blob.range(int(starts[0]), int(starts[-1]))), starts - starts[0])

    def __getitem__(self, i: int) -> str:
        return self.range(i, i + 1)[0]

    def take(self, at) -> PathList:
        """The paths at positions ``at`` (any order), read a window at a time."""
        at = np.asarray(at, np.int64).reshape(-1)
        pieces, placed = [], []
        for lo, hi, which, sorted_at in _windows(at):
            pieces.append(self.range(lo, hi).take(sorted_at - lo))
            placed.append(which)
        if not pieces:
            return PathList.of([])
        joined = PathList.concat(pieces)
        order = np.concatenate(placed)
        if (order == np.arange(len(order))).all():  # (asked in order: the usual case)
            return joined
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return joined.take(inverse)


@dataclasses.dataclass(frozen=True, eq=False)
class ShelvedPartition:
    """A :class:`~pipeline.codes._plan.Partition` whose images are rows ``start``..``stop`` of
    the run's shelved work: its listing read when it is computed or committed, not held between."""

    id: str
    work: ShelvedWork
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def images(self) -> np.ndarray:
        return self.work.images.range(self.start, self.stop)

    def load(self) -> Partition:
        w, lo, hi = self.work, self.start, self.stop
        return Partition(self.id, w.paths.range(lo, hi), w.fingerprints.range(lo, hi), w.images.range(lo, hi))

    @property
    def paths(self) -> PathList:
        return self.work.paths.range(self.start, self.stop)

    def positions(self, paths) -> np.ndarray:
        return self.load().positions(paths)

    def __reduce__(self):  # (sent to a Ray worker: as the partition itself, its listing read)
        p = self.load()
        return Partition, (p.id, p.paths, p.fingerprints, p.images)


@dataclasses.dataclass(frozen=True, eq=False)
class ShelvedWork:
    """The images a run computes, in the order of its partitions: their paths, fingerprints and
    positions in the data set."""

    paths: ShelvedPaths
    fingerprints: ShelvedArray
    images: ShelvedArray


class shelved:  # noqa: N801 (used as a context manager: ``with shelved(plan, folder) as plan``)
    """The plan with the listing of its work (every partition's paths, fingerprints and positions)
    moved to a temporary file in ``folder`` for the rest of the run, the file closed on leaving.
    Where the work is the whole data set (a build, ``--overwrite``) the data set's paths and
    fingerprints are the work's, and its labels are shelved too: nothing is then held per image
    but the plan's flags and the split. An update keeps the data set's listing in memory (the rows
    it keeps are matched to it) and writes only its work's.

    The plan given is handed over: it is not changed (records are frozen), a new one is made,
    and this keeps no reference to the given one once entered, so that the caller, rebinding its
    name (``as plan``), lets the listing in memory go."""

    def __init__(self, plan: Plan, folder: Path):
        self._given, self._folder, self._shelf = plan, folder, None

    def __enter__(self) -> Plan:
        plan, self._given = self._given, None
        self._shelf = shelf = Shelf(self._folder)
        try:
            return _onto(shelf, plan)
        except BaseException:
            shelf.close()
            raise

    def __exit__(self, *exc) -> None:
        self._shelf.close()


def _onto(shelf: Shelf, plan: Plan) -> Plan:
    ds, parts = plan.ds, plan.partitions
    work = ShelvedWork(ShelvedPaths.put(shelf, [p.paths for p in parts]),
                       shelf.put([p.fingerprints for p in parts], np.int64, (2,)),
                       shelf.put([p.images for p in parts], np.int64))
    bounds = np.cumsum([0] + [len(p) for p in parts]).tolist()
    moved = {id(p): ShelvedPartition(p.id, work, lo, hi) for p, lo, hi in zip(parts, bounds, bounds[1:])}
    if bounds[-1] == len(ds):  # every image, in the data set's order (the partitions cut it in order)
        ds = dataclasses.replace(
            ds, paths=work.paths, fingerprints=work.fingerprints, labels=shelf.put(ds.labels, np.asarray(ds.labels).dtype),
            targets=None if ds.targets is None else shelf.put(ds.targets, ds.targets.dtype, ds.targets.shape[1:]))
    return dataclasses.replace(plan, ds=ds, partitions=[moved[id(p)] for p in parts],
                               pending=[moved[id(p)] for p in plan.pending])
