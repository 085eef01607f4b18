"""A labels file as the labelling app edits it: one image's labels set or removed at a time, the
file written whole (temporary file, fsync, rename) in the form it was found in.

The table keeps its delimiter, columns, column order and the rows of images it does not touch;
an image named by a bare file name or an id keeps that name. A new image gets a row naming it by
its path relative to the data folder; a table with a split column gives it ``train``, ``val`` or
``test`` by a hash of that path (70/15/15, the same every time), so labels added later never move
an image from one split to another. Multi-label cells are joined by the separator the file
already uses (``|`` in a new file); a table of 0/1 columns gets a column for a new label.

Images a person excluded (not worth a label: broken, off-topic) have no row, so every command
leaves them out as unlabelled, and are listed one per line in ``<labels stem>.excluded.txt``
beside the labels file, so the app does not offer them again.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline._faults import fault_point
from pipeline._files import NAME_MAX, durable_replace, fit_name, temporary_beside
from pipeline.data._layouts import (
    MULTI_SEPARATORS,
    LayoutOptions,
    _columns,
    _has_separator,
    _ImageIndex,
    _read_table,
    _split_labels,
    _Table,
    breaks_line,
    escape_name,
)
from pipeline.errors import UserError

NEW_HEADER = ["path", "label"]
MAX_NAME = 200


def check_class_name(name: str, multi: bool = False) -> str:
    """``name`` stripped, if it can be a class: not empty, on one line (no control character, no
    Unicode line or paragraph separator), at most 200 characters (multi-label: without the
    separators a cell joins labels with)."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("a class name cannot be empty")
    name = name.strip()
    if breaks_line(name) or len(name) > MAX_NAME:
        raise UserError(f"a class name is one line of at most {MAX_NAME} characters (not {name[:40]!r})")
    if multi and (any(s in name for s in MULTI_SEPARATORS) or name.endswith("\\")):
        raise UserError(f"a label of a multi-label set cannot hold {' '.join(MULTI_SEPARATORS)} or end in a "
                        f"backslash (not {name!r})")
    return name


def _beside(labels_path: Path, suffix: str) -> Path:
    """``<labels stem><suffix>`` beside the labels file, within the file system's 255 bytes (a
    long stem is cut, with a digest of the whole, so that a labels file of any name can have it)."""
    labels_path = Path(labels_path)
    return labels_path.with_name(fit_name(labels_path.stem, NAME_MAX - len(suffix.encode())) + suffix)


def labels_file_for(layout: str | None, data, given=None) -> Path | None:
    """The labels file a code set's decisions go to (the labelling app) and its exclusions come
    from: ``given`` (--labels), else the one its layout (the code set's ``layout`` attribute, JSON)
    was read from, else DATA/labels.csv (None without a data folder)."""
    import json

    if given:
        return Path(given)
    try:
        source = json.loads(layout or "{}")
    except ValueError:
        source = {}
    if isinstance(source, dict) and source.get("layout") == "labels-file" and source.get("labels_file"):
        return Path(source["labels_file"])
    return Path(data) / "labels.csv" if data is not None else None


def excluded_file(labels_path: Path) -> Path:
    return _beside(labels_path, ".excluded.txt")


def excluded_images(labels_path: Path) -> set[str]:
    """The images a person excluded in the labelling app (``<labels stem>.excluded.txt``), by
    their paths relative to the data folder; every tool that offers images to label leaves them out."""
    f = excluded_file(labels_path)
    if not f.is_file():
        return set()
    try:
        lines = f.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
        return {_unquoted(ln) for ln in lines if ln.strip()}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{f} cannot be read as a list of images ({exc})") from None


def _quoted(rel: str) -> str:
    """A path as one line of the excluded list: as it is, or as a JSON string where it holds a
    line break (or starts with a quote, or with or ends in white space), so that it reads back
    the same."""
    import json

    if rel.startswith('"') or rel != rel.strip() or breaks_line(rel):
        return json.dumps(rel)
    return rel


def _unquoted(line: str) -> str:
    import json

    line = line.rstrip("\r")
    if line.startswith('"'):
        try:
            value = json.loads(line)
            if isinstance(value, str):
                return value
        except ValueError:
            pass
    return line.strip()


def journal_file(labels_path: Path) -> Path:
    return _beside(labels_path, ".journal.jsonl")


def file_state(path: Path) -> tuple:
    """What says a file changed: its size, modification time and, under 16 MB, a digest of its
    bytes (an edit of the same size within the clock's resolution); () where there is no file."""
    try:
        st = os.stat(path)
        digest = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).digest() if st.st_size < 1 << 24 else b""
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror})") from None
    return st.st_size, st.st_mtime_ns, digest


class Journal:
    """``<labels stem>.journal.jsonl`` beside a labels file: every decision of the labelling app
    appended as one JSON line (time, decision id, image, labels and exclusion before and after,
    which tab), flushed to disk before the decision is answered, so that :func:`replay` can
    rebuild the labels file from it."""

    def __init__(self, labels_path: Path):
        self.path = journal_file(labels_path)

    def append(self, entry: dict) -> None:
        import json

        line = json.dumps(entry, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def entries(self) -> tuple[list[dict], int]:
        """The entries in order, and how many lines were damaged (skipped)."""
        import json

        if not self.path.is_file():
            return [], 0
        out, damaged = [], 0
        with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    ok = (isinstance(e, dict) and isinstance(e.get("image"), str)
                          and isinstance(e.get("after"), list) and all(isinstance(x, str) for x in e["after"])
                          and isinstance(e.get("excluded", False), bool))
                except (ValueError, RecursionError):
                    ok = False
                if ok:
                    out.append(e)
                else:
                    damaged += 1
        return out, damaged


def replay(labels_path, root, options: LayoutOptions | None = None) -> tuple[int, int]:
    """Apply every decision of the journal, in order, to the labels file as it is (each image
    ends with what its last decision gave it) and write it whole. Returns (decisions applied,
    damaged lines skipped)."""
    entries, damaged = Journal(labels_path).entries()
    multi = any(len(e["after"]) > 1 for e in entries)
    table = LabelsTable(labels_path, root, options, multi=multi)
    applied = 0
    for e in entries:
        try:
            table.set(e["image"], e["after"], excluded=bool(e.get("excluded", False)))
            applied += 1
        except UserError:
            damaged += 1  # (a name no file may hold: as a damaged line)
    table.write()
    return applied, damaged


def _split_word(rel: str) -> str:
    h = int.from_bytes(hashlib.blake2b(rel.encode(), digest_size=8).digest(), "big") / 2**64
    return "train" if h < 0.70 else "val" if h < 0.85 else "test"


class LabelsTable:
    """The labels file ``path`` of the images under ``root`` (read as stage 1 reads it, with
    ``options``); ``seed``: the labels to start a new file with when there is none yet (those
    the folder's layout gives), ``multi``: whether a new file is multi-label."""

    def __init__(self, path, root, options: LayoutOptions | None = None, seed: dict | None = None,
                 multi: bool = False):
        self.path, self.root = Path(path), Path(root)
        options = options or LayoutOptions()
        self.index = _ImageIndex(self.root)
        if self.path.is_file():
            self.table = _read_table(self.path)
            cols = _columns(self.table, options, self.path)
            self.image_col, self.label_col, self.split_col, self.onehot = cols.image, cols.label, cols.split, cols.onehot
            cells = [r[cols.label] for r in self.table.rows if cols.label is not None and cols.label < len(r)]
            self.multi = (cols.label is None or options.task == "multi-label"
                          or (options.task != "single-label" and any(_has_separator(c) for c in cells)))
            self.separator = next((s for s in MULTI_SEPARATORS if any(s in c for c in cells)), "|")
        else:
            self.table = _Table(self.path, list(NEW_HEADER), [], ",")
            self.image_col, self.label_col, self.split_col, self.onehot = 0, 1, None, []
            self.multi, self.separator = multi, "|"
            for rel, labels in sorted((seed or {}).items()):
                if labels or multi:
                    self.table.rows.append([rel, self._cell(labels)])
        width = len(self.table.header)
        self.table.rows = [r + [""] * (width - len(r)) for r in self.table.rows]
        self.excluded = self._read_excluded()

    # ---------------------------------------------------------------- reading

    def _rows_of(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for i, row in enumerate(self.table.rows):
            rel = self.index.find(row[self.image_col], strict=False)
            if rel is not None:
                found.setdefault(rel, []).append(i)
        return found

    def labels(self) -> dict[str, list[str]]:
        """Every image the file labels (relative path) with its labels."""
        out: dict[str, list[str]] = {}
        for rel, rows in self._rows_of().items():
            got: list[str] = []
            for i in rows:
                row = self.table.rows[i]
                if self.label_col is not None:
                    got += _split_labels(row[self.label_col], self.multi) if row[self.label_col] else []
                else:
                    got += [self.table.header[c] for c in self.onehot if row[c].lower() in ("1", "1.0", "true")]
            out[rel] = sorted(set(got)) if self.multi else got[:1]
        return out

    def _read_excluded(self) -> set[str]:
        return excluded_images(self.path)

    # ---------------------------------------------------------------- editing

    def _cell(self, labels) -> str:
        # (a single-label name holding a separator is escaped: it reads back as one class)
        return self.separator.join(labels) if self.multi else (escape_name(labels[0]) if labels else "")

    def set(self, rel: str, labels: list[str] | None, excluded: bool = False) -> None:
        """Give image ``rel`` these labels (None or []: no row, unlabelled), in memory."""
        labels = [check_class_name(x, self.multi) for x in (labels or [])]
        if not self.multi and len(labels) > 1:
            raise UserError(f"{rel}: one class per image in a single-label set (not {len(labels)})")
        rows = self._rows_of().get(rel, [])
        if labels:
            for name in labels:  # a 0/1 table gets a column for a label it does not have
                if self.label_col is None and name not in self.table.header:
                    self.table.header.append(name)
                    self.onehot.append(len(self.table.header) - 1)
                    for r in self.table.rows:
                        r.append("0")
            if rows:
                row = self.table.rows[rows[0]]
            else:
                row = [""] * len(self.table.header)
                row[self.image_col] = rel
                self.index.exact.add(rel)  # an image added since the folder was read
                if self.split_col is not None:
                    row[self.split_col] = _split_word(rel)
                self.table.rows.append(row)
            if self.label_col is not None:
                row[self.label_col] = self._cell(labels)
            else:
                for c in self.onehot:
                    row[c] = "1" if self.table.header[c] in labels else "0"
            drop = set(rows[1:])
        else:
            drop = set(rows)
        self.table.rows = [r for i, r in enumerate(self.table.rows) if i not in drop]
        (self.excluded.add if excluded else self.excluded.discard)(rel)

    # ---------------------------------------------------------------- writing

    def write(self) -> None:
        """The labels file, then the list of excluded images, each whole or unchanged."""
        import csv

        def whole(dst: Path, fill) -> None:
            tmp = temporary_beside(dst)
            try:
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    fill(fh)
                fault_point("labels-tmp-written")
                durable_replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)

        def table(fh):
            w = csv.writer(fh, delimiter=self.table.delimiter, lineterminator="\n")
            w.writerow(self.table.header)
            w.writerows(self.table.rows)

        if not self.path.parent.is_dir():  # (moved or deleted: never made again under its old name)
            raise UserError(f"{self.path.parent} is gone (moved or deleted?): {self.path.name} cannot be written there")
        whole(self.path, table)
        f = excluded_file(self.path)
        if self.excluded or f.exists():
            whole(f, lambda fh: fh.write("".join(f"{_quoted(rel)}\n" for rel in sorted(self.excluded))))
