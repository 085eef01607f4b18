"""Top-k predictions of an exported model for one image or a folder of images."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from pipeline._files import durable_replace, temporary_beside
from pipeline.backbones import check_batch_memory
from pipeline.codes import choose_runtime, setting
from pipeline.codes import batches_of, make_mapper, read_batches
from pipeline.data import IMAGE_EXTENSIONS
from pipeline.deploy._models import export_head_run, load_model
from pipeline.errors import ParameterError, UserError
from pipeline.heads import read_thresholds
from pipeline.reports import to_cell

logger = logging.getLogger(__name__)


def find_images(target: Path) -> tuple[Path, list[str]]:
    """(root, relative paths) of the image file or of all images under the folder."""
    if target.is_file():
        return target.parent, [target.name]
    if not target.is_dir():
        raise UserError(f"{target}: no such image or folder")
    paths = sorted(p.relative_to(target).as_posix() for p in target.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise UserError(f"{target}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    return target, paths


def model_file(path) -> Path:
    """A .keras file as given, or a run folder's ``model.keras``; a head-on-codes run that has
    not been exported yet is exported first."""
    path = Path(path)
    if not path.is_dir():
        return path
    out = path / "model.keras"
    if not out.exists() and (path / "record.json").exists():  # fine-tuned and scratch runs always have one
        logger.info(f"exporting {path} first")
        export_head_run(path)
    if not out.exists():
        raise UserError(f"no model.keras in {path}: pass a .keras file or a run folder of "
                        f"train_head.py, finetune.py or scratch.py")
    return out


def predict(model_path, target, top_k=5, batch_size=32, runtime="auto"):
    """Rows of (path, [(class name, probability), ...] top-k) for every readable image; a
    multi-label model: every label at or above its threshold, most probable first (``top_k``
    does not cut them).

    Unreadable images get a warning each and are left out; the others are still predicted.
    """
    if top_k < 1 or batch_size < 1:
        raise ParameterError("top_k" if top_k < 1 else "batch_size", "must be at least 1")
    runtime = choose_runtime(runtime)
    model, class_names, info = load_model(model_file(model_path))
    size = int(info["image_size"])
    check_batch_memory(batch_size, size, copies=2)  # two batches in flight
    root, paths = find_images(Path(target))
    k = min(top_k, len(class_names))
    thresholds = (read_thresholds(info.get("thresholds"), len(class_names), model_path)
                  if info.get("task") == "multi-label" else None)
    mapper = make_mapper(model, runtime=runtime, batch_size=batch_size, image_size=size,
                         model_name=f"classifier {info.get('kind')}", images=len(paths))
    rows, failures = [], []
    batches = read_batches(root, paths, batches_of(len(paths), batch_size), size, 4,
                           setting(info, "resize"))
    for batch, (proba,) in mapper.map_batches(batches, images=lambda b: b.images):
        failures += batch.failures
        if len(batch.images):
            for i, pr in zip(batch.indices[batch.ok], proba):
                top = np.argsort(-pr)[:k] if thresholds is None else [
                    j for j in np.argsort(-pr) if pr[j] >= thresholds[j]]
                rows.append((str(root / paths[i]), [(class_names[j], float(pr[j])) for j in top]))
    if not rows:  # nothing to show: the command cannot do what was asked
        p, reason = failures[0]
        raise UserError(f"{root / p}: not an image that can be read ({reason})" if len(paths) == 1 else
                        f"{target}: none of its {len(paths)} images could be read (e.g. {root / p}: {reason})")
    for p, reason in failures:
        logger.warning(f"warning: skipped {root / p}: {reason}")
    return rows


def format_rows(rows, limit: int = 20, more_in=None) -> str:
    """``<path>: <class> P%, ...`` per image, the first ``limit`` of them (a file name that is not
    UTF-8 shown with its odd bytes as ``\\xNN``)."""
    shown = lambda path: path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    lines = [shown(path) + ": " + (", ".join(f"{name} {100 * prob:.1f}%" for name, prob in top) or "no label above its threshold")
             for path, top in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... ({len(rows) - limit} more" + (f" in {more_in})" if more_in else ")"))
    return "\n".join(lines)


def write_csv(rows, out: Path) -> None:
    """One row per image: path, then class and probability of each of its top k."""
    top_k = max((len(top) for _, top in rows), default=0)
    out = Path(out)
    tmp = temporary_beside(out)  # whole or absent: written aside, then renamed
    try:
        # (a file name that is not UTF-8 is written back as its own bytes: the path names the same file)
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            w = csv.writer(fh)
            w.writerow(["path"] + [f"{kind}{i + 1}" for i in range(top_k) for kind in ("class", "prob")])
            for path, top in rows:
                w.writerow([to_cell(path)] + [v for name, p in top for v in (to_cell(name), f"{p:.6f}")])
        durable_replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
