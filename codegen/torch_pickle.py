"""Read PyTorch checkpoint files (`torch.save` zip archives) without PyTorch.

A `.pt`/`.bin` file is a zip holding `data.pkl` (the object graph, with tensors
as references into storages) and one raw little-endian blob per storage under
`data/`. We unpickle the graph with a restricted unpickler that only builds
containers and lazy tensor stubs: nothing in the file runs code, and a tensor's
bytes are read only when `.numpy()` is called, so a 26 GB checkpoint can be
converted one tensor at a time.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass
class LazyTensor:
    """A tensor whose bytes stay in the archive until `numpy()`."""
    archive: "TorchArchive"
    storage_key: str
    dtype: object
    offset: int
    shape: tuple
    stride: tuple

    def numpy(self) -> np.ndarray:
        raw = self.archive.read_storage(self.storage_key)
        if self.dtype == "bfloat16":
            # numpy has no bfloat16: it is the top half of a float32
            flat = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            flat = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        if not self.shape:
            return flat[self.offset:self.offset + 1].reshape(()).copy()
        itemsize = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.shape, strides=[s * itemsize for s in self.stride])
        return np.ascontiguousarray(view)


class _Opaque:
    """Stands in for any non-tensor object a checkpoint carries (args, RNG states...)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _StorageType:
    def __init__(self, name):
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    archive, key, dtype = storage
    return LazyTensor(archive, key, dtype, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(tensor, *unused):
    return tensor


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive):
        super().__init__(file)
        self.archive = archive

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in ("float32", "float16", "bfloat16"):
            return name
        return _Opaque

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type = pid[1]
        if isinstance(storage_type, str):
            dtype = _STORAGE_DTYPES.get(storage_type)
        else:
            dtype = storage_type.dtype
        return (self.archive, str(pid[2]), dtype)


class TorchArchive:
    """An open `torch.save` zip archive; `load()` returns its object graph."""

    def __init__(self, path):
        self.path = str(path)
        if not zipfile.is_zipfile(self.path):
            raise ValueError(f"{self.path}: not a zip-format PyTorch checkpoint "
                             "(files from torch < 1.6 must be re-saved with a newer torch)")
        self.zip = zipfile.ZipFile(self.path)
        pickles = [n for n in self.zip.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{self.path}: expected one data.pkl in the archive, found {len(pickles)}")
        self.prefix = pickles[0][: -len("data.pkl")]

    def read_storage(self, key: str) -> bytes:
        return self.zip.read(f"{self.prefix}data/{key}")

    def load(self):
        with self.zip.open(f"{self.prefix}data.pkl") as f:
            return _Unpickler(f, self).load()

    def close(self):
        self.zip.close()


def load_torch_file(path):
    """The object graph of a torch.save file, tensors as `LazyTensor`s."""
    try:
        return TorchArchive(path).load()
    except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: corrupt PyTorch checkpoint ({e})") from e
