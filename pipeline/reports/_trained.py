"""trained_on.csv: the images a run trained on (validation images included), so that a later
evaluation of the run, or a comparison with other runs, never counts one of them as a test image."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from pipeline.data import relative_inside
from pipeline.errors import UserError, one_line
from pipeline.reports._safe import from_cell, to_cell

TRAINED_ON = "trained_on.csv"
MAX_BYTES = 1 << 30


def paths_digest(paths) -> str:
    """A digest of a set of image paths (order does not matter): the record's ``train_digest``."""
    h = hashlib.blake2b(digest_size=8)
    for p in sorted(paths):
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def write_trained_on(run_dir: Path, paths) -> None:
    """One row per image the run's model learnt from, its path relative to the data folder."""
    with open(Path(run_dir) / TRAINED_ON, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(("path",))
        w.writerows((to_cell(p),) for p in paths)


def read_trained_on(run_dir: Path) -> set[str] | None:
    """The images a run trained on; None for a run made before runs listed them."""
    path = Path(run_dir) / TRAINED_ON
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_BYTES:
        raise UserError(f"{path} is larger than the training list of any run ({path.stat().st_size:,} bytes)")
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            rows = csv.reader(fh)
            if next(rows, None) != ["path"]:
                raise UserError(f"{path} is not a training list (its first line is not 'path')")
            out = set()
            for i, row in enumerate(rows, 2):
                if len(row) != 1:
                    raise UserError(f"{path}: line {i} is not one path")
                try:
                    out.add(relative_inside(from_cell(row[0])))
                except ValueError as exc:
                    raise UserError(f"{path}: line {i}: {one_line(exc)}") from None
            return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable training list ({one_line(exc)})") from None
