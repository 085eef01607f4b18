"""A data set's relative paths held compactly: stage 1 keeps a million of them through a build."""
from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

_BLOCK = 65536  # paths decoded or gathered at a time: bounded temporary memory
_FIND_BLOCK = 4 * _BLOCK
_SCAN = 1 << 22  # bytes searched for NULs at a time


class PathList(Sequence):
    """An immutable sequence of paths (str) stored as one block of UTF-8 bytes, each path ended
    by a NUL (which no file name holds), and where each path starts: 26 bytes a path of 21
    characters, where a list of str takes about 80. Slices and contiguous :meth:`take` are views
    of the same bytes; iteration decodes a block at a time. It compares equal to any sequence of
    the same strings and pickles only the paths it holds (a worker is sent its partition only)."""

    __slots__ = ("_blob", "_hi", "_lo", "_starts")
    __hash__ = None  # equal to a list of the same paths, which is not hashable

    def __init__(self, blob: bytes, starts: np.ndarray, lo: int = 0, hi: int | None = None):
        self._blob, self._starts = blob, starts
        self._lo, self._hi = lo, len(starts) - 1 if hi is None else hi

    @classmethod
    def of(cls, paths: Iterable[str]) -> PathList:
        """``paths`` as a PathList (a PathList is returned as it is). A path holding a NUL is refused."""
        if isinstance(paths, PathList):
            return paths
        if not isinstance(paths, (list, tuple)):  # an iterator: taken a block at a time
            paths = iter(paths)
            blocks = iter(lambda: list(itertools.islice(paths, _BLOCK)), [])
        else:
            blocks = (paths[s:s + _BLOCK] for s in range(0, len(paths), _BLOCK))
        return cls.of_blocks((("\0".join(block) + "\0").encode("utf-8", "surrogateescape"), len(block))
                             for block in blocks)

    @classmethod
    def of_encoded(cls, blocks: Iterable[list[bytes]]) -> PathList:
        """Paths given as UTF-8 bytes, a list at a time (as a file holds them), without making a
        str of each. A path holding a NUL is refused."""
        return cls.of_blocks((b"\0".join(block) + b"\0", len(block)) for block in blocks)

    @classmethod
    def of_blocks(cls, blocks: Iterable[tuple[bytes, int]]) -> PathList:
        """Paths given as blocks of (n paths' UTF-8 bytes, each ended by a NUL; n), as a walk of
        folders gives them. A path holding a NUL is refused."""
        pieces = []
        for data, n in blocks:
            if data.count(b"\0") != n:
                raise ValueError("a path holds a NUL character")
            pieces.append(data)
        blob = b"".join(pieces)
        # where each path ends, found a few MB at a time over the joined bytes (bounded
        # temporary memory, and no numpy call per block: a data set may have 100,000 folders)
        view = np.frombuffer(blob, np.uint8)
        ends = [np.flatnonzero(view[s:s + _SCAN] == 0) + (s + 1) for s in range(0, len(view), _SCAN)]
        return cls._whole(blob, np.concatenate([np.zeros(1, np.int64), *ends]))

    @classmethod
    def _whole(cls, blob: bytes, starts: np.ndarray) -> PathList:
        """A PathList of all of ``blob``, its starts held in 4 bytes each where the bytes allow."""
        return cls(blob, starts.astype(np.int32 if len(blob) < 2**31 else np.int64))

    def __len__(self) -> int:
        return self._hi - self._lo

    def _span(self, lo: int, hi: int) -> bytes:
        """The bytes of paths lo..hi of the whole block (NUL-separated, the last NUL left out)."""
        return self._blob[int(self._starts[lo]):int(self._starts[hi]) - 1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return PathList(self._blob, self._starts, self._lo + start, self._lo + max(start, stop))
            return self.take(np.arange(start, stop, step))
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("PathList index out of range")
        k = self._lo + i
        return self._span(k, k + 1).decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        for s in range(self._lo, self._hi, _BLOCK):
            yield from self._span(s, min(s + _BLOCK, self._hi)).decode("utf-8", "surrogateescape").split("\0")

    def encoded_blocks(self, block: int = _BLOCK) -> Iterator[list[bytes]]:
        """The paths as UTF-8 bytes, a list of ``block`` at a time."""
        for s in range(self._lo, self._hi, block):
            yield self._span(s, min(s + block, self._hi)).split(b"\0")

    def encoded(self) -> bytes:
        """The paths' UTF-8 bytes, joined by NULs."""
        return self._span(self._lo, self._hi) if len(self) else b""

    def buffers(self) -> tuple[memoryview, np.ndarray]:
        """The paths' bytes, each ended by a NUL (a view, not a copy), and where each starts in
        them, with one more for the end: what ``PathList(bytes, starts)`` is made of again."""
        if not len(self):
            return memoryview(b""), np.zeros(1, np.int64)
        lo, hi = int(self._starts[self._lo]), int(self._starts[self._hi])
        return memoryview(self._blob)[lo:hi], self._starts[self._lo:self._hi + 1].astype(np.int64) - lo

    def max_bytes(self) -> int:
        """The length in bytes of the longest path (0 for none)."""
        if not len(self):
            return 0
        return int(np.diff(self._starts[self._lo:self._hi + 1]).max()) - 1

    def take(self, indices) -> PathList:
        """The paths at ``indices`` (an array of positions), in that order: a view where they are
        a contiguous run, else their bytes gathered a block at a time. A boolean mask selects
        where it is true."""
        idx = np.asarray(indices)
        idx = (np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64, copy=False)).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError("PathList index out of range")
        idx = np.where(idx < 0, idx + len(self), idx) + self._lo
        if not len(idx):
            return PathList.of([])
        if idx[-1] - idx[0] == len(idx) - 1 and (len(idx) == 1 or (np.diff(idx) == 1).all()):
            return PathList(self._blob, self._starts, int(idx[0]), int(idx[-1]) + 1)
        starts = self._starts[idx].astype(np.int64)
        lengths = self._starts[idx + 1].astype(np.int64) - starts  # each with its NUL
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        if len(breaks) < len(idx) // 8:  # long runs (the kept rows of an update): bytes copied a run at a time
            lo, hi = idx[np.r_[0, breaks]], idx[np.r_[breaks - 1, len(idx) - 1]] + 1
            blob = b"".join(self._blob[a:b] for a, b in zip(self._starts[lo].tolist(), self._starts[hi].tolist()))
        else:  # scattered: the bytes gathered by position, a block of paths at a time
            source, pieces = np.frombuffer(self._blob, np.uint8), []
            for s in range(0, len(idx), _BLOCK):
                st, ln = starts[s:s + _BLOCK], lengths[s:s + _BLOCK]
                first = np.cumsum(ln) - ln  # where each path starts in this block's output
                pieces.append(source[np.repeat(st - first, ln) + np.arange(int(ln.sum()))].tobytes())
            blob = b"".join(pieces)
        return PathList._whole(blob, np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)]))

    @staticmethod
    def concat(lists: Sequence[PathList]) -> PathList:
        """The paths of ``lists`` one after the other: a view where they are consecutive runs of
        one PathList (the partitions of a build), else a new one."""
        lists = [PathList.of(x) for x in lists]
        if lists and all(a._blob is lists[0]._blob and a._starts is lists[0]._starts for a in lists) and all(
                a._hi == b._lo for a, b in itertools.pairwise(lists)):
            return PathList(lists[0]._blob, lists[0]._starts, lists[0]._lo, lists[-1]._hi)
        lists = [x for x in lists if len(x)]
        if not lists:
            return PathList.of([])
        blob = b"".join(x._blob[int(x._starts[x._lo]):int(x._starts[x._hi])] for x in lists)
        at = np.cumsum([0] + [int(x._starts[x._hi] - x._starts[x._lo]) for x in lists])
        starts = [x._starts[x._lo:x._hi].astype(np.int64) - int(x._starts[x._lo]) + a
                  for x, a in zip(lists, at.tolist())]
        return PathList._whole(blob, np.concatenate(starts + [at[-1:]]))

    def __eq__(self, other) -> bool:
        if isinstance(other, PathList):
            if len(self) != len(other):
                return False
            return not len(self) or (self.encoded() == other.encoded()
                                     and np.array_equal(np.diff(self._starts[self._lo:self._hi + 1]),
                                                        np.diff(other._starts[other._lo:other._hi + 1])))
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __reduce__(self):
        if not len(self):
            return PathList.of, ([],)
        starts = self._starts[self._lo:self._hi + 1] - self._starts[self._lo]
        return PathList, (self.encoded() + b"\0", np.ascontiguousarray(starts))

    def __repr__(self) -> str:
        head = ", ".join(repr(p) for p in self[:3])
        return f"PathList([{head}{', ...' if len(self) > 3 else ''}], {len(self)} paths)"


_OFFSET, _PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)  # FNV-1a's, over 8-byte words


def _hashes(paths: PathList) -> np.ndarray:
    """A 64-bit hash of each path's bytes (the same path gives the same hash in any PathList),
    a block at a time, vectorized over 8-byte words; paths of like lengths hashed together (one
    long path among short ones does not widen them all). Not a secret: matches are checked byte
    by byte, so a collision (or names made to collide) costs time, never a wrong match."""
    out = np.empty(len(paths), np.uint64)
    for s in range(0, len(paths), _BLOCK):
        block = paths[s:s + _BLOCK]
        items = block.encoded().split(b"\0")
        lengths = np.diff(block._starts[block._lo:block._hi + 1]).astype(np.int64) - 1
        n_words = (lengths + 7) // 8
        size = np.ceil(np.log2(np.maximum(n_words, 4))).astype(np.int64)  # 32 bytes or fewer, 64, 128, ...
        for b in np.unique(size).tolist():
            alike = size == b
            which = slice(None) if alike.all() else np.flatnonzero(alike)
            chosen = items if isinstance(which, slice) else [items[i] for i in which.tolist()]
            width = 8 * max(1, int(n_words[which].max()))
            words = np.array(chosen, f"S{width}").view(np.uint64).reshape(len(chosen), width // 8)
            h = np.full(len(chosen), _OFFSET, np.uint64) ^ lengths[which].astype(np.uint64)
            for k in range(width // 8):  # (a path's padding beyond its own words left out)
                h = np.where(k < n_words[which], (h ^ words[:, k]) * _PRIME, h)
            out[s:s + len(items)][which] = h ^ (h >> np.uint64(29))
    return out


def _same(a: PathList, b: PathList) -> np.ndarray:
    """Whether ``a[i] == b[i]``, for each i, compared as bytes (vectorized where the lengths agree)."""
    la = np.diff(a._starts[a._lo:a._hi + 1]).astype(np.int64)
    lb = np.diff(b._starts[b._lo:b._hi + 1]).astype(np.int64)
    out = la == lb
    if not out.all():  # (only where hashes collide): the pairs of equal length compared alone
        keep = np.flatnonzero(out)
        out[keep] = _same(a.take(keep), b.take(keep))
        return out
    ea, eb = a.encoded(), b.encoded()  # (each copied once)
    if len(la) and ea != eb:  # (equal as a whole: the usual case)
        differ = np.frombuffer(ea, np.uint8) != np.frombuffer(eb, np.uint8)
        ends = np.cumsum(la) - 1  # (each path's NUL, left out of the spans but the last's)
        out &= np.add.reduceat(np.r_[differ, False], np.r_[0, ends[:-1] + 1]) == 0
    return out


class PathLookup:
    """Where each of many paths is in a :class:`PathList` of distinct paths: a join by hashes,
    sorted once (16 bytes a path, where a dictionary of str takes about 150), matches checked
    byte by byte. Stage 1 matches a code set's million rows to the images on disk with it."""

    def __init__(self, paths: PathList):
        self.paths = PathList.of(paths)
        hashes = _hashes(self.paths)
        self.order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[self.order]

    def find(self, paths) -> np.ndarray:
        """The position of each of ``paths`` in the list, -1 for one it does not hold (looked up
        a block of 262,144 at a time: what a lookup needs beside the list stays bounded)."""
        paths = PathList.of(paths)
        at = np.full(len(paths), -1, np.int64)
        if len(self.hashes):
            for s in range(0, len(paths), _FIND_BLOCK):
                at[s:s + _FIND_BLOCK] = self._find(paths[s:s + _FIND_BLOCK])
        return at

    def _find(self, paths: PathList) -> np.ndarray:
        wanted = _hashes(paths)
        by_hash = np.argsort(wanted)  # (sorted needles: a search in step, not at random)
        first = np.empty(len(paths), np.int64)
        first[by_hash] = np.minimum(np.searchsorted(self.hashes, wanted[by_hash]), len(self.hashes) - 1)
        del by_hash
        hit = np.flatnonzero(self.hashes[first] == wanted)
        candidate = self.order[first[hit]]
        # compared in the list's order: both sides mostly runs of paths (a code set's rows follow
        # the folder's order), copied a run at a time
        by_place = np.argsort(candidate, kind="stable")
        same = np.empty(len(hit), bool)
        same[by_place] = _same(paths.take(hit[by_place]), self.paths.take(candidate[by_place]))
        at = np.full(len(paths), -1, np.int64)
        at[hit[same]] = candidate[same]
        # the same hash, other bytes (a collision): every path of that hash compared
        for i in hit[~same].tolist():
            lo, hi = np.searchsorted(self.hashes, wanted[i:i + 1], "left")[0], np.searchsorted(
                self.hashes, wanted[i:i + 1], "right")[0]
            for j in self.order[lo:hi].tolist():
                if self.paths[j] == paths[i]:
                    at[i] = j
                    break
        return at
