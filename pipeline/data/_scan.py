"""Image folders (one sub-folder per class), stratified splits and robust image decoding."""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import ntpath
import os
import posixpath
import warnings
from pathlib import Path

import numpy as np

from pipeline.data._paths import PathList
from pipeline.data._walk import IMAGE_EXTENSIONS, run
from pipeline.errors import ParameterError, UserError

# Deferred on purpose: Pillow is imported inside the functions that use it, so that commands and
# workers that never need it start without loading it.

STAT_SLICE = 32768  # paths stat'ed as one job (about 0.2 s here)
TRAIN, VAL, TEST = 0, 1, 2
# Images without a label: label -1 and this split value in a code set, so that every reader that
# selects TRAIN, VAL or TEST leaves them out.
UNLABELLED = 3
SPLIT_NAMES = ("train", "val", "test", "unlabelled")
# Split values of a layout that are still to be drawn (never stored): every part drawn, only the
# validation part (the test part is given), only the test part (the validation part is given).
DRAW, DRAW_VAL, DRAW_TEST = -1, -2, -3
# The key of the split's hash (with the seed): another key would deal every image anew.
SPLIT_KEY = b"cnn-codes split v1"


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """A scanned data set. ``paths`` are relative to ``root`` (posix), sorted, held as a
    :class:`~pipeline.data.PathList` (a sequence of str, compact: stage 1 holds a million through
    a build; a list given is converted); ``labels[i]``
    indexes ``class_names`` (-1: unlabelled); ``fingerprints[i]`` is (size in bytes, mtime in ns).
    ``split`` is the split the layout gives (None: drawn; see :func:`assign_split`),
    ``targets`` the (N, labels) 0/1 matrix of a multi-label set (``labels`` then only stratifies).
    Frozen: a layout reader builds it, and a later phase that needs it otherwise (the shelf) makes
    another with :func:`dataclasses.replace`."""

    root: Path
    paths: PathList
    labels: np.ndarray
    class_names: list[str]
    fingerprints: np.ndarray
    skipped: dict = dataclasses.field(default_factory=dict)  # files not read as images, by kind: {".txt": 3, ...}
    empty_classes: tuple[str, ...] = ()
    # Files that cannot even be named in a code set (not valid UTF-8): (printable name, reason).
    unnamable: tuple[tuple[str, str], ...] = ()
    split: np.ndarray | None = None
    targets: np.ndarray | None = None
    missing: tuple[str, ...] = ()      # images a labels file lists that are not there
    notes: tuple[str, ...] = ()
    description: str = "class folders"  # how the labels were read, for the first line of stage 1
    source: dict = dataclasses.field(default_factory=lambda: {"layout": "folders"})  # recorded in the code set

    def __post_init__(self):
        # lists given become compact columns; columns kept elsewhere (stage 1's shelf) stay there
        if not hasattr(self.paths, "take"):
            object.__setattr__(self, "paths", PathList.of(self.paths))
        if isinstance(self.fingerprints, (list, tuple, np.ndarray)):
            object.__setattr__(self, "fingerprints", np.asarray(self.fingerprints, np.int64).reshape(-1, 2))

    @property
    def multi_label(self) -> bool:
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))


def relative_inside(path: str) -> str:
    """``path`` as a path read from a file (a code set, predictions.csv) must be: relative and
    staying inside the folder it is relative to. Links inside the data folder are followed like
    any file of it; a path read from a file never leads out of it by itself (``..``, ``/``)."""
    if "\0" in path or posixpath.isabs(path) or ntpath.isabs(path):
        raise ValueError(f"{path[:80]!r} is not a path inside the data folder")
    parts = path.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"{path[:80]!r} leads out of the data folder")
    return path


def content_digest(path) -> int:
    """64-bit BLAKE2 digest of a file's bytes (never 0, which marks "unknown"). Lets the cache
    recognize images whose modification time changed but whose content did not (a copied or
    re-extracted data set)."""
    return int.from_bytes(hashlib.blake2b(Path(path).read_bytes(), digest_size=8).digest(), "little") or 1


def scan(root, exclude=()) -> ImageFolder:
    """Find images recursively under ``root/<class>/``; drop classes named in ``exclude``."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder (expected one sub-folder per class)")
    with os.scandir(root) as entries:  # (names, not Paths: 100,000 Paths take a second to sort)
        class_dirs = sorted(e.name for e in entries if not e.name.startswith(".") and _is_folder(e))
    unknown = sorted(set(exclude) - set(class_dirs))
    if unknown:
        raise ParameterError("exclude", f"names classes not in {root}: {', '.join(unknown)}")
    class_dirs = [c for c in class_dirs if c not in set(exclude)]
    if not class_dirs:
        raise UserError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    # each class folder walked and its images stat'ed as one job, shared with helper processes
    # when there are many (see pipeline.data._walk)
    walked = run([("walk", os.fspath(root), c) for c in class_dirs])
    blocks, counts, names, empty, skipped, unnamable = [], [], [], [], collections.Counter(), []
    sizes, mtimes = [], []
    for c, (blob, n, size, mtime, other, bad) in zip(class_dirs, walked):
        skipped.update(other)
        unnamable += bad
        if not n and not bad:
            empty.append(c)
            continue
        names.append(c)
        blocks.append((blob, n))  # bytes, not str: a million paths are never all str at once
        counts.append(n)
        sizes.append(size)
        mtimes.append(mtime)
    if len(names) < 2:
        which = f"only one class ({names[0]})" if names else "no images"
        raise UserError(f"data folder {root} has {which}; a classifier needs at least two classes "
                        f"with images ({', '.join(IMAGE_EXTENSIONS)})")
    labels = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    return ImageFolder(root, PathList.of_blocks(blocks), labels, names, _as_fingerprints(sizes, mtimes), dict(skipped),
                       tuple(empty), tuple(unnamable))


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a link: a linked class folder is walked
    except OSError:
        return False


def describe_skipped(skipped: dict, limit: int = 6) -> str:
    """'3 .txt, 1 special file, 2 hidden' (the most frequent kinds first)."""
    kinds = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {k}" for k, n in kinds[:limit]) + (" ..." if len(kinds) > limit else "")


def fingerprint(path) -> tuple[int, int]:
    """(size in bytes, mtime in ns); (-1, -1) for a link that leads nowhere (dangling, or a
    loop): such a file is listed as unreadable and tried again once it changes."""
    size, mtime = fingerprints("", [os.fspath(path)])[0].tolist()
    return size, mtime


def fingerprints(root, paths) -> np.ndarray:
    """:func:`fingerprint` of each of ``paths`` (relative to ``root``) as an (n, 2) array, in
    slices shared with helper processes when there are many (see :mod:`pipeline.data._walk`)."""
    stats = run(_StatJobs(os.fspath(root), PathList.of(paths)))
    return _as_fingerprints([sizes for sizes, _ in stats], [times for _, times in stats])


class _StatJobs:
    """The stat jobs of ``paths``, a slice each, made as they are taken (a million paths are
    never all str at once)."""

    def __init__(self, root: str, paths: PathList):
        self.root, self.paths = root, paths

    def __len__(self) -> int:
        return (len(self.paths) + STAT_SLICE - 1) // STAT_SLICE

    def __getitem__(self, i: int) -> tuple:
        return "stat", self.root, list(self.paths[i * STAT_SLICE:(i + 1) * STAT_SLICE])


def _as_fingerprints(sizes: list[bytes], times: list[bytes]) -> np.ndarray:
    """The (n, 2) int64 array of pieces of sizes and times as :func:`~pipeline.data._walk.stat_paths`
    gives them (filled a piece at a time: no joined copy of a million numbers)."""
    out = np.empty((sum(len(piece) for piece in sizes) // 8, 2), np.int64)
    at = 0
    for size, mtime in zip(sizes, times):
        n = len(size) // 8
        out[at:at + n, 0], out[at:at + n, 1] = np.frombuffer(size, np.int64), np.frombuffer(mtime, np.int64)
        at += n
    return out


def parse_split(text: str) -> tuple[float, float, float]:
    """'70/15/15' or '70/30' (train/val/test, percent or fractions of 1) -> fractions summing to 1."""
    try:
        parts = [float(p) for p in text.replace(",", "/").split("/")]
    except ValueError:
        raise ParameterError("split", f"{text!r}: expected TRAIN/VAL/TEST such as 70/15/15, or TRAIN/TEST such as 70/30")
    if len(parts) == 2:
        parts = [parts[0], 0.0, parts[1]]
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or parts[2] <= 0:
        raise ParameterError("split", f"{text!r}: expected TRAIN/VAL/TEST with positive train and test parts")
    total = sum(parts)
    if not (abs(total - 100) < 1e-6 or abs(total - 1) < 1e-9):
        raise ParameterError("split", f"{text!r}: the parts add up to {total:g}; they must add up to 100 (or 1)")
    return tuple(p / total for p in parts)


def split_scores(paths, seed=0) -> np.ndarray:
    """Each path's place in [0, 1) under ``seed``: a keyed BLAKE2b of the path's own bytes
    (relative to the data folder, as stored). It depends on nothing else, so an image keeps its
    place whatever is added, removed or relabelled beside it, and wherever the folder moves."""
    key = SPLIT_KEY + int(seed).to_bytes(8, "little")
    out = np.empty(len(paths), np.float64)
    at = 0
    for block in PathList.of(paths).encoded_blocks():
        h = np.frombuffer(b"".join(hashlib.blake2b(p, digest_size=8, key=key).digest() for p in block), "<u8")
        out[at:at + len(h)] = (h >> np.uint64(11)) * 2.0 ** -53  # (the top 53 bits: exact in a float64)
        at += len(h)
    return out


def cut_split(scores, labels, fractions=(0.7, 0.15, 0.15)) -> np.ndarray:
    """TRAIN, VAL or TEST from each image's score (:func:`split_scores`): test below the test
    share, validation below test + validation, training above. The one exception, for tiny
    classes: a class left without a training image gives its highest-scored image to training,
    and one of two or more images left without a test image (where there is a test share) its
    lowest-scored image to test; only such an image moves when its class changes."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    _, f_val, f_test = fractions
    out = np.full(len(scores), TRAIN, np.int8)
    out[scores < f_test + f_val] = VAL
    out[scores < f_test] = TEST
    if not len(out):
        return out
    _, cls = np.unique(labels, return_inverse=True)
    order = np.lexsort((scores, cls))  # by class, then by score
    n = np.bincount(cls)
    first = np.r_[0, np.cumsum(n)[:-1]]
    lacks_train = np.bincount(cls, out == TRAIN, len(n)) == 0
    out[order[(first + n - 1)[lacks_train]]] = TRAIN
    if f_test > 0:
        lacks_test = (np.bincount(cls, out == TEST, len(n)) == 0) & (n >= 2)
        out[order[first[lacks_test]]] = TEST
    return out


def stratified_split(paths, labels, fractions=(0.7, 0.15, 0.15), seed=0, class_names=None) -> np.ndarray:
    """Per-class split of images by their own paths: ``out[i]`` is TRAIN, VAL or TEST for
    ``paths[i]`` (:func:`split_scores` under ``seed``, cut by ``fractions``: :func:`cut_split`).
    Each class keeps at least one training image and, with two or more images, one test image.
    ``class_names`` is accepted for older callers and not used: the split depends only on
    ``seed``, the fractions, each image's path and its class's other images (tiny classes)."""
    return cut_split(split_scores(paths, seed), labels, fractions)


def _given_split(ds: ImageFolder) -> np.ndarray:
    """The split the layout gives each image: a part, DRAW marks (to be drawn), UNLABELLED."""
    return ds.split if ds.split is not None else np.where(ds.labels >= 0, DRAW, UNLABELLED).astype(np.int8)


def assign_split(ds: ImageFolder, fractions=(0.7, 0.15, 0.15), seed=0) -> np.ndarray:
    """Each image's split: the one the layout gives, the parts it leaves open drawn per class
    by :func:`stratified_split` from ``fractions`` (renormalised over the parts drawn),
    UNLABELLED for unlabelled images."""
    given = _given_split(ds)
    out = given.astype(np.int8).copy()
    drawn = np.flatnonzero(given < 0)
    if not len(drawn):
        return out
    scores = split_scores(ds.paths.take(drawn), seed)
    f_train, f_val, f_test = fractions
    for mark, parts in ((DRAW, (f_train, f_val, f_test)), (DRAW_VAL, (f_train, f_val, 0.0)),
                        (DRAW_TEST, (f_train, 0.0, f_test))):
        which = given[drawn] == mark
        if which.any():
            total = sum(parts)
            idx = drawn[which]
            out[idx] = cut_split(scores[which], ds.labels[idx], tuple(p / total for p in parts))
    return out


def keep_stored_split(ds: ImageFolder, split: np.ndarray, stored: np.ndarray) -> tuple[np.ndarray, int]:
    """``split`` (from :func:`assign_split`) with each drawn image's ``stored`` part kept where
    the layout allows it (a code set split by an earlier version: its images keep their parts;
    ``stored`` -1 where an image has none). Returns the split and how many images kept a part."""
    given = _given_split(ds)
    stored = np.asarray(stored)
    keep = (((given == DRAW) & (stored >= TRAIN) & (stored <= TEST))
            | ((given == DRAW_VAL) & ((stored == TRAIN) | (stored == VAL)))
            | ((given == DRAW_TEST) & ((stored == TRAIN) | (stored == TEST))))
    if not keep.any():
        return split, 0
    split = np.where(keep, stored, split).astype(np.int8)
    return split, int(keep.sum())


class ImageError(Exception):
    """An image file that cannot be decoded."""


@functools.cache
def _quiet_pillow() -> None:
    # Pillow warns (twice per image, on stderr) about images between 89 and 179 megapixels;
    # the readers count them and say so once per run instead.
    from PIL import Image
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


RESIZES = ("squash", "crop")
CROP_FRACTION = 0.875  # crop: the shorter side resized to size / 0.875, the centre kept (ImageNet evaluation)


def decode_rgb(path, side: int, large: list | None = None):
    """Decode any common image file to an RGB Pillow image (a JPEG at reduced scale when it is
    much larger than ``side``). Grayscale, palette, CMYK and 16-bit images are converted;
    transparency is composited on white; animated files give their first frame. Images over
    Pillow's decompression-bomb limit (179 megapixels) raise; those over its warning limit (89
    megapixels) are decoded and, when ``large`` is a list, appended to it. A hostile file can make
    the decoder raise anything: callers catch it."""
    from PIL import Image, ImageOps

    _quiet_pillow()
    with Image.open(path) as img:
        if large is not None and img.width * img.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            large.append(str(path))
        img.draft("RGB", (side, side))  # JPEG: decode at reduced scale when much larger
        img.load()
        if "exif" in img.info:  # parsing EXIF costs time: only when there is some
            img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = np.asarray(img, dtype=np.float32)
            top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path, size: int, large: list | None = None, resize: str = RESIZES[0]) -> np.ndarray:
    """Decode any common image file (see :func:`decode_rgb`) to RGB uint8 (size, size, 3).

    ``resize`` squash resizes the image to a square, ignoring aspect ratio, as the pretrained conv
    bases were used in the published recipes; crop resizes its shorter side to ``size / 0.875``
    and keeps the centre square (the evaluation of ImageNet models and of the linear-probe
    protocol). Unreadable files, and images over Pillow's decompression-bomb limit, raise
    :class:`ImageError`.
    """
    from PIL import Image

    try:
        side = round(size / CROP_FRACTION) if resize == "crop" else size
        img = decode_rgb(path, side, large)
        if resize == "crop":
            scale = side / min(img.size)
            w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
            left, top = (w - size) // 2, (h - size) // 2
            img = img.resize((w, h), Image.BILINEAR, reducing_gap=3.0).crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8)
        return np.asarray(img.resize((size, size), Image.BILINEAR, reducing_gap=3.0), dtype=np.uint8)
    except Exception as exc:  # a hostile file can make a decoder raise anything: it is one bad image
        raise ImageError(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
