"""Reading code sets: :class:`CodeSet` (one file, lazily), :class:`JoinedCodeSet` (several side by
side), :class:`CodeStream` (rows streamed for training out of core). The format: :mod:`._format`."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
from pathlib import Path

import h5py
import numpy as np

from pipeline.codes._format import CodeFileError, check_code_file, parts_dir
from pipeline.data import RESIZES, UNLABELLED
from pipeline.errors import UserError


def _raise_open_files_limit() -> None:
    """HDF5 keeps each part of a virtual dataset open while reading it: allow as many open
    files as the system lets this process have."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))
        except (ValueError, OSError):
            pass


class _Codes:
    """What code sets, read or joined, share: ``shape``, ``split``, ``y`` and ``rows(mask)``."""

    def __len__(self) -> int:
        return self.shape[0]

    def nbytes(self, mask=None) -> int:
        """Bytes the selected codes take in memory as float32."""
        n = self.shape[0] if mask is None else int(np.count_nonzero(mask))
        return n * self.shape[1] * 4

    @property
    def multi_label(self) -> bool:
        """True for a multi-label set: ``y`` is then (N, labels) 0/1."""
        return np.ndim(self.y) == 2

    @property
    def labelled(self) -> np.ndarray:
        """Rows with a label (the others: split UNLABELLED, label -1), as a boolean mask."""
        return self.split != UNLABELLED

    def split_digest(self) -> str:
        """A digest of which labelled image is in which part: runs with the same one were tested
        on the same images (``compare`` marks runs whose digests differ)."""
        h = hashlib.blake2b(digest_size=8)
        for p, s in zip(self.paths, np.asarray(self.split).tolist()):
            if s != UNLABELLED:
                h.update(f"{p}\0{s}\n".encode())
        return h.hexdigest()

    def blocks(self, mask=None, block: int = 8192):
        """(row indices, float32 codes) of the selected rows, ``block`` rows at a time: memory
        bounded by the block, whatever the code set's size (a code set on disk streams them from
        its file, :meth:`_reader`)."""
        with self._reader() as read:
            for s in range(0, self.shape[0], block):
                sel = np.arange(s, min(s + block, self.shape[0]))
                if mask is not None:
                    sel = sel[np.asarray(mask[s:s + block], bool)]
                    if not len(sel):
                        continue
                yield sel, read(s, s + block, mask)

    @contextlib.contextmanager
    def _reader(self):
        """read(start, stop, mask): the codes of rows start..stop where ``mask`` is true; here
        from the codes held in memory."""
        X = self.X
        yield lambda s, e, mask: X[s:e] if mask is None else X[s:e][np.asarray(mask[s:e], bool)]

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.split == which
        return self.rows(m), self.y[m]

    @property
    def data_root(self) -> Path | None:
        """The image folder the codes were made from (``paths`` are relative to it)."""
        return data_root_of(self.attrs)


def data_root_of(attrs: dict) -> Path | None:
    """The image folder named by a code set's attributes (a joined set's: its first member's);
    None for codes written by other means than stage 1, which may not say."""
    attrs = json.loads(attrs["members"])[0] if "members" in attrs else attrs
    return Path(attrs["data_root"]) if attrs.get("data_root") else None


def _stamp(path: Path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


class CodeSet(_Codes):
    """One cached code set, read lazily: labels ``y``, ``split`` (TRAIN/VAL/TEST), relative
    ``paths``, ``class_names`` and the file's ``attrs`` are read at once; the codes (N, D) only
    when asked for: ``X`` (all of them, float32, kept), :meth:`rows` (some) or :meth:`blocks`
    (streamed, a block at a time)."""

    def __init__(self, path):
        path = Path(path)
        if not path.exists():
            raise UserError(f"no cached codes at {path}; run make codes first")
        if not path.is_file():
            raise UserError(f"{path} is not a code file: not a regular file")
        _raise_open_files_limit()
        try:
            with h5py.File(path, "r") as f:
                # a multi-label set holds (N, labels) 0/1 ``targets`` instead of ``labels``
                self.y, self.split, self.paths, self.class_names = check_code_file(f, path)
                self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
                self.shape = tuple(f["codes"].shape)
                self.dtype = np.dtype(f["codes"].dtype)
                missing = [n for n in (f["part_names"].asstr()[()] if "part_names" in f else [])
                           if not (parts_dir(path) / n).is_file()]
        except CodeFileError as exc:
            raise UserError(f"{path} is not a valid code file: {exc}") from None
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} is not a readable code file ({type(exc).__name__})") from None
        if missing:
            raise UserError(f"{path}: {len(missing)} of its part files are missing from {parts_dir(path)} "
                            f"(e.g. {missing[0]}); run make codes again to recompute them")
        self.path = path
        self._X = None
        self._stamp = _stamp(path)

    @classmethod
    def load(cls, path) -> CodeSet:
        return cls(path)

    @property
    def X(self) -> np.ndarray:
        """Every code, (N, D) float32, read once and kept."""
        if self._X is None:
            self._X = self.rows(None)
        return self._X

    def rows(self, mask=None, block: int = 8192) -> np.ndarray:
        """The codes of the rows where ``mask`` is true (all rows: None), float32, in order."""
        if self._X is not None:
            return self._X if mask is None else self._X[mask]
        n = int(self.shape[0] if mask is None else np.count_nonzero(mask))
        out = np.empty((n, self.shape[1]), np.float32)
        at = 0
        for _, codes in self.blocks(mask, block):
            out[at:at + len(codes)] = codes
            at += len(codes)
        return out

    @contextlib.contextmanager
    def _reader(self):
        """As :meth:`_Codes._reader`, from the file (read whether or not ``X`` is held)."""
        with self._codes() as ds:
            yield lambda s, e, mask: self._read(ds, s, e, mask)

    def read_ranges(self, ranges, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """Float32 codes of the file rows in ``ranges`` [(start, stop), ...] where ``mask`` is
        true, and their row numbers."""
        rows = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
        if mask is not None:
            rows = rows[np.asarray(mask)[rows]]
        out = np.empty((len(rows), self.shape[1]), np.float32)
        at = 0
        with self._codes() as ds:
            for a, b in ranges:
                codes = self._read(ds, a, b, mask)
                out[at:at + len(codes)] = codes
                at += len(codes)
        return out, rows

    @contextlib.contextmanager
    def _codes(self):
        """The ``codes`` dataset of the file this code set was opened from, open for reading."""
        self._check_unchanged()
        try:
            with h5py.File(self.path, "r") as f:
                yield f["codes"]
        except OSError as exc:
            raise UserError(f"{self.path}: codes unreadable ({type(exc).__name__}: {exc})") from None

    def _read(self, ds, start: int, stop: int, mask) -> np.ndarray:
        """Float32 codes of file rows start..stop where ``mask`` is true (all: None)."""
        with np.errstate(over="ignore"):  # float64 codes beyond float32's range: infinite, refused below
            codes = ds[start:stop].astype(np.float32, copy=False)
        if mask is not None:
            codes = codes[np.asarray(mask[start:stop], bool)]
        if not np.isfinite(codes).all():
            if np.isnan(codes).any():  # the fill value: a part could not be read
                raise UserError(f"{self.path}: some codes could not be read from its parts in "
                                f"{parts_dir(self.path)}; run make codes again")
            raise UserError(f"{self.path}: some codes are infinite or beyond float32's range (float16 codes "
                            f"overflow on some backbones: make them again with --dtype float32)")
        return codes

    def _check_unchanged(self) -> None:
        if _stamp(self.path) != self._stamp:
            raise UserError(f"{self.path} was replaced since it was opened (stage 1 updated it); open it again")


def load_codes(path) -> CodeSet:
    """Read one cached code set (lazily) as a :class:`CodeSet`."""
    return CodeSet(path)


class CodeStream:
    """Some rows of a code set (``mask``), streamed from the file: for heads trained on more
    codes than memory allows. ``y`` is held in memory; the codes are read ``block`` file rows
    at a time, at most ``budget_rows`` of them in memory at once."""

    def __init__(self, codes: CodeSet, mask, budget_rows: int, block: int = 256):
        self.codes, self.mask = codes, np.asarray(mask, bool)
        self.block = max(1, int(block))
        self.mix = max(1, int(budget_rows) // self.block)
        self.y = codes.y[self.mask]
        self.shape = (len(self.y), codes.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self):
        """Float32 codes of the selected rows, in file order, ``mix`` blocks at a time."""
        for _, codes in self.codes.blocks(self.mask, self.block * self.mix):
            yield codes

    def minibatches(self, batch_size: int, seed: int):
        """(X, y) minibatches in a random order. Codes are stored class by class, so each stretch
        of minibatches is drawn from ``mix`` blocks picked at random across the whole file and
        shuffled together (reading whole blocks keeps the reads sequential)."""
        rng = np.random.default_rng(seed)
        starts = np.arange(0, len(self.mask), self.block)
        starts = starts[[self.mask[s:s + self.block].any() for s in starts]]
        order = rng.permutation(starts)
        for g in range(0, len(order), self.mix):
            picked = np.sort(order[g:g + self.mix])
            X, rows = self.codes.read_ranges([(s, min(s + self.block, len(self.mask))) for s in picked], self.mask)
            y = self.codes.y[rows]
            perm = rng.permutation(len(y))
            for s in range(0, len(y), batch_size):
                take = perm[s:s + batch_size]
                yield X[take], y[take]
            X = y = None  # freed before the next stretch is read: one stretch in memory, not two


class JoinedCodeSet(_Codes):
    """Code sets side by side: each image's codes from every set concatenated (feature-wise),
    rows matched by image path. Only images present in every set are kept; the sets must have
    the same classes and the same split. Held in memory (``X``), like a loaded :class:`CodeSet`."""

    def __init__(self, paths):
        self.members = [CodeSet(p) for p in paths]
        first = self.members[0]
        for m in self.members[1:]:
            if m.class_names != first.class_names:
                raise UserError(f"{m.path} and {first.path} have different classes; join code sets made "
                                f"from the same data set (and the same --exclude)")
            if m.attrs.get("resize", RESIZES[0]) != first.attrs.get("resize", RESIZES[0]):
                raise UserError(f"{m.path} and {first.path} made images square differently (--resize); join code "
                                f"sets made with the same --resize")
        common = set(first.paths).intersection(*(m.paths for m in self.members[1:]))
        self.paths = [p for p in first.paths if p in common]
        self.index = []
        for m in self.members:
            where = {p: i for i, p in enumerate(m.paths)}
            self.index.append(np.array([where[p] for p in self.paths], np.int64))
        self.y, self.split = first.y[self.index[0]], first.split[self.index[0]]
        for m, idx in zip(self.members[1:], self.index[1:]):
            if not np.array_equal(m.split[idx], self.split):
                raise UserError(f"{m.path} and {first.path} split the images differently; make them with the same "
                                f"--split and --seed")
        self.dropped = len(set().union(*(m.paths for m in self.members))) - len(self.paths)
        self.class_names = first.class_names
        self.path = Path("+".join(str(m.path) for m in self.members))
        self.attrs = {k: "+".join(str(m.attrs.get(k)) for m in self.members)
                      for k in ("backbone", "layer", "pooling", "image_size", "weights")}
        self.attrs["members"] = json.dumps([{k: str(v) for k, v in m.attrs.items()} for m in self.members])
        self.shape = (len(self.paths), sum(m.shape[1] for m in self.members))
        self._X = None

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = np.hstack([m.X[idx] for m, idx in zip(self.members, self.index)])
        return self._X

    def rows(self, mask=None) -> np.ndarray:
        return self.X if mask is None else self.X[mask]


class CodeView(_Codes):
    """Some rows of a code set (or of joined ones), e.g. its labelled images: the same names, the
    codes read when first asked for and kept."""

    def __init__(self, codes, mask):
        self.source, self._mask = codes, np.asarray(mask, bool)
        self.path, self.attrs, self.class_names = codes.path, codes.attrs, codes.class_names
        self.paths = [p for p, keep in zip(codes.paths, self._mask) if keep]
        self.y, self.split = codes.y[self._mask], codes.split[self._mask]
        self.shape = (len(self.paths), codes.shape[1])
        self._X = None

    @property
    def X(self) -> np.ndarray:
        if self._X is None:
            self._X = self.source.rows(self._mask)
        return self._X

    def rows(self, mask=None) -> np.ndarray:
        """The selected rows; streamed from the source while the view's codes are not held."""
        if self._X is None and mask is not None:
            return self.source.rows(self._of_source(mask))
        return self.X if mask is None else self.X[mask]

    def blocks(self, mask=None, block: int = 8192):
        """As :meth:`CodeSet.blocks`, row indices the view's own; streamed from the source while
        the view's codes are not held."""
        if self._X is not None:
            yield from super().blocks(mask, block)
            return
        position = np.cumsum(self._mask) - 1  # source row -> view row
        for sel, codes in self.source.blocks(self._of_source(mask), block):
            yield position[sel], codes

    def _of_source(self, mask) -> np.ndarray:
        """The view's row mask as a mask of the source's rows."""
        if mask is None:
            return self._mask
        full = np.zeros(len(self._mask), bool)
        full[self._mask] = np.asarray(mask, bool)
        return full


def open_code_sets(codes):
    """One code set (a path) or several joined (a list of paths, or paths joined by ``+``);
    a code set already open is taken as it is."""
    if isinstance(codes, (CodeSet, JoinedCodeSet)):
        return codes
    if isinstance(codes, (list, tuple)):
        paths = [Path(c) for c in codes]
    else:
        paths = [Path(codes)] if Path(codes).exists() or "+" not in str(codes) else [
            Path(c) for c in str(codes).split("+")]
    return CodeSet(paths[0]) if len(paths) == 1 else JoinedCodeSet(paths)
