"""Stage 1's writer: one part file per partition and output, its codes appended batch by batch
under a temporary name and moved into place whole (the format: :mod:`._format`)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline._faults import fault_point
from pipeline._files import check_room, durable_replace, unique_tmp
from pipeline.codes._format import FORMAT_VERSION, STR, FailedImage
from pipeline.data import PathList

PATH_BLOCK = 4096  # a part's paths written a block at a time


class PartWriter:
    """Writes one part file: codes appended batch by batch under a temporary name, the
    bookkeeping at the end, then moved into place whole (``part-<id>.h5``)."""

    def __init__(self, folder: Path, part_id: str, dim: int, dtype: str, max_rows: int, attrs: dict):
        self.final = Path(folder) / f"part-{part_id}.h5"
        self.tmp = unique_tmp(self.final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        check_room(self.final, max_rows * dim * np.dtype(dtype).itemsize + max_rows * 200,
                   kept=f"the parts finished so far are kept in {folder}: make room and run the same command again")
        # a chunk cache that holds a chunk until it is full: each chunk written once
        chunk_bytes = max(1, min(256, max_rows)) * dim * np.dtype(dtype).itemsize
        self.f = h5py.File(self.tmp, "w", rdcc_nbytes=max(1 << 20, 4 * chunk_bytes))
        self.codes = self.f.create_dataset("codes", (0, dim), dtype=dtype, maxshape=(None, dim),
                                           chunks=(max(1, min(256, max_rows)), dim))
        self.f.attrs.update(attrs, format_version=FORMAT_VERSION, partition=part_id)
        # held as arrays and blocks of bytes, not a str and an int an image: a partition of a
        # large build has 30,000 images, and a worker holds its part's columns until it closes
        self.n_rows, self.paths, self.fingerprints, self.digests, self.failed = 0, [], [], [], []

    def append(self, codes: np.ndarray, paths, fingerprints, digests, failed: list[FailedImage]) -> None:
        n = self.n_rows
        self.codes.resize(n + len(codes), axis=0)
        self.codes[n:] = codes
        self.n_rows += len(codes)
        self.paths.append(PathList.of(paths))
        self.fingerprints.append(np.asarray(fingerprints, np.int64).reshape(-1, 2))
        self.digests.append(np.asarray(digests, np.uint64).reshape(-1))
        self.failed += failed

    def close(self, runtime: str) -> Path:
        f = self.f
        paths = PathList.concat(self.paths)
        column = f.create_dataset("paths", shape=(len(paths),), dtype=STR)
        for s in range(0, len(paths), PATH_BLOCK):  # (strings made a block at a time)
            column[s:s + PATH_BLOCK] = np.array(list(paths[s:s + PATH_BLOCK]), dtype=object)
        f.create_dataset("fingerprints", data=np.concatenate(self.fingerprints or [np.zeros((0, 2), np.int64)]))
        f.create_dataset("digests", data=np.concatenate(self.digests or [np.zeros(0, np.uint64)]))
        f.create_dataset("failed_paths", data=[x.path for x in self.failed], dtype=STR)
        f.create_dataset("failed_reasons", data=[x.reason for x in self.failed], dtype=STR)
        f.create_dataset("failed_fingerprints",
                         data=np.asarray([x.fingerprint for x in self.failed], np.int64).reshape(-1, 2))
        f.attrs["runtime"] = runtime
        f.close()
        fault_point("part-tmp-written")
        durable_replace(self.tmp, self.final)
        fault_point("part-saved")
        return self.final

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.tmp.unlink(missing_ok=True)
