"""The code-set file format: part files, the index that makes them one code set, and reading and
checking them (writing: :mod:`._parts` writes part files, :mod:`._commit` the index).

A code set is one path, ``<layer>-<pooling>.h5``, that plain h5py opens: datasets ``codes``
(N, D), ``paths``, ``labels``, ``split``, ``class_names`` (and ``fingerprints``, ``digests``,
``failed_*``) at the top. Since format version 2 it is a small *index*: ``codes`` is an HDF5
virtual dataset over *part files* in the folder beside it, ``<layer>-<pooling>.parts/``, each
written once, whole, by one partition of stage 1 and never modified. So an update writes the
parts of the images it computes plus a new index, never the codes already there; a removed
image is a row the index no longer maps. The index is replaced atomically, so a reader sees the
old code set or the new one; parts no index refers to are deleted after it. When updates have
left many small parts, :func:`~pipeline.codes._commit.compact` merges them.

Trade-off (see the README): a virtual dataset opens its part files lazily and reads nothing
for a part it cannot open but its fill value, so the index records its parts, the reader
checks they exist, the fill value is NaN (never a plausible code) and the number of parts is
kept bounded by compaction (HDF5 keeps each part open while the index is open).

Format version 1 (one file holding the codes) still loads; its first update turns the old file
into the first part, without copying it where the file system allows a hard link.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from pydantic import ValidationError

from pipeline._checked import problem
from pipeline.codes._settings import IndexAttrs
from pipeline.data import PathList
from pipeline.errors import UserError

FORMAT_VERSION = 2
STR = h5py.string_dtype()
CHUNK = 65536  # rows per chunk of the index's per-row columns


def parts_dir(path: Path) -> Path:
    """The folder of a code set's part files (not named ``<layer>-<pooling>.h5``)."""
    path = Path(path)
    return path.with_name(path.stem + ".parts")


# ------------------------------------------------------------------ part files

@dataclasses.dataclass
class FailedImage:
    path: str
    reason: str
    fingerprint: tuple[int, int]


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
