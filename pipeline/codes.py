"""Stage 1: run every image once through a frozen conv base and cache its CNN codes in HDF5.

reader (decode + resize in threads, bounded look-ahead) -> mapper (Keras forward pass in
batches) -> writer (one atomic ``.npz`` shard per batch). When every image is done the shards
and any reusable rows of the previous file are assembled into the final HDF5 file, written
under a temporary name and moved into place, so an interrupted run (Ctrl-C, kill -9) never
damages a finished file and the next run continues from the last shard written.

One HDF5 file holds one code set: ``cache/<data>/<backbone>-<size>-<weights>/<layer>-<pooling>.h5``
with datasets ``codes`` (N, D), ``paths``, ``labels``, ``split``, ``fingerprints``,
``class_names``, ``failed_paths``/``failed_reasons`` and attributes that say how it was made.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .backbones import DEFAULT_BACKBONE, build_feature_model, get_backbone, weights_identity
from .dataset import ImageError, ImageFolder, content_digest, load_image, scan, stratified_split
from .errors import UserError, writable_folder

STR = h5py.string_dtype()
# Attributes that must agree before a cache file's rows may be reused.
_IDENTITY_ATTRS = ("backbone", "layer", "pooling", "image_size", "preprocessing", "weights_id", "dtype")


@dataclasses.dataclass(frozen=True)
class CodeSpec:
    """Where one code set lives: data set name, backbone, input size, weights, layer, pooling."""

    data_name: str
    backbone: str
    image_size: int
    weights_id: str
    layer: str
    pooling: str

    def path(self, cache_dir) -> Path:
        return (Path(cache_dir) / self.data_name / f"{self.backbone}-{self.image_size}-{self.weights_id}"
                / f"{self.layer}-{self.pooling}.h5")


def code_spec(data, backbone=DEFAULT_BACKBONE, layer=None, pooling="avg", weights="imagenet",
              image_size=None) -> CodeSpec:
    bb = get_backbone(backbone)
    return CodeSpec(Path(data).resolve().name, bb.name, image_size or bb.input_size,
                    weights_identity(weights), layer or bb.default_layer, pooling)


def codes_command(spec: CodeSpec, data) -> str:
    """The make command that creates a code set (for error messages)."""
    return (f"make codes DATA={data} BACKBONE={spec.backbone} LAYER={spec.layer} POOLING={spec.pooling}"
            + (f" IMAGE_SIZE={spec.image_size}" if spec.image_size != get_backbone(spec.backbone).input_size else ""))


# ------------------------------------------------------------------ reader / mapper / writer

def read_batches(root: Path, paths, indices, size, batch_size, workers):
    """Yield (batch_indices, images (n, size, size, 3) uint8, ok_mask, failures, digests of the
    images decoded) in order.

    Decoding runs in a thread pool (PIL releases the GIL) at most two batches ahead, so memory
    stays bounded whatever the data set size.
    """
    def load(i):
        try:
            return load_image(root / paths[i], size), content_digest(root / paths[i])
        except ImageError as exc:
            return None, str(exc)
        except OSError as exc:  # gone between decoding and hashing
            return None, f"{type(exc).__name__}: {exc.strerror}"

    batches = [indices[s:s + batch_size] for s in range(0, len(indices), batch_size)]
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for b in batches[:2]:
            pending.append((b, [pool.submit(load, i) for i in b]))
        nxt = 2
        while pending:
            b, futs = pending.pop(0)
            if nxt < len(batches):
                pending.append((batches[nxt], [pool.submit(load, i) for i in batches[nxt]]))
                nxt += 1
            results = [f.result() for f in futs]
            ok = np.array([img is not None for img, _ in results], bool)
            imgs = (np.stack([img for img, _ in results if img is not None]) if ok.any()
                    else np.zeros((0, size, size, 3), np.uint8))
            failures = [(paths[i], err) for i, (img, err) in zip(b, results) if img is None]
            digests = [d for img, d in results if img is not None]
            yield np.asarray(b), imgs, ok, failures, digests


class Mapper:
    """Compiled forward pass: (n, size, size, 3) uint8 or float RGB -> list of (n, D) float32 codes.

    Batches smaller than ``batch_size`` are zero-padded so the graph is traced only once.
    """

    def __init__(self, model, batch_size: int):
        import tensorflow as tf
        self.batch_size = batch_size
        self._fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), autograph=False)

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        n = len(images)
        if n < self.batch_size:
            images = np.concatenate([images, np.zeros((self.batch_size - n,) + images.shape[1:], images.dtype)])
        out = self._fn(images)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o, dtype=np.float32)[:n] for o in out]


def _save_shard(staging: Path, number: int, paths, fingerprints, digests, codes, failed, reasons,
                failed_fingerprints):
    tmp = staging / f"shard-{number:06d}.tmp.npz"
    np.savez(tmp, paths=np.asarray(paths, dtype=str), fingerprints=fingerprints,
             digests=np.asarray(digests, np.uint64), codes=codes,
             failed=np.asarray(failed, dtype=str), reasons=np.asarray(reasons, dtype=str),
             failed_fingerprints=np.asarray(failed_fingerprints, np.int64).reshape(-1, 2))
    os.replace(tmp, staging / f"shard-{number:06d}.npz")  # atomic: a shard is whole or absent


# ------------------------------------------------------------------ cache bookkeeping

def _staging_dir(path: Path) -> Path:
    return path.with_name(path.stem + ".partial")


def _existing_rows(path: Path, attrs: dict, overwrite: bool) -> tuple[dict, dict]:
    """Rows of a finished file that may be reused, relpath -> ('h5', row, digest, fingerprint),
    and its unreadable images, relpath -> (reason, fingerprint)."""
    if not path.exists() or overwrite:
        return {}, {}
    try:
        with h5py.File(path, "r") as f:
            old = {k: f.attrs.get(k) for k in _IDENTITY_ATTRS}
            new = {k: attrs[k] for k in _IDENTITY_ATTRS}
            if [str(v) for v in old.values()] != [str(v) for v in new.values()]:
                diff = ", ".join(f"{k}: {old[k]} -> {new[k]}" for k in old if str(old[k]) != str(new[k]))
                raise UserError(f"cache file {path} was made with other settings ({diff}); "
                                f"pass --overwrite to replace it or --cache-dir to keep both")
            paths = f["paths"].asstr()[()]
            fps = f["fingerprints"][()]
            digests = f["digests"][()] if "digests" in f else np.zeros(len(paths), np.uint64)  # 0: unknown
            failed = {}
            if "failed_fingerprints" in f:  # files of version 0.1.0 before it: failures are retried
                failed = dict(zip(f["failed_paths"].asstr()[()],
                                  zip(f["failed_reasons"].asstr()[()], map(tuple, f["failed_fingerprints"][()]))))
    except (OSError, KeyError) as exc:
        raise UserError(f"cache file {path} is unreadable ({type(exc).__name__}); "
                        f"move it away or pass --overwrite") from None
    return {p: ("h5", r, int(d), tuple(fp)) for r, (p, d, fp) in enumerate(zip(paths, digests, fps))}, failed


def _shard_rows(staging: Path) -> tuple[dict, dict]:
    """Rows and failures recorded in staged shards: relpath -> ('shard', file, row, digest,
    fingerprint) and relpath -> (reason, fingerprint)."""
    rows, failed = {}, {}
    for shard in sorted(staging.glob("shard-*[0-9].npz")):
        with np.load(shard) as z:
            digests = z["digests"] if "digests" in z else np.zeros(len(z["paths"]), np.uint64)
            for r, (p, d, fp) in enumerate(zip(z["paths"], digests, z["fingerprints"])):
                rows[str(p)] = ("shard", shard, r, int(d), tuple(fp))
            for p, reason, fp in zip(z["failed"], z["reasons"], z["failed_fingerprints"]):
                failed[str(p)] = (str(reason), tuple(fp))
    return rows, failed


def _versions() -> str:
    import keras
    import PIL
    import tensorflow as tf
    return json.dumps({"pipeline": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                       "numpy": np.__version__, "h5py": h5py.__version__, "pillow": PIL.__version__})


def _collect(path: Path, ds: ImageFolder, attrs: dict, overwrite: bool) -> tuple[dict, dict]:
    """(usable rows, failures) for one output: finished-file rows and staged shard rows, and
    images that failed to decode (relpath -> reason), all whose fingerprint still matches the
    image on disk, or for rows whose size matches but mtime not, whose content digest does.
    A changed image is computed (or tried) again."""
    rows, failed = _existing_rows(path, attrs, overwrite)
    staging = _staging_dir(path)
    if staging.exists():
        shard_rows, shard_failed = _shard_rows(staging)
        rows.update(shard_rows)
        failed.update(shard_failed)
    current = {p: tuple(fp) for p, fp in zip(ds.paths, ds.fingerprints)}

    def same(p, v):
        now = current.get(p)
        return now is not None and (now == v[-1] or (now[0] == v[-1][0] and v[-2] != 0
                                                      and content_digest(ds.root / p) == v[-2]))

    usable = {p: v for p, v in rows.items() if same(p, v)}
    return usable, {p: r for p, (r, fp) in failed.items() if current.get(p) == fp and p not in usable}


def _same_content(path: Path, ds: ImageFolder, usable: dict, split_attrs: dict) -> bool:
    """True when the finished file already holds exactly these images, classes and split."""
    if not path.exists():
        return False
    order = [i for i, p in enumerate(ds.paths) if p in usable]
    with h5py.File(path, "r") as f:
        return (list(f["paths"].asstr()[()]) == [ds.paths[i] for i in order]
                and np.array_equal(f["fingerprints"][()], ds.fingerprints[order]) and "digests" in f
                and list(f["class_names"].asstr()[()]) == ds.class_names
                and all(str(f.attrs.get(k)) == str(v) for k, v in split_attrs.items()))


def _assemble(path: Path, ds: ImageFolder, usable: dict, failed: dict, attrs: dict,
              split_codes: np.ndarray, dtype: str, chunk: int = 1024) -> None:
    """Write the final HDF5 file from reusable rows and shards, atomically."""
    order = [i for i, p in enumerate(ds.paths) if p in usable]
    if not order:
        raise UserError(f"none of the {len(ds)} images under {ds.root} could be read")
    tmp = path.with_name(path.stem + ".tmp.h5")
    old = h5py.File(path, "r") if path.exists() else None
    shard_cache: dict = {}

    def shard_codes(file):
        if file not in shard_cache:
            shard_cache.clear()  # shards are visited in order: keep one in memory
            with np.load(file) as z:
                shard_cache[file] = z["codes"]
        return shard_cache[file]

    try:
        first = usable[ds.paths[order[0]]]
        dim = old["codes"].shape[1] if first[0] == "h5" else shard_codes(first[1]).shape[1]
        with h5py.File(tmp, "w") as f:
            n = len(order)
            codes = f.create_dataset("codes", (n, dim), dtype=dtype, chunks=(min(n, 256), dim))
            for s in range(0, n, chunk):
                rows = order[s:s + chunk]
                block = np.empty((len(rows), dim), dtype)
                h5_pos = [(j, usable[ds.paths[i]][1]) for j, i in enumerate(rows) if usable[ds.paths[i]][0] == "h5"]
                if h5_pos:
                    block[[j for j, _ in h5_pos]] = old["codes"][[r for _, r in h5_pos]]
                for j, i in enumerate(rows):
                    src = usable[ds.paths[i]]
                    if src[0] == "shard":
                        block[j] = shard_codes(src[1])[src[2]]
                codes[s:s + len(rows)] = block
            f.create_dataset("paths", data=[ds.paths[i] for i in order], dtype=STR)
            f.create_dataset("labels", data=ds.labels[order])
            f.create_dataset("split", data=split_codes[order])
            f.create_dataset("fingerprints", data=ds.fingerprints[order])
            f.create_dataset("digests", data=np.array(  # rows from files of 0.1.0 get theirs now
                [usable[ds.paths[i]][-2] or content_digest(ds.root / ds.paths[i]) for i in order], np.uint64))
            f.create_dataset("class_names", data=ds.class_names, dtype=STR)
            f.create_dataset("failed_paths", data=sorted(failed), dtype=STR)
            f.create_dataset("failed_reasons", data=[failed[p] for p in sorted(failed)], dtype=STR)
            fp_of = dict(zip(ds.paths, map(tuple, ds.fingerprints)))
            f.create_dataset("failed_fingerprints", data=np.asarray([fp_of[p] for p in sorted(failed)],
                                                                      np.int64).reshape(-1, 2))
            f.attrs.update(attrs)
    finally:
        if old is not None:
            old.close()
    os.replace(tmp, path)


# ------------------------------------------------------------------ the job

def generate_codes(data, backbone=DEFAULT_BACKBONE, layers=None, poolings=("avg",), weights="imagenet",
                   image_size=None, cache_dir="cache", batch_size=32, exclude=(),
                   split=(0.7, 0.15, 0.15), seed=0, dtype="float32", workers=None, overwrite=False,
                   progress=True, log=print, stats=None) -> list[Path]:
    """Compute (or complete) one cached code set per (layer, pooling); return their paths.

    Images already cached with the same fingerprint (size, mtime) are not recomputed; new or
    changed images are computed; removed ones are dropped. Unreadable images are skipped,
    counted and listed in the file (``failed_paths``) and tried again only once they change.
    ``stats``, if a dict, receives the streaming figures: images computed and loop seconds.
    """
    if dtype not in ("float32", "float16"):
        raise UserError(f"--dtype {dtype}: choose float32 or float16")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    bb = get_backbone(backbone)
    ds = scan(data, exclude)
    writable_folder(cache_dir, "--cache-dir")
    outputs = [(l, p) for l in (layers or [bb.default_layer]) for p in poolings]
    size = image_size or bb.input_size
    files = [code_spec(data, bb.name, l, p, weights, size).path(cache_dir) for l, p in outputs]
    base_attrs = dict(backbone=bb.name, image_size=size, preprocessing=bb.preprocessing,
                      weights=str(weights), weights_id=weights_identity(weights), dtype=dtype)
    out_attrs = [dict(base_attrs, layer=l, pooling=p) for l, p in outputs]
    if ds.empty_classes:
        log(f"note: skipped {len(ds.empty_classes)} empty class folder(s): {', '.join(ds.empty_classes)}")
    if overwrite:
        for f in files:
            shutil.rmtree(_staging_dir(f), ignore_errors=True)

    known = [_collect(f, ds, a, overwrite) for f, a in zip(files, out_attrs)]
    todo = np.flatnonzero([any(p not in usable and p not in failed for usable, failed in known)
                           for p in ds.paths])
    shapes = None
    if len(todo):
        model, shapes = build_feature_model(bb, outputs, weights, size)
        log(f"{bb.name} {size}px -> {', '.join(f'{l}/{p}' for l, p in outputs)}: "
            f"{len(todo)} of {len(ds)} images to compute on {_device()}")
        seconds = _run(model, ds, todo, files, size, batch_size, dtype, workers, progress, bb.name)
        log(f"computed {len(todo)} images in {seconds:.1f} s ({len(todo) / seconds:.1f} img/s)")
        if stats is not None:
            stats.update(images=len(todo), seconds=seconds)
        known = [_collect(f, ds, a, overwrite) for f, a in zip(files, out_attrs)]

    split_codes = stratified_split(ds.paths, ds.labels, split, seed)
    split_attrs = dict(split_fractions=json.dumps([round(x, 6) for x in split]), split_seed=seed)
    for k, (path, attrs, (usable, failed)) in enumerate(zip(files, out_attrs, known)):
        if len(todo) or not _same_content(path, ds, usable, split_attrs):
            if shapes is not None:
                code_shape = json.dumps(list(shapes[k]))
            else:  # nothing computed: the shape is that of the existing file
                with h5py.File(path, "r") as f:
                    code_shape = f.attrs["code_shape"]
            attrs = dict(attrs, **split_attrs, code_shape=code_shape, versions=_versions(),
                         data_root=str(Path(data).resolve()),
                         created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            _assemble(path, ds, usable, failed, attrs, split_codes, dtype)
        shutil.rmtree(_staging_dir(path), ignore_errors=True)
        n_ok = len(usable)
        log(f"{path}: {n_ok} images x {_dim(path)} values"
            + (f"; {len(failed)} unreadable image(s) skipped: "
               + "; ".join(f"{p} ({r})" for p, r in list(failed.items())[:5])
               + (" ..." if len(failed) > 5 else "") if failed else ""))
    return files


def _device() -> str:
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s)" if gpus else f"CPU ({os.cpu_count()} cores)"


def _dim(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return f["codes"].shape[1]


def _run(model, ds, todo, files, size, batch_size, dtype, workers, progress, name):
    """Compute codes for images ``todo``, staged as shards next to each output file; returns seconds."""
    from tqdm import tqdm

    mapper = Mapper(model, batch_size)
    mapper(np.zeros((1, size, size, 3), np.uint8))  # trace before the clock starts
    stagings = [_staging_dir(f) for f in files]
    for s in stagings:
        s.mkdir(parents=True, exist_ok=True)
    start = max([int(p.stem.split("-")[1]) + 1 for s in stagings for p in s.glob("shard-*[0-9].npz")],
                default=0)
    workers = workers or min(8, os.cpu_count() or 1)
    n_failed = 0
    fingerprint = dict(zip(ds.paths, map(tuple, ds.fingerprints)))
    t0 = time.perf_counter()
    with tqdm(total=len(todo), unit="img", disable=not progress, smoothing=0.1, desc=f"codes {name}") as bar:
        for k, (idx, imgs, ok, failures, digests) in enumerate(
                read_batches(ds.root, ds.paths, todo, size, batch_size, workers)):
            codes = mapper(imgs) if len(imgs) else [np.zeros((0, 0), np.float32)] * len(files)
            good = idx[ok]
            for s, c in zip(stagings, codes):
                _save_shard(s, start + k, [ds.paths[i] for i in good], ds.fingerprints[good], digests,
                            c.astype(dtype), [p for p, _ in failures], [r for _, r in failures],
                            [fingerprint[p] for p, _ in failures])
            n_failed += len(failures)
            bar.update(len(idx))
            if n_failed:
                bar.set_postfix(unreadable=n_failed)
    return time.perf_counter() - t0


def load_codes(path):
    """Read one cached code set as a :class:`CodeSet`."""
    return CodeSet.load(path)


@dataclasses.dataclass
class CodeSet:
    """Codes (N, D) float32 with labels (N,), split (N,) codes TRAIN/VAL/TEST, relative paths,
    class names and the file's attributes."""

    path: Path
    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    paths: list[str]
    class_names: list[str]
    attrs: dict

    @classmethod
    def load(cls, path) -> "CodeSet":
        path = Path(path)
        if not path.exists():
            raise UserError(f"no cached codes at {path}; run make codes first")
        try:
            with h5py.File(path, "r") as f:
                return cls(path, f["codes"][()].astype(np.float32), f["labels"][()].astype(np.int64),
                           f["split"][()], list(f["paths"].asstr()[()]), list(f["class_names"].asstr()[()]),
                           {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()})
        except (OSError, KeyError) as exc:
            raise UserError(f"{path} is not a readable code file ({type(exc).__name__})") from None

    def part(self, which: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.split == which
        return self.X[m], self.y[m]
