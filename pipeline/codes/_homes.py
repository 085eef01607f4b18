"""Which folder of the cache belongs to which data folder.

A code set belongs to one data folder. The first data folder of a name keeps ``<cache>/<name>/``;
another folder of the same name (``a/images`` and ``b/images``) gets ``<cache>/<name>-<digest of
its absolute path>/``. Each cache folder says whose it is in ``folder.json``; folders made before
it existed say so in their code sets' ``data_root`` attribute. A data folder that was moved or
renamed keeps its codes: a cache folder whose data folder is gone is taken over when a sample of
its images is found at the new place with the same bytes.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from pipeline._files import durable_replace
from pipeline.data import content_digest

logger = logging.getLogger(__name__)

HOME_FILE = "folder.json"
SAMPLE = 16  # images compared to recognise a moved data folder


def _root(data) -> str:
    return str(Path(data).resolve())


def _digest_name(root: str) -> str:
    return f"{Path(root).name}-{hashlib.blake2b(root.encode(), digest_size=4).hexdigest()}"


def _code_files(home: Path) -> list[Path]:
    return sorted(p for p in home.glob("*/*.h5") if ".tmp." not in p.name)


def _stated_owner(home: Path) -> str | None:
    try:
        info = json.loads((home / HOME_FILE).read_text())
        if isinstance(info, dict) and isinstance(info.get("data_root"), str):
            return info["data_root"]
    except (OSError, ValueError, RecursionError):  # unreadable: the code sets' own attribute says
        pass
    return None


def owner(home: Path) -> str | None:
    """The data folder a cache folder belongs to, None if it says nothing (empty, or foreign)."""
    stated = _stated_owner(home)
    if stated is not None:
        return stated
    for f in _code_files(home):  # before folder.json: a code set's own attribute
        try:
            with h5py.File(f, "r") as h:
                root = h.attrs.get("data_root")
            if isinstance(root, (str, bytes)):
                return root.decode() if isinstance(root, bytes) else root
        except (OSError, ValueError):
            continue
    return None


def find_home(cache_dir, data) -> Path:
    """The cache folder of ``data`` (without making it): its own, else the one it would get."""
    cache, root = Path(cache_dir), _root(data)
    first, second = cache / Path(root).name, cache / _digest_name(root)
    for home in (first, second):
        if home.is_dir() and owner(home) == root:
            return home
    if cache.is_dir():  # a folder that moved here and took its codes along
        for home in sorted(cache.iterdir()):
            if home.is_dir() and _stated_owner(home) == root:
                return home
    return first if not first.exists() or owner(first) is None else second


def _same_images(home: Path, root: str) -> bool:
    """True when a sample of the images of a code set under ``home`` are under ``root`` with the
    same size and bytes."""
    files = _code_files(home)
    if not files:
        return False
    try:
        with h5py.File(files[0], "r") as f:
            paths = f["paths"].asstr()[()]
            sizes = f["fingerprints"][()][:, 0]
            digests = f["digests"][()] if "digests" in f else np.zeros(len(paths), np.uint64)
    except (OSError, KeyError, ValueError, IndexError):
        return False
    if not len(paths):
        return False
    for i in np.unique(np.linspace(0, len(paths) - 1, min(SAMPLE, len(paths))).astype(int)):
        p = Path(root) / str(paths[i])
        try:
            if p.stat().st_size != int(sizes[i]) or (int(digests[i]) and content_digest(p) != int(digests[i])):
                return False
        except OSError:
            return False
    return True


def _write_owner(home: Path, root: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".{HOME_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"data_root": root}) + "\n")
    durable_replace(tmp, home / HOME_FILE)


@contextlib.contextmanager
def _homes_lock(cache: Path):
    fd = os.open(cache / ".homes.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim_home(cache_dir, data) -> Path:
    """The cache folder of ``data``, made its own: the one it has; else, for a folder that moved,
    the one of its old place; else ``<name>/`` if free, ``<name>-<digest>/`` if not."""
    cache, root = Path(cache_dir), _root(data)
    with _homes_lock(cache):
        home = find_home(cache, root)
        if home.is_dir() and owner(home) == root:
            if not (home / HOME_FILE).exists():
                _write_owner(home, root)
            return home
        for other in sorted(p for p in cache.iterdir() if p.is_dir()):
            was = owner(other)
            if was and was != root and not Path(was).exists() and _same_images(other, root):
                _write_owner(other, root)
                logger.info(f"note: {was} moved to {root}: its codes in {other} are kept")
                return other
        _write_owner(home, root)
        return home
