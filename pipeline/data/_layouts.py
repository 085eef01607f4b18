"""How a data folder says what its images are: the five layouts (docs/data.md).

- ``folders``: one sub-folder per class (``DATA/<class>/<image>``);
- ``split-folders``: ``DATA/<split>/<class>/<image>`` with split folders named like train, val, test;
- ``labels-file``: a CSV or TSV table naming images and their label(s) (``--labels FILE``, or the one
  table file at the top of the folder whose rows name its images);
- ``names``: the class is the first group of a regular expression matched on each file name;
- ``unlabelled``: images and nothing else.

:func:`read_folder` detects the layout (or takes the one forced), reads it into an
:class:`~pipeline.data._scan.ImageFolder` and describes it in one line. Whatever the layout, the
images are every image file under the folder: labels never decide which codes exist, only how
they are used. Images without a label are *unlabelled* (label -1, split :data:`UNLABELLED`):
computed, never trained or tested on.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.data._paths import PathList
from pipeline.data._scan import (
    DRAW,
    DRAW_TEST,
    DRAW_VAL,
    TEST,
    TRAIN,
    UNLABELLED,
    VAL,
    ImageFolder,
    fingerprints,
    scan,
)
from pipeline.data._walk import IMAGE_EXTENSIONS, walk_images
from pipeline.errors import ParameterError, UserError

LAYOUTS = ("auto", "folders", "split-folders", "labels-file", "names", "unlabelled")
TASKS = ("auto", "single-label", "multi-label")

# Folder names (and split-column values) that mean a split, compared case-insensitively.
SPLIT_WORDS = {
    TRAIN: ("train", "training", "training_set", "train_set", "trainset", "training-set", "train-set"),
    VAL: ("val", "valid", "validation", "dev", "val_set", "validation_set", "valset", "validation-set", "val-set"),
    TEST: ("test", "testing", "test_set", "testset", "eval", "evaluation", "test-set"),
}
_SPLIT_OF_WORD = {w: s for s, words in SPLIT_WORDS.items() for w in words}

# Columns of a labels file, recognised by their header (case-insensitive), first match first.
IMAGE_COLUMNS = ("image", "images", "file", "filename", "file_name", "filepath", "file_path", "path", "image_path",
                 "image_name", "img", "id", "image_id", "imageid", "fname", "name")
LABEL_COLUMNS = ("label", "labels", "class", "classes", "class_name", "category", "categories", "breed", "target",
                 "tags", "tag", "species")
SPLIT_COLUMNS = ("split", "set", "fold", "subset", "partition")
TABLE_EXTENSIONS = (".csv", ".tsv")
MULTI_SEPARATORS = ("|", ";", ",")
PATTERN_SECONDS = 1.0  # the most --label-pattern may take on one file name
SNIFF_CHARS = 4096     # the sample the delimiter is told from (a few lines of a table)
MAX_TABLE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class LayoutOptions:
    """How to read the labels of a data folder; every field ``None``/``auto``: detected."""

    layout: str = "auto"                 # one of LAYOUTS
    labels: str | None = None            # a labels file (CSV or TSV); implies layout labels-file
    image_column: str | None = None      # labels file: the column naming the images
    label_column: str | None = None      # labels file: the column of the label(s)
    split_column: str | None = None      # labels file: a column giving each image's split
    label_pattern: str | None = None     # names: a regex whose first group, matched on a file name, is the class
    task: str = "auto"                   # single-label or multi-label; auto: multi-label where a file says so
    exclude: tuple[str, ...] = ()        # classes to leave out (their images are unlabelled)

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise ParameterError("layout", f"{self.layout}: choose one of {', '.join(LAYOUTS)}")
        if self.task not in TASKS:
            raise ParameterError("task", f"{self.task}: choose one of {', '.join(TASKS)}")
        if self.labels and self.layout not in ("auto", "labels-file"):
            raise ParameterError("labels", f"gives the labels-file layout, not {self.layout}")
        if self.label_pattern is not None and self.layout not in ("auto", "names"):
            raise ParameterError("label_pattern", f"gives the names layout, not {self.layout}")
        if self.labels and self.label_pattern is not None:
            raise ParameterError("label_pattern", "and --labels are two ways to give labels: choose one")
        if self.label_pattern is not None:
            self.compiled_pattern()

    @property
    def chosen(self) -> str:
        """The layout these options force, or auto."""
        if self.labels:
            return "labels-file"
        if self.label_pattern is not None:
            return "names"
        return self.layout

    def compiled_pattern(self):
        """The pattern compiled by the ``regex`` package (Python's syntax; unlike ``re``, a match
        can be given a time budget: see :data:`PATTERN_SECONDS`)."""
        import regex

        try:
            rx = regex.compile(self.label_pattern)
        except (regex.error, RecursionError, OverflowError) as exc:
            raise ParameterError("label_pattern", f"{self.label_pattern!r} is not a regular expression ({exc})") from None
        if rx.groups < 1:
            raise ParameterError("label_pattern", f"{self.label_pattern!r} has no group: put the class in "
                                                  f"parentheses, e.g. '^(.+)_\\d+\\.jpg$'")
        return rx


def read_folder(root, options: LayoutOptions | None = None) -> ImageFolder:
    """Every image under ``root`` with its label(s) and, where the layout gives it, its split."""
    options = options or LayoutOptions()
    options.check()
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder")
    try:  # (its path goes into every file the project writes about it: code sets, runs, reports)
        str(root.resolve()).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(root.resolve()).decode("utf-8", "backslashreplace")
        raise UserError(f"the data folder's path '{shown}' is not valid UTF-8 (named in another encoding, such as "
                        f"Latin-1); rename it in UTF-8") from None
    if options.chosen != "auto":
        return _one_line_names(READERS[options.chosen](root, options))
    tables, rejected, index = _labels_tables(root, options)
    try:
        layout = _detect(root, [t.path for t in tables])
        if layout == "labels-file":  # the table and the walk of the folder already made: not twice
            return _one_line_names(_labels_file(root, options, tables[0], index))
        return _one_line_names(READERS[layout](root, options))
    except UserError as exc:  # say why a table beside the images was not taken for their labels
        if not rejected:
            raise
        raise UserError(f"{exc}; {rejected[0][0]} was not read as a labels file: {rejected[0][1]}") from None


def breaks_line(name: str) -> bool:
    """Whether a name holds what some reader takes for a line break: a control character (C0, C1
    such as U+0085, DEL) or a Unicode line or paragraph separator (U+2028, U+2029). The one rule
    for every name the project writes one per line (class names, labels files)."""
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name)


def _one_line_names(ds: ImageFolder) -> ImageFolder:
    """Class names go one per line into exported ``labels.txt`` files: a name holding a line break
    (or another control character) would shift every name after it, so it is refused here."""
    for name in ds.class_names:
        if breaks_line(name):
            raise UserError(f"the class name {name!r} holds a line break or another control character; rename it "
                            f"(class names are written one per line in exported labels.txt files)")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # (a folder named in another encoding, read with surrogate escapes)
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UserError(f"the class name '{shown}' is not valid UTF-8 (a folder or label named in another "
                            f"encoding, such as Latin-1); rename it in UTF-8 (code sets and reports store names "
                            f"as UTF-8)") from None
    return ds


# ------------------------------------------------------------------ detection

def _top_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _no_linked_folders(dirs: list[Path], root: Path) -> None:
    """Split folders, and the class folders in them, are read by one walk of the data folder, which
    does not follow links to folders (one could loop, or lead out of the data folder): such a link
    is refused in one line, not counted as a folder whose images are never read. (Class folders
    of the class-folders layout are each walked on their own: a link there is followed.)"""
    linked = [p for p in dirs if p.is_symlink()]
    if linked:
        raise UserError(f"{linked[0]} is a link to a folder ({os.readlink(linked[0])}); split folders and the "
                        f"class folders in them are not followed through links (one could loop or lead out of "
                        f"{root}): copy the folder, or link its files one by one"
                        + (f" ({len(linked) - 1} more such link(s))" if len(linked) > 1 else ""))


def _detect(root: Path, tables: list[Path]) -> str:
    if len(tables) > 1:
        raise UserError(f"{root} holds {len(tables)} table files that name its images ("
                        f"{', '.join(t.name for t in tables)}); say which holds the labels with --labels FILE")
    if tables:
        return "labels-file"
    dirs = _top_dirs(root)
    splits = [d for d in dirs if d.name.lower() in _SPLIT_OF_WORD]
    if splits:
        others = [d for d in dirs if d.name.lower() not in _SPLIT_OF_WORD]
        if others:
            raise UserError(f"{root} mixes split folders ({', '.join(d.name + '/' for d in splits)}) and class folders "
                            f"({', '.join(d.name + '/' for d in others[:5])}); move them apart, or pass --layout "
                            f"folders to read every top folder as a class")
        return "split-folders"
    if not dirs and next(iter(_images_under(root, recursive=False)), None):
        raise UserError(f"{root} holds images but no class folders and no labels file: give the labels with "
                        f"--labels FILE or --label-pattern REGEX, or pass --layout unlabelled to compute their codes "
                        f"without labels")
    return "folders"


def _labels_tables(root: Path, options: LayoutOptions) -> tuple[list, list[tuple[str, str]], _ImageIndex | None]:
    """The table files at the top of ``root`` whose rows name images under it (read), the other
    table files there with the reason each is not a labels file, and the index of the folder's
    images if one was needed to tell."""
    found, rejected, index = [], [], None
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in TABLE_EXTENSIONS and not p.name.startswith("."):
            try:
                table = _read_table(p)
                columns = _columns(table, options, p)
            except UserError as exc:
                rejected.append((p.name, str(exc).split(": ", 1)[-1]))
                continue
            names = [row[columns.image] for row in table.rows[:200] if columns.image < len(row)]
            index = index or _ImageIndex(root)
            if any(index.find(n, strict=False) for n in names):
                found.append(table)
            else:
                rejected.append((p.name, "its rows name none of the images"))
    return found, rejected, index


# ------------------------------------------------------------------ the image files

def _images_under(folder: Path, recursive: bool = True):
    """Relative posix paths of the image files under ``folder`` (dot files and folders skipped),
    one at a time: for "are there any" questions, which stop at the first."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        for fn in sorted(filenames):
            if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                yield fn if rel_dir == "." else f"{rel_dir}/{fn}"


def _folder(root: Path, paths: list[str], labels, class_names, **fields) -> ImageFolder:
    return ImageFolder(root, paths, np.asarray(labels, np.int32), list(class_names), fingerprints(root, paths),
                       **fields)


class _ImageIndex:
    """Finds the image a labels file means: a path relative to the data folder, a bare file
    name anywhere under it, or an id without extension."""

    def __init__(self, root: Path):
        self.root = root
        self.paths, self.skipped, self.unnamable = walk_images(root)
        self.exact = set(self.paths)
        self.by_name, self.by_stem = defaultdict(list), defaultdict(list)
        for p in self.paths:
            name = p.rsplit("/", 1)[-1]
            self.by_name[name].append(p)
            self.by_stem[name.rsplit(".", 1)[0]].append(p)
        # an absolute path may name the folder as given (through a link) or as it really is
        self.roots = (os.path.abspath(root), str(root.resolve()))

    def find(self, name: str, strict: bool = True) -> str | None:
        """The relative path of the image ``name`` means, None if none; two matches: an error
        naming both (``strict``) or None."""
        v = name.strip().replace("\\", "/")
        if os.path.isabs(v):
            inside = [rel for r, w in zip(self.roots, (os.path.abspath(v), os.path.realpath(v)))
                      for rel in [os.path.relpath(w, r).replace(os.sep, "/")] if not rel.startswith("../")]
            v = inside[0] if inside else v
        while v.startswith("./"):
            v = v[2:]
        if v in self.exact:
            return v
        base = v.rsplit("/", 1)[-1]
        has_ext = base.lower().endswith(IMAGE_EXTENSIONS)
        pool = self.by_name.get(base, []) if has_ext else self.by_stem.get(base, [])
        if "/" in v:  # a path: keep the files whose path ends with it (without extension for an id)
            named = (lambda p: p) if has_ext else (lambda p: p.rsplit(".", 1)[0])
            pool = [p for p in pool if named(p) == v or named(p).endswith("/" + v)]
        if len(pool) == 1:
            return pool[0]
        if len(pool) > 1 and strict:
            raise UserError(f"the image name {name!r} matches {len(pool)} files: {pool[0]} and {pool[1]}; name it by "
                            f"its path relative to {self.root}")
        return None


# ------------------------------------------------------------------ class folders and split folders

def _split_folders(root: Path, options: LayoutOptions) -> ImageFolder:
    if options.task == "multi-label":
        raise ParameterError("task", "multi-label needs a labels file (split folders give one class per image)")
    dirs = _top_dirs(root)
    by_split: dict[int, list[Path]] = defaultdict(list)
    others = []
    for d in dirs:
        (by_split[_SPLIT_OF_WORD[d.name.lower()]] if d.name.lower() in _SPLIT_OF_WORD else others).append(d)
    if others:
        raise UserError(f"{root} mixes split folders ({', '.join(d.name + '/' for d in dirs if d not in others)}) "
                        f"and other folders ({', '.join(d.name + '/' for d in others[:5])}); split folders hold "
                        f"nothing else beside them")
    for s, ds_ in by_split.items():
        if len(ds_) > 1:
            raise UserError(f"{root} has {len(ds_)} {('training', 'validation', 'test')[s]} folders "
                            f"({', '.join(d.name + '/' for d in ds_)}); keep one")
    if TRAIN not in by_split:
        raise UserError(f"{root} has split folders ({', '.join(d.name + '/' for d in dirs)}) but no training folder "
                        f"(one of {', '.join(SPLIT_WORDS[TRAIN][:4])})")
    folders = {s: d[0] for s, d in by_split.items()}
    _no_linked_folders(dirs, root)
    for d in folders.values():
        _no_linked_folders(_top_dirs(d), root)
    for s, d in folders.items():
        loose = next(iter(_images_under(d, recursive=False)), None)
        if loose is not None:
            raise UserError(f"{d} holds images directly ({loose}), not class folders; give their labels with "
                            f"--labels FILE or --label-pattern REGEX")
    classes_of = {s: {c.name for c in _top_dirs(d) if c.name not in options.exclude and any(_images_under(c))}
                  for s, d in folders.items()}
    train_classes = classes_of[TRAIN]
    for s in (VAL, TEST):
        extra = sorted(classes_of.get(s, set()) - train_classes)
        if extra:
            raise UserError(f"class(es) {', '.join(extra)} of {folders[s].name}/ have no images in "
                            f"{folders[TRAIN].name}/: a classifier cannot learn a class it never sees")
    names = sorted(train_classes)
    if len(names) < 2:
        raise UserError(f"{folders[TRAIN]} has {len(names)} class folder(s) with images; a classifier needs at least two")
    label_of = {n: i for i, n in enumerate(names)}
    all_paths, ignored, unnamable = walk_images(root)
    paths, labels, split = [], [], []
    for p in all_paths:
        parts = p.split("/")
        s = _SPLIT_OF_WORD.get(parts[0].lower())
        if len(parts) >= 3 and parts[1] in label_of:
            paths.append(p)
            labels.append(label_of[parts[1]])
            split.append(s if s != TRAIN or len(folders) == 3 else
                         DRAW_VAL if TEST in folders else DRAW_TEST if VAL in folders else DRAW)
        elif len(parts) >= 3 and parts[1] in options.exclude:
            paths.append(p)
            labels.append(-1)
            split.append(UNLABELLED)
    notes = []
    if TEST in folders:
        absent = sorted(set(names) - classes_of[TEST])
        if absent:
            notes.append(f"{len(absent)} class(es) have no test images in {folders[TEST].name}/: {', '.join(absent[:5])}"
                         + (" ..." if len(absent) > 5 else ""))
    named = " ".join(folders[s].name + "/" for s in sorted(folders))
    how = ("validation from " + folders[VAL].name + "/" if VAL in folders
           else "validation drawn from " + folders[TRAIN].name + "/")
    if TEST not in folders:
        how += "; no test folder: test images drawn from " + folders[TRAIN].name + "/"
    return dataclasses.replace(
        _folder(root, paths, labels, names, skipped=dict(ignored), unnamable=tuple(unnamable)),
        split=np.asarray(split, np.int8), description=f"split folders {named} ({how}; {len(names)} classes)",
        notes=tuple(notes),
        source={"layout": "split-folders", "folders": {("train", "val", "test")[s]: d.name for s, d in folders.items()}})


# ------------------------------------------------------------------ labels files

@dataclasses.dataclass
class _Table:
    path: Path
    header: list[str]
    rows: list[list[str]]
    delimiter: str


@dataclasses.dataclass
class _Columns:
    image: int
    label: int | None          # None: one 0/1 column per label (``onehot``)
    split: int | None
    onehot: list[int]


def _read_table(path: Path) -> _Table:
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise UserError(f"labels file {path} is larger than {MAX_TABLE_BYTES >> 20} MB")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"labels file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"labels file {path} cannot be read ({exc.strerror or exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"labels file {path} is empty")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff(text, lines[0])
    try:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise UserError(f"labels file {path} is not a CSV table ({exc})") from None
    header = [h.strip() for h in rows[0]]
    return _Table(path, header, [[c.strip() for c in r] for r in rows[1:]], delimiter)


def _sniff(text: str, header: str) -> str:
    """The delimiter: csv's sniffer on the first lines, restricted to tab, comma and semicolon;
    if it cannot tell, the one of these the header holds most of. Its sample is at most
    :data:`SNIFF_CHARS` characters: its time grows with the square of the sample's length on
    crafted text (64 KB of quotes and commas took 15-55 s)."""
    try:
        return csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters="\t,;").delimiter
    except csv.Error:
        return max("\t,;", key=header.count) if any(d in header for d in "\t,;") else ","


def _pick(header: list[str], wanted: str | None, aliases: tuple[str, ...], flag: str, path: Path,
          exclude=()) -> int | None:
    lower = [h.lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.lower() in lower:
            return lower.index(wanted.lower())
        raise UserError(f"labels file {path} has no column {wanted!r} ({flag}); its columns: {', '.join(header)}")
    for a in aliases:
        if a in lower and lower.index(a) not in exclude:
            return lower.index(a)
    return None


def _columns(table: _Table, options: LayoutOptions, path: Path) -> _Columns:
    h = table.header
    image = _pick(h, options.image_column, IMAGE_COLUMNS, "--image-column", path)
    if image is None:
        raise UserError(f"labels file {path}: no column names the images (columns: {', '.join(h[:10])}); "
                        f"name it with --image-column (recognised: {', '.join(IMAGE_COLUMNS[:6])}, ...)")
    split = _pick(h, options.split_column, SPLIT_COLUMNS, "--split-column", path, exclude=(image,))
    label = _pick(h, options.label_column, LABEL_COLUMNS, "--label-column", path, exclude=(image,))
    onehot = []
    if label is None:
        rest = [i for i in range(len(h)) if i not in (image, split)]
        values = {c for r in table.rows for i in rest if i < len(r) for c in [r[i]]}
        if len(rest) >= 2 and values and values <= {"0", "1", "", "0.0", "1.0", "true", "false", "True", "False"}:
            onehot = rest
        else:
            raise UserError(f"labels file {path}: no column holds the labels (columns: {', '.join(h[:10])}); name it "
                            f"with --label-column (recognised: {', '.join(LABEL_COLUMNS[:8])}, ...)")
    return _Columns(image, label, split, onehot)


def escape_name(name: str) -> str:
    """A single-label class name as a cell: a backslash before each ``|``, ``;`` or ``,`` it holds,
    so that the cell reads back as one class of a single-label set (not as several labels)."""
    return re.sub(r"([|;,])", r"\\\1", name)


def _unescape(text: str) -> str:
    return re.sub(r"\\([|;,])", r"\1", text)


def _has_separator(cell: str) -> bool:
    """Whether a cell joins several labels: it holds a separator no backslash escapes."""
    return bool(re.search(r"(?<!\\)[|;,]", cell))


def _split_labels(cell: str, multi: bool) -> list[str]:
    if not multi:
        return [_unescape(cell)]
    for sep in MULTI_SEPARATORS:
        if re.search(rf"(?<!\\){re.escape(sep)}", cell):
            return [_unescape(x.strip()) for x in re.split(rf"(?<!\\){re.escape(sep)}", cell) if x.strip()]
    return [_unescape(cell)] if cell else []


def _labels_file(root: Path, options: LayoutOptions, table: _Table | None = None,
                 index: _ImageIndex | None = None) -> ImageFolder:
    """The labels-file layout; ``table`` and ``index``: the table and the folder's index when
    detection has made them already."""
    if table is None and options.labels:
        path = Path(options.labels)
        if not path.is_file():
            raise UserError(f"labels file {path} does not exist")
        table = _read_table(path)
    elif table is None:
        tables, _, index = _labels_tables(root, options)
        if not tables:
            candidates = [p.name for p in sorted(root.iterdir()) if p.suffix.lower() in TABLE_EXTENSIONS]
            raise UserError(f"{root} holds no table file whose rows name its images"
                            + (f" (read: {', '.join(candidates)})" if candidates else "")
                            + "; give one with --labels FILE")
        table = tables[0]
    path = table.path
    if not table.rows:
        raise UserError(f"labels file {path} has a header and no rows")
    cols = _columns(table, options, path)
    index = index or _ImageIndex(root)
    all_paths, ignored, unnamable = index.paths, index.skipped, index.unnamable
    width = len(table.header)
    found: dict[str, list[str]] = {}
    split_of: dict[str, int] = {}
    first_line: dict[str, int] = {}
    missing = []
    repeated = False
    if cols.label is not None and options.task != "single-label":
        cells = [r[cols.label] for r in table.rows if cols.label < len(r)]
        multi = options.task == "multi-label" or any(_has_separator(c) for c in cells)
    else:
        multi = cols.label is None
    if cols.label is None and options.task == "single-label":
        raise ParameterError("task", f"single-label, but {path} has one 0/1 column per label (multi-label)")
    for n, row in enumerate(table.rows, start=2):
        row = row + [""] * (width - len(row))
        name = row[cols.image]
        if not name:
            raise UserError(f"labels file {path}, line {n}: the image cell ({table.header[cols.image]}) is empty")
        if cols.label is not None:
            cell = row[cols.label]
            if not cell:
                raise UserError(f"labels file {path}, line {n}: the label cell ({table.header[cols.label]}) of "
                                f"{name} is empty")
            labels = _split_labels(cell, multi)
        else:
            labels = [table.header[i] for i in cols.onehot if row[i].lower() in ("1", "1.0", "true")]
        labels = [x for x in labels if x not in options.exclude]
        rel = index.find(name)
        if rel is None:
            missing.append(name)
            continue
        if cols.split is not None:
            word = row[cols.split].lower()
            if word not in _SPLIT_OF_WORD:
                raise UserError(f"labels file {path}, line {n}: split {row[cols.split]!r} of {name} is not one of "
                                f"train, val, test (or their synonyms)")
            if rel in split_of and split_of[rel] != _SPLIT_OF_WORD[word]:
                raise UserError(f"labels file {path} puts {name} in two splits (lines {first_line[rel]} and {n})")
            split_of[rel] = _SPLIT_OF_WORD[word]
        if rel in found:
            if sorted(found[rel]) != sorted(set(found[rel]) | set(labels)) and not multi:
                raise UserError(f"labels file {path} gives {name} two labels: {found[rel][0]!r} (line "
                                f"{first_line[rel]}) and {labels[0]!r} (line {n}); fix one, or pass --task multi-label "
                                f"if images have several labels")
            repeated = True
            found[rel] = sorted(set(found[rel]) | set(labels))
        else:
            found[rel] = labels
            first_line[rel] = n
    if not found:
        raise UserError(f"labels file {path} names none of the images under {root} ({len(table.rows)} rows, e.g. "
                        f"{table.rows[0][cols.image]!r}); names may be paths relative to {root}, file names or ids")
    names = sorted({x for v in found.values() for x in v})
    if not multi and len(names) < 2:
        raise UserError(f"labels file {path} gives the images {len(names)} class(es); a classifier needs at least two")
    listed_names = {x for r in table.rows for x in (
        _split_labels(r[cols.label], multi) if cols.label is not None and cols.label < len(r) else [])}
    absent = sorted(listed_names - set(names) - set(options.exclude))
    label_of = {n: i for i, n in enumerate(names)}
    paths = all_paths
    labels = np.full(len(paths), -1, np.int32)
    targets = np.zeros((len(paths), len(names)), np.uint8) if multi else None
    split = np.full(len(paths), UNLABELLED, np.int8)
    for i, p in enumerate(paths):
        if p in found and (found[p] or multi):
            ls = [label_of[x] for x in found[p]]
            if multi:
                targets[i, ls] = 1
            else:
                labels[i] = ls[0]
            split[i] = split_of.get(p, DRAW) if cols.split is not None else DRAW
    if multi:  # each image stratified by its rarest label (an image with none: a stratum of its own)
        counts = targets.sum(axis=0)
        for i in np.flatnonzero(split != UNLABELLED):
            ls = np.flatnonzero(targets[i])
            labels[i] = ls[np.argmin(counts[ls])] if len(ls) else len(names)
    unlabelled = int((split == UNLABELLED).sum())
    col_text = (f"image column {table.header[cols.image]!r}, "
                + (f"label column {table.header[cols.label]!r}" if cols.label is not None
                   else f"{len(cols.onehot)} 0/1 label columns")
                + (f", split column {table.header[cols.split]!r}" if cols.split is not None else "; split drawn"))
    where = path.name if path.parent.resolve() == root.resolve() else str(path)
    description = (f"labels file {where} ({col_text}; {len(names)} {'labels, multi-label' if multi else 'classes'}; "
                   f"{len(found)} labelled, {unlabelled} unlabelled image(s))")
    notes = []
    if absent:
        notes.append(f"{len(absent)} label(s) of {path.name} have none of their images here and are not classes: "
                     + ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))
    folders = [d.name for d in _top_dirs(root)]
    if folders and not options.labels:
        notes.append(f"the folders beside {path.name} ({', '.join(f + '/' for f in folders[:4])}) are just folders: "
                     f"the labels file decides")
    if repeated and multi and cols.label is not None:
        notes.append("images listed on several rows take the labels of all of them")
    source = {"layout": "labels-file", "labels_file": str(path.resolve()), "image_column": table.header[cols.image],
              "label_column": table.header[cols.label] if cols.label is not None else None,
              "split_column": table.header[cols.split] if cols.split is not None else None,
              "task": "multi-label" if multi else "single-label"}
    return dataclasses.replace(_folder(root, paths, labels, names, skipped=dict(ignored), unnamable=tuple(unnamable)),
                               split=split, targets=targets, missing=tuple(missing), description=description,
                               notes=tuple(notes), source=source)


# ------------------------------------------------------------------ names and unlabelled

def _names(root: Path, options: LayoutOptions) -> ImageFolder:
    if options.label_pattern is None:
        raise ParameterError("label_pattern", "is needed by the names layout (e.g. '^(.+)_\\d+\\.jpg$')")
    if options.task == "multi-label":
        raise ParameterError("task", "multi-label needs a labels file (a file name gives one class)")
    rx = options.compiled_pattern()
    paths, ignored, unnamable = walk_images(root)
    classes = []
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        try:  # a pattern that backtracks without end (e.g. ^(a|aa)+$) is stopped, not waited for
            m = rx.search(name, timeout=PATTERN_SECONDS)
        except TimeoutError:
            raise UserError(f"--label-pattern {options.label_pattern!r} takes more than {PATTERN_SECONDS:g} s on the "
                            f"file name {name[:60]!r}: simplify it (repeats inside repeats, such as (a|aa)+, can "
                            f"backtrack without end)") from None
        c = m.group(1) if m and m.group(1) else None
        classes.append(c if c not in options.exclude else None)
    names = sorted({c for c in classes if c is not None})
    if not names:
        raise UserError(f"--label-pattern {options.label_pattern!r} matches none of the {len(paths)} file names under "
                        f"{root} (e.g. {paths[0].rsplit('/', 1)[-1] if paths else 'no images'})")
    if len(names) < 2:
        raise UserError(f"--label-pattern {options.label_pattern!r} gives one class ({names[0]}); a classifier needs "
                        f"at least two")
    label_of = {n: i for i, n in enumerate(names)}
    labels = [label_of[c] if c is not None else -1 for c in classes]
    ds = _folder(root, paths, labels, names, skipped=dict(ignored), unnamable=tuple(unnamable))
    unmatched = int((ds.labels < 0).sum())
    return dataclasses.replace(ds, split=np.where(ds.labels >= 0, DRAW, UNLABELLED).astype(np.int8),
                               description=(f"labels in file names, pattern {options.label_pattern!r} ({len(names)} "
                                            f"classes; {unmatched} file(s) do not match: unlabelled)"),
                               source={"layout": "names", "label_pattern": options.label_pattern})


def _unlabelled(root: Path) -> ImageFolder:
    paths, ignored, unnamable = walk_images(root)
    if not paths:
        raise UserError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return dataclasses.replace(
        _folder(root, paths, np.full(len(paths), -1), [], skipped=dict(ignored), unnamable=tuple(unnamable)),
        split=np.full(len(paths), UNLABELLED, np.int8), source={"layout": "unlabelled"},
        description=f"unlabelled images ({len(paths)}; codes only: label them to train)")


def _folders(root: Path, options: LayoutOptions) -> ImageFolder:
    if options.task == "multi-label":
        raise ParameterError("task", "multi-label needs a labels file (folders give one class per image)")
    ds = scan(root, options.exclude)
    ds = dataclasses.replace(ds, description=f"class folders ({len(ds.class_names)} classes)", source={"layout": "folders"})
    loose = list(_images_under(root, recursive=False))
    if not loose:
        return ds
    labels = np.concatenate([ds.labels, np.full(len(loose), -1, np.int32)])
    return dataclasses.replace(ds, notes=((f"{len(loose)} image(s) at the top of {root.name}/ are in no class folder: "
                                           f"computed, unlabelled (e.g. {loose[0]})"),),
                               paths=PathList.concat([ds.paths, PathList.of(loose)]), labels=labels,
                               fingerprints=np.concatenate([ds.fingerprints, fingerprints(root, loose)]),
                               split=np.where(labels >= 0, DRAW, UNLABELLED).astype(np.int8))


READERS = {"folders": _folders, "split-folders": _split_folders, "labels-file": _labels_file, "names": _names,
           "unlabelled": lambda root, options: _unlabelled(root)}
