"""Read PyTorch's legacy (pre-1.6, non-zip) ``.pth`` files with plain pickle and numpy.

The legacy layout is five things written back to back: a pickled magic number, a pickled
protocol version, a pickled system-info dict, the pickled object itself (tensors in it refer to
storages by key through pickle's persistent-id mechanism) and a pickled list of storage keys,
followed by each storage as an 8-byte little-endian element count and its raw bytes.
PyTorch is never imported: weights ship as pip packages and must load where torch is absent.
"""
from __future__ import annotations

import collections
import pickle
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageRef:
    """Placeholder for a storage until its bytes, which follow the pickle, are read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
        self.array: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        base = self.storage.array
        itemsize = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.array(view)  # own the memory, contiguous


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused):
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name  # only used as a tag in persistent ids
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported object in weight file: {module}.{name}")

    def __init__(self, fh: BinaryIO):
        super().__init__(fh)
        self.storages: dict[str, _StorageRef] = {}

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, *_view = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, _STORAGE_DTYPES[storage_type], numel)
        return self.storages[key]


def load_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Load a legacy ``.pth`` state dict as ``{name: numpy array}`` (same shapes as in torch).

    Every record goes through the restricted unpickler, which builds nothing but tensors,
    storages, ordered dicts and plain values: a crafted file cannot run code.
    """
    with open(path, "rb") as fh:
        if _Unpickler(fh).load() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch weight file (bad magic number)")
        _Unpickler(fh).load()  # protocol version
        sys_info = _Unpickler(fh).load()
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: only little-endian legacy weight files are supported")
        unpickler = _Unpickler(fh)
        obj = unpickler.load()
        keys = _Unpickler(fh).load()
        if not isinstance(keys, list) or not set(keys) <= set(unpickler.storages):
            raise ValueError(f"{path}: the storage key list does not match the tensors")
        for key in keys:
            ref = unpickler.storages[key]
            numel = int(np.frombuffer(fh.read(8), "<i8")[0])
            data = fh.read(numel * ref.dtype.itemsize)
            if len(data) != numel * ref.dtype.itemsize:
                raise ValueError(f"{path}: truncated weight file")
            ref.array = np.frombuffer(data, dtype=ref.dtype)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return collections.OrderedDict((k, v.to_numpy()) for k, v in obj.items())
