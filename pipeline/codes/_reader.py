"""Stage 1's reader: images decoded and resized in a thread pool, a batch at a time, in order. Stage 1's
workers, predict and export all read images through it."""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline.data import ImageError, content_digest, load_image


@dataclasses.dataclass
class Batch:
    """One batch from :func:`read_batches`."""

    indices: np.ndarray               # positions in the image list, in order
    images: np.ndarray                # (n readable, size, size, 3) uint8
    ok: np.ndarray                    # per index: decoded?
    failures: list[tuple[str, str]]   # (relative path, reason) of those that were not
    digests: list[int]                # content digests of the readable ones
    large: list[str]                  # readable ones over Pillow's decompression-bomb warning limit


def batches_of(n: int, batch_size: int, start: int = 0) -> Iterator[np.ndarray]:
    """The index arrays of ``n`` images in batches, made as they are used (a million images'
    would be thousands of arrays held through a build)."""
    return (np.arange(s, min(s + batch_size, n)) + start for s in range(0, n, batch_size))


def read_batches(root: Path, paths, batches: Iterable[np.ndarray], size: int, threads: int, resize: str
                 ) -> Iterator[Batch]:
    """Decoded batches of ``paths[b]`` for each index array ``b`` of ``batches``, in order
    (``resize``: see :func:`~pipeline.data._scan.load_image`).

    Decoding runs in a thread pool (PIL releases the GIL) at most two batches ahead, so memory
    stays bounded whatever the data set size.
    """
    def load(i):
        large: list = []
        try:
            return load_image(Path(root) / paths[i], size, large, resize), content_digest(Path(root) / paths[i]), large
        except ImageError as exc:
            return None, str(exc), large
        except OSError as exc:  # gone between decoding and hashing
            return None, f"{type(exc).__name__}: {exc.strerror}", large

    batches = iter(batches)
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        pending = [(b, [pool.submit(load, i) for i in b]) for b in itertools.islice(batches, 2)]
        while pending:
            b, futs = pending.pop(0)
            nxt = next(batches, None)
            if nxt is not None:
                pending.append((nxt, [pool.submit(load, i) for i in nxt]))
            results = [f.result() for f in futs]
            ok = np.array([img is not None for img, _, _ in results], bool)
            imgs = (np.stack([img for img, _, _ in results if img is not None]) if ok.any()
                    else np.zeros((0, size, size, 3), np.uint8))
            yield Batch(np.asarray(b), imgs, ok,
                        failures=[(paths[i], err) for i, (img, err, _) in zip(b, results) if img is None],
                        digests=[d for img, d, _ in results if img is not None],
                        large=[p for _, _, large in results for p in large])
