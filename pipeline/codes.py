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
import contextlib
import dataclasses
import datetime
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from . import __version__
from .backbones import DEFAULT_BACKBONE, build_feature_model, get_backbone, weights_identity
from .dataset import ImageError, ImageFolder, content_digest, load_image, scan, stratified_split
from .errors import USER_ERRNOS, Interrupted, UserError, one_line, os_error_text, writable_folder
from .faults import fault_point
from .locks import writer_lock
from .runtimes import choose_runtime, make_mapper

STR = h5py.string_dtype()
# Attributes that must agree before a cache file's rows may be reused (the runtime is not one:
# TensorFlow and OpenVINO FP32 give the same codes within 1e-4), with the value files written
# before an attribute existed have.
_IDENTITY_ATTRS = ("backbone", "layer", "pooling", "image_size", "preprocessing", "weights_id", "dtype", "precision")
_IDENTITY_DEFAULTS = {"precision": "fp32"}


@dataclasses.dataclass(frozen=True)
class CodeSpec:
    """Where one code set lives: data set name, backbone, input size, weights, layer, pooling."""

    data_name: str
    backbone: str
    image_size: int
    weights_id: str
    layer: str
    pooling: str
    precision: str = "fp32"  # of the forward pass; other than fp32, another code set

    def path(self, cache_dir) -> Path:
        model = f"{self.backbone}-{self.image_size}-{self.weights_id}" + (
            f"-{self.precision}" if self.precision != "fp32" else "")
        return Path(cache_dir) / self.data_name / model / f"{self.layer}-{self.pooling}.h5"


def code_spec(data, backbone=DEFAULT_BACKBONE, layer=None, pooling="avg", weights="imagenet",
              image_size=None, precision="fp32") -> CodeSpec:
    bb = get_backbone(backbone)
    return CodeSpec(Path(data).resolve().name, bb.name, image_size or bb.input_size,
                    weights_identity(weights), layer or bb.default_layer, pooling, precision)


def codes_command(spec: CodeSpec, data) -> str:
    """The make command that creates a code set (for error messages)."""
    return (f"make codes DATA={data} BACKBONE={spec.backbone} LAYER={spec.layer} POOLING={spec.pooling}"
            + (f" IMAGE_SIZE={spec.image_size}" if spec.image_size != get_backbone(spec.backbone).input_size else "")
            + (f" ARGS='--precision {spec.precision}'" if spec.precision != "fp32" else ""))


# ------------------------------------------------------------------ reader / mapper / writer

@dataclasses.dataclass
class Batch:
    """One batch from :func:`read_batches`."""

    indices: np.ndarray               # positions in the image list, in order
    images: np.ndarray                # (n readable, size, size, 3) uint8
    ok: np.ndarray                    # per index: decoded?
    failures: list[tuple[str, str]]   # (relative path, reason) of those that were not
    digests: list[int]                # content digests of the readable ones
    large: list[str]                  # readable ones over Pillow's decompression-bomb warning limit


def read_batches(root: Path, paths, indices, size, batch_size, workers) -> Iterator[Batch]:
    """Decoded batches of ``paths[indices]``, in order.

    Decoding runs in a thread pool (PIL releases the GIL) at most two batches ahead, so memory
    stays bounded whatever the data set size.
    """
    def load(i):
        large: list = []
        try:
            return load_image(root / paths[i], size, large), content_digest(root / paths[i]), large
        except ImageError as exc:
            return None, str(exc), large
        except OSError as exc:  # gone between decoding and hashing
            return None, f"{type(exc).__name__}: {exc.strerror}", large

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
            ok = np.array([img is not None for img, _, _ in results], bool)
            imgs = (np.stack([img for img, _, _ in results if img is not None]) if ok.any()
                    else np.zeros((0, size, size, 3), np.uint8))
            yield Batch(np.asarray(b), imgs, ok,
                        failures=[(paths[i], err) for i, (img, err, _) in zip(b, results) if img is None],
                        digests=[d for img, d, _ in results if img is not None],
                        large=[p for _, _, large in results for p in large])


def _durable_replace(tmp: Path, dst: Path) -> None:
    """Move a finished file into place so that it is whole or absent, even after a power cut:
    its bytes reach the disk before the rename, and the rename before we go on."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_shard(staging: Path, number: int, *, paths, fingerprints, digests, codes, code_shape, runtime, failed,
                reasons, failed_fingerprints) -> None:
    tmp = staging / f"shard-{number:06d}.tmp.npz"
    np.savez(tmp, paths=np.asarray(paths, dtype=str), fingerprints=fingerprints,
             digests=np.asarray(digests, np.uint64), codes=codes, code_shape=np.asarray(code_shape, np.int64),
             runtime=np.asarray(runtime),
             failed=np.asarray(failed, dtype=str), reasons=np.asarray(reasons, dtype=str),
             failed_fingerprints=np.asarray(failed_fingerprints, np.int64).reshape(-1, 2))
    fault_point("shard-tmp-written")
    _durable_replace(tmp, staging / f"shard-{number:06d}.npz")
    fault_point("shard-saved")


# ------------------------------------------------------------------ cache bookkeeping

@dataclasses.dataclass(frozen=True)
class CachedRow:
    """Where the code of one image already is: a row of the finished file (``shard`` None) or
    of a staged shard, with the image's content digest (0: unknown) and fingerprint then."""

    shard: Path | None
    row: int
    digest: int
    fingerprint: tuple[int, int]


@dataclasses.dataclass
class Known:
    """What one output already holds for the images on disk now."""

    usable: dict[str, CachedRow]   # relpath -> cached code still valid
    failed: dict[str, str]         # relpath -> reason, unreadable and unchanged since
    code_shape: list | None        # activation shape before pooling, if any code is cached
    runtimes: set                  # what computed the cached codes (recorded, not part of the identity)


def _staging_dir(path: Path) -> Path:
    return path.with_name(path.stem + ".partial")


def _existing_rows(path: Path, attrs: dict, overwrite: bool):
    """Rows of a finished file that may be reused, its unreadable images (relpath -> (reason,
    fingerprint)) and its code shape."""
    if not path.exists() or overwrite:
        return {}, {}, None, set()
    try:
        with h5py.File(path, "r") as f:
            old = {k: f.attrs.get(k, _IDENTITY_DEFAULTS.get(k)) for k in _IDENTITY_ATTRS}
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
            code_shape = json.loads(f.attrs["code_shape"])
            runtimes = set(str(f.attrs["runtime"]).split("; ")) if "runtime" in f.attrs else set()
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cache file {path} is unreadable ({type(exc).__name__}); "
                        f"move it away or pass --overwrite") from None
    rows = {p: CachedRow(None, r, int(d), tuple(fp)) for r, (p, d, fp) in enumerate(zip(paths, digests, fps))}
    return rows, failed, code_shape, runtimes


def _shard_rows(staging: Path):
    """Rows, failures and code shape recorded in staged shards (as :func:`_existing_rows`)."""
    rows, failed, code_shape, runtimes = {}, {}, None, set()
    for shard in sorted(staging.glob("shard-*[0-9].npz")):
        with np.load(shard) as z:
            digests = z["digests"] if "digests" in z else np.zeros(len(z["paths"]), np.uint64)
            for r, (p, d, fp) in enumerate(zip(z["paths"], digests, z["fingerprints"])):
                rows[str(p)] = CachedRow(shard, r, int(d), tuple(fp))
            for p, reason, fp in zip(z["failed"], z["reasons"], z["failed_fingerprints"]):
                failed[str(p)] = (str(reason), tuple(fp))
            if "code_shape" in z and len(z["paths"]):
                code_shape = z["code_shape"].tolist()
                runtimes.add(str(z["runtime"]) if "runtime" in z else "unknown")
    return rows, failed, code_shape, runtimes


def _versions() -> str:
    import keras
    import PIL
    import tensorflow as tf
    return json.dumps({"pipeline": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                       "numpy": np.__version__, "h5py": h5py.__version__, "pillow": PIL.__version__})


def _collect(path: Path, ds: ImageFolder, attrs: dict, overwrite: bool, verify: bool = False) -> Known:
    """What of one output can be kept: finished-file and staged rows, and known-unreadable
    images, whose image on disk has not changed.

    "Changed", as make and rsync decide it: another size, or another modification time and
    other bytes (a copied or re-extracted image keeps its code). ``verify`` re-hashes every
    image, so that bytes changed behind an unchanged size and time are noticed too.
    """
    rows, failed, shape, runtimes = _existing_rows(path, attrs, overwrite)
    staging = _staging_dir(path)
    if staging.exists():
        shard_rows, shard_failed, shard_shape, shard_runtimes = _shard_rows(staging)
        rows.update(shard_rows)
        failed.update(shard_failed)
        shape = shard_shape or shape
        runtimes |= shard_runtimes
    current = {p: tuple(fp) for p, fp in zip(ds.paths, ds.fingerprints)}

    def unchanged(p: str, row: CachedRow) -> bool:
        now = current.get(p)
        if now is None or now[0] != row.fingerprint[0]:
            return False
        if now == row.fingerprint and not verify:
            return True
        try:
            return row.digest != 0 and content_digest(ds.root / p) == row.digest
        except OSError:
            return False

    usable = {p: row for p, row in rows.items() if unchanged(p, row)}
    return Known(usable, {p: r for p, (r, fp) in failed.items() if current.get(p) == fp and p not in usable}, shape,
                 runtimes)


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


def _assemble(path: Path, ds: ImageFolder, known: Known, attrs: dict, split_codes: np.ndarray, dtype: str,
              chunk: int = 1024) -> None:
    """Write the final HDF5 file from reusable rows and shards: whole under a temporary name,
    then moved into place. A failure (a full disk) leaves the old file and the shards as they were."""
    usable, failed = known.usable, known.failed
    order = [i for i, p in enumerate(ds.paths) if p in usable]
    tmp = path.with_name(path.stem + ".tmp.h5")
    shard_cache: dict = {}

    def shard_codes(file):
        if file not in shard_cache:
            shard_cache.clear()  # shards are visited in order: keep one in memory
            with np.load(file) as z:
                shard_cache[file] = z["codes"]
        return shard_cache[file]

    try:
        with contextlib.ExitStack() as stack:
            old = stack.enter_context(h5py.File(path, "r")) if path.exists() else None
            first = usable[ds.paths[order[0]]]
            dim = old["codes"].shape[1] if first.shard is None else shard_codes(first.shard).shape[1]
            n = len(order)
            _check_room(path, n * dim * np.dtype(dtype).itemsize + sum(len(ds.paths[i]) + 40 for i in order))
            f = stack.enter_context(h5py.File(tmp, "w"))
            codes = f.create_dataset("codes", (n, dim), dtype=dtype, chunks=(min(n, 256), dim))
            for s in range(0, n, chunk):
                rows = [usable[ds.paths[i]] for i in order[s:s + chunk]]
                block = np.empty((len(rows), dim), dtype)
                in_file = [(j, r.row) for j, r in enumerate(rows) if r.shard is None]
                if in_file:
                    block[[j for j, _ in in_file]] = old["codes"][[r for _, r in in_file]]
                for j, r in enumerate(rows):
                    if r.shard is not None:
                        block[j] = shard_codes(r.shard)[r.row]
                codes[s:s + len(rows)] = block
                fault_point("final-partial")
            f.create_dataset("paths", data=[ds.paths[i] for i in order], dtype=STR)
            f.create_dataset("labels", data=ds.labels[order])
            f.create_dataset("split", data=split_codes[order])
            f.create_dataset("fingerprints", data=ds.fingerprints[order])
            f.create_dataset("digests", data=np.array(  # rows from files of 0.1.0 get theirs now
                [usable[ds.paths[i]].digest or content_digest(ds.root / ds.paths[i]) for i in order], np.uint64))
            f.create_dataset("class_names", data=ds.class_names, dtype=STR)
            f.create_dataset("failed_paths", data=sorted(failed), dtype=STR)
            f.create_dataset("failed_reasons", data=[failed[p] for p in sorted(failed)], dtype=STR)
            fp_of = dict(zip(ds.paths, map(tuple, ds.fingerprints)))
            f.create_dataset("failed_fingerprints", data=np.asarray([fp_of[p] for p in sorted(failed)],
                                                                      np.int64).reshape(-1, 2))
            f.attrs.update(attrs)
        fault_point("final-tmp-written")
        _durable_replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {one_line(exc)}; the computed codes are kept in "
                        f"{_staging_dir(path)}: run the same command again once this is fixed") from None
    fault_point("final-moved")


def _check_room(path: Path, n_bytes: int) -> None:
    """Refuse to start writing ``path`` where it cannot fit: HDF5 does not survive a failed
    write (it crashes the process while closing the file), so a full disk must be found first.
    Counts the free space and this process's file-size limit (``ulimit -f``)."""
    need = int(n_bytes * 1.02) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    room = min(free, limit if limit != resource.RLIM_INFINITY else free)
    if room < need:
        why = "free on that disk" if room == free else "allowed per file by ulimit -f"
        raise UserError(f"not enough room to write {path}: it needs about {need / 1e6:.1f} MB, "
                        f"{room / 1e6:.1f} MB are {why}; the computed codes are kept in {_staging_dir(path)}: "
                        f"make room and run the same command again")


# ------------------------------------------------------------------ the job

def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def generate_codes(data, backbone=DEFAULT_BACKBONE, layers=None, poolings=("avg",), weights="imagenet",
                   image_size=None, cache_dir="cache", batch_size=32, exclude=(),
                   split=(0.7, 0.15, 0.15), seed=0, dtype="float32", workers=None, overwrite=False,
                   verify=False, wait=True, runtime="auto", precision="fp32", progress=True, log=print,
                   warn=_to_stderr, stats=None) -> list[Path]:
    """Compute (or complete) one cached code set per (layer, pooling); return their paths.

    Images already cached and unchanged (see :func:`_collect`) are not recomputed; new or
    changed images are computed; removed ones are dropped. Unreadable images are skipped,
    counted and listed in the file (``failed_paths``) and tried again only once they change.
    One run at a time writes a code set: a second one waits for the first (``wait=False``:
    refuses) and then finds its work done. ``runtime`` runs the forward pass (auto: OpenVINO
    on a CPU where it is installed, see :mod:`pipeline.runtimes`); ``precision`` bf16 makes a
    code set of its own. ``stats``, if a dict, receives the streaming figures: images computed
    and loop seconds.
    """
    if dtype not in ("float32", "float16"):
        raise UserError(f"--dtype {dtype}: choose float32 or float16")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    bb = get_backbone(backbone)
    runtime = choose_runtime(runtime, precision)
    ds = scan(data, exclude)
    writable_folder(cache_dir, "--cache-dir")
    outputs = [(l, p) for l in (layers or [bb.default_layer]) for p in poolings]
    size = image_size or bb.input_size
    files = [code_spec(data, bb.name, l, p, weights, size, precision).path(cache_dir) for l, p in outputs]
    base_attrs = dict(backbone=bb.name, image_size=size, preprocessing=bb.preprocessing,
                      weights=str(weights), weights_id=weights_identity(weights), dtype=dtype, precision=precision)
    out_attrs = [dict(base_attrs, layer=l, pooling=p) for l, p in outputs]
    if ds.empty_classes:
        log(f"note: skipped {len(ds.empty_classes)} empty class folder(s): {', '.join(ds.empty_classes)}")
    try:
        with writer_lock(files, wait=wait, note=warn):
            fault_point("locked")
            return _generate_locked(ds, bb, outputs, files, out_attrs, size, batch_size, split, seed,
                                    dtype, workers, overwrite, verify, runtime, progress, log, warn, stats)
    except KeyboardInterrupt:
        staged = max(len(list(_staging_dir(f).glob("shard-*[0-9].npz"))) for f in files)
        raise Interrupted(f"{staged} finished batch(es) are kept; run the same command again to resume"
                          if staged else "") from None
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        staged = any(_staging_dir(f).exists() for f in files)
        raise UserError(os_error_text(exc)
                        + ("; the batches computed so far are kept: run the same command again once this is "
                           "fixed" if staged else "")) from None


def _generate_locked(ds, bb, outputs, files, out_attrs, size, batch_size, split, seed, dtype, workers,
                     overwrite, verify, runtime, progress, log, warn, stats) -> list[Path]:
    if overwrite:
        for f in files:
            shutil.rmtree(_staging_dir(f), ignore_errors=True)
    known = [_collect(f, ds, a, overwrite, verify) for f, a in zip(files, out_attrs)]
    todo = np.flatnonzero([any(p not in k.usable and p not in k.failed for k in known) for p in ds.paths])
    shapes, large = None, []
    if len(todo):
        model, shapes = build_feature_model(bb, outputs, out_attrs[0]["weights"], size)
        mapper = make_mapper(model, runtime=runtime, batch_size=batch_size, image_size=size,
                             model_name=f"{bb.name} {' '.join(f'{l}/{p}' for l, p in outputs)}",
                             precision=out_attrs[0]["precision"], log=log)
        log(f"{bb.name} {size}px -> {', '.join(f'{l}/{p}' for l, p in outputs)}: "
            f"{len(todo)} of {len(ds)} images to compute on {mapper.description}")
        seconds, large = _run(mapper, ds, todo, files, shapes, size, batch_size, dtype, workers, progress, bb.name)
        log(f"computed {len(todo)} images in {seconds:.1f} s ({len(todo) / seconds:.1f} img/s)")
        if stats is not None:
            stats.update(images=len(todo), seconds=seconds)
        known = [_collect(f, ds, a, overwrite) for f, a in zip(files, out_attrs)]
    fault_point("all-staged")

    split_codes = stratified_split(ds.paths, ds.labels, split, seed)
    split_attrs = dict(split_fractions=json.dumps([round(x, 6) for x in split]), split_seed=seed)
    for k, (path, attrs, kn) in enumerate(zip(files, out_attrs, known)):
        if not kn.usable:
            raise UserError(f"none of the {len(ds)} images under {ds.root} could be read"
                            + (f" (e.g. {next(iter(kn.failed))}: {next(iter(kn.failed.values()))})" if kn.failed else ""))
        if len(todo) or not _same_content(path, ds, kn.usable, split_attrs):
            code_shape = list(shapes[k]) if shapes is not None else kn.code_shape
            if code_shape is None:  # shards staged by a version that did not record it
                code_shape = list(build_feature_model(bb, [outputs[k]], attrs["weights"], size)[1][0])
            attrs = dict(attrs, **split_attrs, code_shape=json.dumps(code_shape), versions=_versions(),
                         runtime="; ".join(sorted(kn.runtimes)) or "unknown",
                         data_root=str(ds.root.resolve()),
                         created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            _assemble(path, ds, kn, attrs, split_codes, dtype)
        shutil.rmtree(_staging_dir(path), ignore_errors=True)
        fault_point("output-done")
        log(f"{path}: {len(kn.usable)} images x {_dim(path)} values"
            + (f"; {len(kn.failed)} unreadable image(s) skipped" if kn.failed else ""))
    skipped = sorted(known[0].failed.items()) + list(ds.unnamable)
    if skipped:
        warn(f"warning: {len(skipped)} image(s) skipped, listed in failed_paths: "
             + "; ".join(f"{p} ({r})" for p, r in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    if large:
        warn(f"note: {len(large)} image(s) over Pillow's decompression-bomb warning limit "
             f"({_pil_limit()} megapixels) were decoded, e.g. {large[0]}; larger than twice that are skipped")
    return files


def _pil_limit() -> int:
    from PIL import Image
    return int((Image.MAX_IMAGE_PIXELS or 0) / 1e6)


def _dim(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return f["codes"].shape[1]


def _run(mapper, ds, todo, files, shapes, size, batch_size, dtype, workers, progress, name):
    """Compute codes for images ``todo``, staged as shards next to each output file; returns
    (seconds, paths of images over the decompression-bomb warning limit)."""
    from tqdm import tqdm

    mapper(np.zeros((1, size, size, 3), np.uint8))  # trace / warm up before the clock starts
    stagings = [_staging_dir(f) for f in files]
    for s in stagings:
        s.mkdir(parents=True, exist_ok=True)
    start = max([int(p.stem.split("-")[1]) + 1 for s in stagings for p in s.glob("shard-*[0-9].npz")],
                default=0)
    workers = workers or min(8, os.cpu_count() or 1)
    n_failed, large = 0, []
    fingerprint = dict(zip(ds.paths, map(tuple, ds.fingerprints)))
    t0 = time.perf_counter()
    with tqdm(total=len(todo), unit="img", disable=not progress, smoothing=0.1, desc=f"codes {name}") as bar:
        batches = read_batches(ds.root, ds.paths, todo, size, batch_size, workers)
        for k, (batch, codes) in enumerate(mapper.map_batches(batches, images=lambda b: b.images)):
            good = batch.indices[batch.ok]
            for s, c, shape in zip(stagings, codes, shapes):
                _save_shard(s, start + k, paths=[ds.paths[i] for i in good], fingerprints=ds.fingerprints[good],
                            digests=batch.digests, codes=c.astype(dtype), code_shape=shape,
                            runtime=mapper.description,
                            failed=[p for p, _ in batch.failures], reasons=[r for _, r in batch.failures],
                            failed_fingerprints=[fingerprint[p] for p, _ in batch.failures])
            n_failed += len(batch.failures)
            large += batch.large
            bar.update(len(batch.indices))
            if n_failed:
                bar.set_postfix(unreadable=n_failed)
    return time.perf_counter() - t0, large


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
