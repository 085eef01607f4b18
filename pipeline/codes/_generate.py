"""Stage 1: run every image once through a frozen conv base and cache its CNN codes in HDF5.

This module is the runner: read -> plan -> shelve -> compute -> commit, under one writer lock
per code set, each step handing frozen records to the next:
- read (:mod:`pipeline.data`): the folder's listing and labels, an :class:`~pipeline.data.ImageFolder`;
- plan (:mod:`pipeline.codes._plan`): decide each image's state once (cached, new, changed,
  removed, failed) and cut the new and changed ones into partitions with stable ids;
- shelve (:mod:`pipeline.codes._shelf`): the plan's listing moved to a temporary file while computing;
- compute (:mod:`pipeline.codes._engines` runs :mod:`pipeline.codes._worker`: reader
  :mod:`~pipeline.codes._reader` -> mapper :mod:`~pipeline.codes._runtimes` -> writer
  :mod:`~pipeline.codes._parts`), here or on a Ray cluster: one part file per partition and code set;
- commit (:mod:`pipeline.codes._commit`): a new index makes the kept rows and the new parts one code
  set, moved into place atomically; what it no longer refers to is deleted; many small parts
  are merged.
An interrupted run (Ctrl-C, kill -9) never damages a finished code set, and the next run takes
every part already written.

A code set: ``cache/<data>/<backbone>-<size>-<weights>/<layer>-<pooling>.h5`` with datasets
``codes`` (N, D), ``paths``, ``labels``, ``split``, ``fingerprints``, ``class_names``,
``failed_paths``/``failed_reasons`` and attributes that say how it was made; its parts in the
folder ``<layer>-<pooling>.parts/`` beside it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import h5py
import numpy as np

from pipeline._faults import fault_point
from pipeline._files import writable_folder
from pipeline.backbones import DEFAULT_BACKBONE, check_batch_memory
from pipeline.codes._commit import commit_all
from pipeline.codes._engines import compute
from pipeline.codes._format import parts_dir
from pipeline.codes._homes import claim_home
from pipeline.codes._locks import writer_lock
from pipeline.codes._plan import OutputPlan, Plan, make_plan
from pipeline.codes._runtimes import choose_runtime
from pipeline.codes._settings import CodeIdentity, ComputeOptions, StoredSplit, split_options
from pipeline.codes._shelf import shelved
from pipeline.codes._worker import WorkSpec, default_decode_threads
from pipeline.data import (
    IMAGE_EXTENSIONS,
    TEST,
    LayoutOptions,
    assign_split,
    describe_skipped,
    keep_stored_split,
    read_folder,
)
from pipeline.errors import USER_ERRNOS, Interrupted, UserError, check_seed, os_error_text, with_positionals

logger = logging.getLogger(__name__)

# Deferred on purpose: Pillow is imported inside the functions that use it, so that commands and
# workers that never need it start without loading it.


# generate_codes' parameters after ``exclude``: by keyword, or by position as calls made them once
LATER = ("split", "seed", "resplit", "progress", "stats")


def generate_codes(data, backbone=DEFAULT_BACKBONE, layers=None, poolings=None, weights="imagenet", image_size=None,
                   cache_dir="cache", exclude=(), *later, **options) -> list[Path]:
    """Compute (or complete) one cached code set per (layer, pooling); return their paths.

    ``layers`` (default: the backbone's final conv block) x ``poolings`` (default: avg) are the
    outputs of one pass. ``options`` are the other settings of the codes (:class:`CodeIdentity`:
    ``dtype``, ``precision``, ``tta``, ``resize``), how they are computed
    (:class:`ComputeOptions`: ``engine``, ``workers``, ``decode_threads``, ``runtime``,
    ``batch_size``, ``partition_size``, ``ray_address``, ``max_parts``, ``overwrite``, ``verify``,
    ``wait``) and how the folder's labels are read (:class:`~pipeline.data.LayoutOptions`:
    ``layout``, ``labels``, ``image_column``, ``label_column``, ``split_column``,
    ``label_pattern``, ``task``), or the records themselves: ``identity=CodeIdentity(...)`` (its
    layer and pooling the defaults of ``layers`` and ``poolings``), ``compute=ComputeOptions(...)``,
    ``reading=LayoutOptions(...)``.

    ``split`` (train, val, test fractions) and ``seed`` draw the parts of the split the layout
    leaves open; None: the stored ones of an existing code set, else 70/15/15 and 0. Another split
    than the stored one is refused unless ``resplit``. Labels, split and layout are in the index
    only: changing them never computes a code.

    Images already cached and unchanged are not recomputed; new or changed images are computed;
    removed ones are dropped; an update writes only the parts of what it computes and a new
    index. Unreadable images are skipped, counted and listed in the file (``failed_paths``) and
    tried again only once they change. One run at a time writes a code set: a second one waits
    for the first (``wait=False``: refuses) and then finds its work done. ``stats``, if a dict,
    receives the streaming figures: images computed and loop seconds.
    """
    request = _request(data, backbone, layers, poolings, weights, image_size, cache_dir, exclude,
                       with_positionals("generate_codes", LATER, later, options, before=8))
    return _run(request)


@dataclasses.dataclass(frozen=True)
class Request:
    """What a call of :func:`generate_codes` asks, checked: the code sets (one identity each), how
    they are computed, how the folder is read, the split asked for, and how the run reports."""

    data: Path
    identities: tuple[CodeIdentity, ...]
    weights: str
    compute: ComputeOptions
    reading: LayoutOptions
    cache_dir: Path
    split: tuple | None
    seed: int | None
    redraw: bool                       # --resplit or --overwrite: the split may change
    progress: bool
    stats: dict | None


def _request(data, backbone, layers, poolings, weights, image_size, cache_dir, exclude, options: dict) -> Request:
    split, seed, resplit = options.pop("split", None), options.pop("seed", None), options.pop("resplit", False)
    progress, stats = options.pop("progress", True), options.pop("stats", None)
    identity, compute = options.pop("identity", None), options.pop("compute", None)
    reading = options.pop("reading", None) or LayoutOptions()
    settings, how, layout = split_options(options)
    reading = dataclasses.replace(reading, **layout, exclude=tuple(exclude) or reading.exclude)
    reading.check()
    check_seed(seed)
    if identity is None:
        identity = CodeIdentity.of(backbone, (layers or [None])[0], (poolings or ["avg"])[0], weights, image_size,
                                   **settings)
    compute = dataclasses.replace(compute or ComputeOptions(), **how)
    compute.check()
    if compute.batch_size:  # (None: each runtime's own)
        check_batch_memory(compute.batch_size, identity.image_size, copies=2 * compute.workers)  # 2 in flight each
    identities = tuple(dataclasses.replace(identity, layer=l, pooling=p)
                       for l in (layers or [identity.layer]) for p in (poolings or [identity.pooling]))
    for i in identities:
        i.check()
    choose_runtime(compute.runtime, identity.precision, gpus=0)  # checked now; "auto" is resolved by each worker
    return Request(Path(data), identities, str(weights), compute, reading, Path(cache_dir), split, seed,
                   bool(resplit or compute.overwrite), progress, stats)


def _run(r: Request) -> list[Path]:
    """Stage 1's runner: read the folder, plan against the code sets there, shelve the listing,
    compute (locally or on Ray), commit. The listing is handed on at each step (the plan, then
    the shelf), never held twice."""
    ds = read_folder(r.data, r.reading)
    _say_what_was_read(ds)
    writable_folder(r.cache_dir, "--cache-dir")
    home = claim_home(r.cache_dir, r.data)
    files = [i.file_in(home) for i in r.identities]
    split, seed = _split_to_use(files[0], ds, r.split, r.seed, r.redraw)
    out_attrs = [dict(i.to_attrs(), weights=r.weights) for i in r.identities]
    spec = WorkSpec(str(ds.root), r.identities[0], tuple((i.layer, i.pooling) for i in r.identities), r.weights,
                    r.compute, r.compute.decode_threads or default_decode_threads(),
                    tuple(str(parts_dir(f)) for f in files), tuple(json.dumps(a) for a in out_attrs))
    unnamable, plan = ds.unnamable, None
    try:
        with writer_lock(files, wait=r.compute.wait):
            fault_point("locked")
            plan = make_plan(ds, files, out_attrs, overwrite=r.compute.overwrite, verify=r.compute.verify,
                             target=r.compute.partition_size, max_parts=r.compute.max_parts)
            del ds  # (the plan holds the listing now, and hands it to the shelf)
            drawn, kept = _kept_split(plan.outputs[0], plan.ds, assign_split(plan.ds, split, seed), r.redraw)
            _note_untested(plan.ds, drawn)
            with shelved(plan, home) as plan:  # (the listing, 60 bytes an image, not held while computing)
                large = _compute(plan, spec, progress=r.progress, stats=r.stats)
                fault_point("all-staged")
                failed = commit_all(plan, drawn, _label_attrs(plan.ds, split, seed, kept), r.compute.max_parts)
    except KeyboardInterrupt:
        staged = sum(all(o.staged(p) for o in plan.outputs) for p in plan.pending) if plan else 0
        raise Interrupted(f"{staged} finished partition(s) are kept; run the same command again to resume"
                          if staged else "") from None
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        staged = any(parts_dir(f).exists() for f in files)
        raise UserError(os_error_text(exc)
                        + ("; the parts computed so far are kept: run the same command again once this is "
                           "fixed" if staged else "")) from None
    skipped = sorted((f.path, f.reason) for f in failed) + list(unnamable)
    if skipped:
        logger.warning(f"warning: {len(skipped)} image(s) skipped, listed in failed_paths: "
                       + "; ".join(f"{p} ({r})" for p, r in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    if large:
        logger.warning(f"note: {len(large)} image(s) over Pillow's decompression-bomb warning limit "
                       f"({_pil_limit()} megapixels) were decoded, e.g. {large[0]}; larger than twice that are skipped")
    return files


def _say_what_was_read(ds) -> None:
    logger.info(f"layout: {ds.description}")
    for note in ds.notes:
        logger.info(f"note: {note}")
    if ds.skipped:
        logger.info(f"note: {sum(ds.skipped.values())} file(s) under {ds.root} not read as images: "
                    f"{describe_skipped(ds.skipped)} (images: {', '.join(IMAGE_EXTENSIONS)})")
    if ds.empty_classes:
        logger.info(f"note: skipped {len(ds.empty_classes)} empty class folder(s): {', '.join(ds.empty_classes)}")


def _compute(plan: Plan, spec: WorkSpec, *, progress, stats) -> list[str]:
    """Compute the partitions whose parts are missing; returns the paths of images over Pillow's
    warning limit."""
    todo = plan.n_todo
    detail = plan.describe()
    if not plan.pending:
        logger.info(f"{spec.identity.backbone} {spec.identity.image_size}px: 0 of {len(plan.ds)} images to compute"
                    + (f" ({detail})" if detail else ""))
        return []

    def ready(description):
        logger.info(f"{spec.identity.backbone} {spec.identity.image_size}px -> "
                    f"{', '.join(f'{l}/{p}' for l, p in spec.outputs)}: "
                    f"{todo} of {len(plan.ds)} images to compute ({detail}) on {description}")

    done = compute(spec, plan.pending, progress=progress, on_ready=ready)
    logger.info(f"computed {done.images} images in {done.seconds:.1f} s "
                f"({done.images / max(done.seconds, 1e-9):.1f} img/s)")
    if stats is not None:
        stats.update(images=done.images, seconds=done.seconds)
    return [p for r in done.results for p in r.large]


DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def _split_to_use(file: Path, ds, split, seed, resplit: bool) -> tuple[tuple, int]:
    """The split fractions and seed of this run: those given, else the stored ones, else the
    defaults. A split other than the stored one is refused (runs before and after would not
    share a test set) unless ``resplit`` (or ``--overwrite``, which replaces the code set)."""
    stored = {}
    if file.exists():
        try:
            with h5py.File(file, "r") as f:
                stored = {k: f.attrs[k] for k in ("split_fractions", "split_seed") if k in f.attrs}
        except OSError:
            stored = {}  # unreadable: the plan says so
    try:  # the schema a model rebuilt from the codes reads them with (pydantic's errors are ValueErrors)
        checked = StoredSplit.model_validate(stored)
        old_split = tuple(checked.split_fractions) if checked.split_fractions is not None else None
        old_seed = checked.split_seed
        if old_split is not None and not 0.999 <= sum(old_split) <= 1.001:
            raise ValueError("the fractions of a split sum to 1")
    except (TypeError, ValueError, RecursionError):
        if resplit:  # replaced anyway: the given split, or the defaults
            old_split = old_seed = None
        else:
            fractions, seed_ = str(stored.get("split_fractions")), str(stored.get("split_seed"))
            raise UserError(f"cache file {file} states its split in a form this version cannot read (split_fractions "
                            f"{fractions!r}, split_seed {seed_!r}); pass --resplit to draw a new split, or "
                            f"--overwrite to replace the code set") from None
    new_split = tuple(split) if split is not None else old_split or DEFAULT_SPLIT
    new_seed = int(seed) if seed is not None else old_seed if old_seed is not None else 0
    drawn = ds.split is None or bool((ds.split < 0).any())
    changed = ((old_split is not None and not np.allclose(new_split, old_split, atol=1e-6))
               or (old_seed is not None and new_seed != old_seed))
    if drawn and changed and not resplit:
        raise UserError(f"{file} holds a split drawn with --split {_percent(old_split)} --seed {old_seed}, not --split "
                        f"{_percent(new_split)} --seed {new_seed}; runs on it share that test set. Pass --resplit to "
                        f"draw the new one (runs made before then tested on other images)")
    return new_split, new_seed


def _percent(fractions) -> str:
    return "/".join(f"{100 * x:g}" for x in fractions) if fractions else "?"


SPLIT_METHOD = "path-hash"  # each drawn image's part a function of the seed and its path (data._scan.split_scores)


def _kept_split(out: OutputPlan, ds, split: np.ndarray, redraw: bool) -> tuple[np.ndarray, int]:
    """A code set written before the split was a function of each image's path keeps the split it
    stored for the images it holds (never redrawn silently); only its new images take the path's.
    Returns the split and how many images kept a stored part."""
    index = out.index
    if redraw or index is None or str(index.attrs.get("split_method", "")) == SPLIT_METHOD or not len(out.at):
        return split, 0
    stored = np.full(len(ds), -1, np.int8)
    rows = np.flatnonzero(out.at >= 0)
    stored[out.at[rows]] = np.asarray(index.split)[rows]
    split, kept = keep_stored_split(ds, split, stored)
    if kept:
        logger.info(f"note: {out.path.name} was split by an earlier version: its {kept} image(s) keep the part they "
                    f"had, new images take the part their path gives (--resplit: every image by its path, docs/data.md)")
    return split, kept


def _note_untested(ds, split: np.ndarray) -> None:
    """A note for the labels of a multi-label set that no test image has (rare labels): their
    figures cannot be measured, and the report's mAP leaves them out."""
    if not ds.multi_label or ds.targets is None:
        return
    tested = np.asarray(ds.targets)[np.asarray(split) == TEST].sum(0)
    missing = [ds.class_names[j] for j in np.flatnonzero(tested == 0)]
    if missing:
        logger.info(f"note: {len(missing)} label(s) have no test image ({', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}): their figures cannot be measured (mAP leaves them "
                    f"out); label more images with them, or --resplit with a larger test share")


def _label_attrs(ds, split, seed, kept=0) -> dict:
    """What the index says about labels and split besides them: how they were read and drawn."""
    return dict(split_fractions=json.dumps([round(x, 6) for x in split]), split_seed=seed,
                split_method=SPLIT_METHOD if not kept else f"stored by an earlier version; new images {SPLIT_METHOD}",
                layout=json.dumps(ds.source, sort_keys=True),
                task="multi-label" if ds.multi_label else "single-label")


def _pil_limit() -> int:
    from PIL import Image
    return int((Image.MAX_IMAGE_PIXELS or 0) / 1e6)
