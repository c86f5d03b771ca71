"""Read PyTorch checkpoint files (`torch.save` zip archives) without PyTorch.

A `.pt`/`.bin` file is a zip holding `data.pkl` (the object graph, with tensors
as references into storages) and one raw little-endian blob per storage under
`data/`. We unpickle the graph with a restricted unpickler that knows only the
globals a state dict needs (like PyTorch's `weights_only`) and refuses any
other, so nothing in the file can run code. A tensor is a lazy stub whose shape,
stride and offset are checked against its storage before anything is read, and
its bytes are read only when `.numpy()` is called, so a 26 GB checkpoint can be
converted one tensor at a time.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from math import prod
from typing import Callable

import numpy as np

from .restricted_pickle import MAX_INDEX, CheckpointError, RestrictedUnpickler, unpickle_checkpoint


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

# A state dict's object graph takes kilobytes (CodeGeeX-13B's: about 60 KB), optimizer
# states a few megabytes; the tensors' bytes live in their own members. Anything far
# larger is a decompression bomb, not a checkpoint.
_MAX_PICKLE_BYTES = 256 << 20


def _itemsize(dtype) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _immutable(cls):
    """A frozen dataclass with slots and no `__setstate__` (which dataclass would add): a
    pickle's BUILD can change neither a layout after it was checked nor an object the
    allow-list shares between loads."""
    cls = dataclass(frozen=True, slots=True)(cls)

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the pickle sets the state of a {cls.__name__}")

    cls.__setstate__ = __setstate__
    return cls


@_immutable
class _Storage:
    """A storage a tensor refers to: its archive, zip member, dtype and declared element count."""
    archive: "TorchArchive"
    key: str
    dtype: object
    numel: int


@_immutable
class LazyTensor:
    """A tensor whose bytes stay in the archive until `numpy()`."""
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple

    @property
    def dtype(self):
        return self.storage.dtype

    def layout_problem(self) -> str | None:
        """Why this tensor's shape, stride and offset do not fit its storage (None when they do)."""
        layout = f"shape {list(self.shape)}, stride {list(self.stride)}, offset {self.offset!r}"
        values = (*self.shape, *self.stride, self.offset)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return f"{layout}: sizes, strides and offset must be integers"
        if len(self.shape) != len(self.stride):
            return f"{layout}: {len(self.shape)} sizes but {len(self.stride)} strides"
        if not all(0 <= v < MAX_INDEX for v in values) or prod(self.shape) >= MAX_INDEX:
            return f"{layout}: sizes, strides and offset must be in 0..{MAX_INDEX - 1}"
        end = self._end()
        if end > self.storage.numel:
            return (f"{layout}: reaches element {end - 1} of storage {self.storage.key}, "
                    f"which holds {self.storage.numel}")
        return None

    def _end(self) -> int:
        """One past the last storage element the tensor covers (its offset when it is empty)."""
        if 0 in self.shape:
            return self.offset
        return self.offset + 1 + sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))

    def numpy(self) -> np.ndarray:
        problem = self.layout_problem()
        if problem:
            raise CheckpointError(f"{self.storage.archive.path}: tensor in storage {self.storage.key}: {problem}")
        if 0 in self.shape:
            return np.zeros(self.shape, np.float32 if self.dtype == "bfloat16" else self.dtype)
        raw = self.storage.archive.read_storage(self.storage, self.offset, self._end())
        if self.dtype == "bfloat16":
            # numpy has no bfloat16: it is the top half of a float32
            flat = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            flat = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        # in bounds: layout_problem() checked that every element lies inside `raw`
        view = np.lib.stride_tricks.as_strided(
            flat, shape=self.shape, strides=[s * flat.itemsize for s in self.stride])
        return np.ascontiguousarray(view)


class _Ignored:
    """Stands in for the few plain-data objects checkpoints carry beside their weights
    (training arguments, RNG states): built from nothing, never used."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


@_immutable
class _StorageType:
    dtype: object


@_immutable
class _Constructor:
    """An allowed function, as REDUCE calls it."""
    function: Callable

    def __call__(self, *args):
        return self.function(*args)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor's storage must be a storage record, got {type(storage).__name__} "
                                     f"{storage!r:.40}")
    if not (isinstance(size, tuple) and isinstance(stride, tuple)):
        raise pickle.UnpicklingError(f"a tensor's size and stride must be tuples, got {type(size).__name__} "
                                     f"and {type(stride).__name__}")
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(tensor, *unused):
    return tensor


# Every global a checkpoint's pickle may name, and what it becomes. REDUCE can call only
# these; any other global (os.system, builtins.exec, a class of some package) is refused.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Constructor(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Constructor(_rebuild_parameter),
    ("torch", "Size"): tuple,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    # dtypes, as Megatron's training arguments hold them
    **{("torch", name): name for name in ("float32", "float16", "bfloat16")},
    # Megatron (CodeGeeX) saves its arguments and numpy's RNG state (an ndarray, whose
    # bytes protocol 2 pickles through _codecs.encode) beside the weights
    **{global_: _Ignored for global_ in [
        ("argparse", "Namespace"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode")]},
}


class _Unpickler(RestrictedUnpickler):
    def __init__(self, file, archive):
        super().__init__(file, archive.path, _ALLOWED_GLOBALS)
        self.archive = archive

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.archive.path}: unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.archive.path}: storage {key} has no storage type ({storage_type!r:.80})")
        if not isinstance(numel, int) or isinstance(numel, bool) or not 0 <= numel < MAX_INDEX:
            raise CheckpointError(f"{self.archive.path}: storage {key} declares {numel!r:.80} elements")
        self.archive.check_storage_member(key, numel * _itemsize(storage_type.dtype), numel)
        return _Storage(self.archive, key, storage_type.dtype, numel)


# what zipfile raises for damaged, encrypted or oddly compressed members
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)


class TorchArchive:
    """An open `torch.save` zip archive; `load()` returns its object graph."""

    def __init__(self, path):
        self.path = str(path)
        if not zipfile.is_zipfile(self.path):
            raise CheckpointError(f"{self.path}: not a zip-format PyTorch checkpoint "
                                  "(files from torch < 1.6 must be re-saved with a newer torch)")
        self.zip = zipfile.ZipFile(self.path)
        pickles = [n for n in self.zip.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{self.path}: expected one data.pkl in the archive, found {len(pickles)}")
        self.prefix = pickles[0][: -len("data.pkl")]

    def _member(self, key: str) -> zipfile.ZipInfo:
        try:
            return self.zip.getinfo(f"{self.prefix}data/{key}")
        except KeyError:
            raise CheckpointError(f"{self.path}: storage {key} is not in the archive") from None

    def check_storage_member(self, key: str, nbytes: int, numel: int):
        """Refuse a storage whose member's size (from the zip directory, before inflating
        anything) is not what its declared element count takes."""
        size = self._member(key).file_size
        if size != nbytes:
            raise CheckpointError(f"{self.path}: storage {key} declares {numel} elements ({nbytes} bytes) "
                                  f"but its zip member holds {size} bytes; refused without reading it")

    def read_storage(self, storage: _Storage, start: int, end: int) -> bytes:
        """Elements start..end-1 of a storage, reading no further into its member."""
        itemsize = _itemsize(storage.dtype)
        try:
            with self.zip.open(self._member(storage.key)) as f:
                f.seek(start * itemsize)
                raw = f.read((end - start) * itemsize)
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{self.path}: storage {storage.key} cannot be read ({type(e).__name__}: {e})") from e
        if len(raw) != (end - start) * itemsize:
            raise CheckpointError(f"{self.path}: storage {storage.key} is truncated")
        return raw

    def load(self):
        info = self.zip.getinfo(f"{self.prefix}data.pkl")
        if info.file_size > _MAX_PICKLE_BYTES:
            raise CheckpointError(f"{self.path}: data.pkl inflates to {info.file_size} bytes, more than the "
                                  f"{_MAX_PICKLE_BYTES} any state dict needs; refused without reading it")
        with self.zip.open(info) as f:
            return _Unpickler(f, self).load()

    def close(self):
        self.zip.close()


def named_tensors(graph, prefix: str = ""):
    """(dotted name, LazyTensor) for every tensor reachable through dicts, lists and tuples."""
    seen, todo = set(), [(prefix.rstrip("."), graph)]
    while todo:
        name, node = todo.pop()
        if isinstance(node, LazyTensor):
            yield name, node
        elif isinstance(node, (dict, list, tuple)) and id(node) not in seen:
            seen.add(id(node))  # a pickle can make cycles
            items = node.items() if isinstance(node, dict) else enumerate(node)
            todo.extend((f"{name}.{key}" if name else str(key), value) for key, value in reversed(list(items)))


def load_torch_file(path):
    """The object graph of a torch.save file, tensors as `LazyTensor`s whose layouts fit their storages."""
    graph = unpickle_checkpoint(path, "PyTorch", lambda: TorchArchive(path).load(), _ZIP_ERRORS)
    for name, tensor in named_tensors(graph):
        problem = tensor.layout_problem()
        if problem:
            raise CheckpointError(f"{path}: tensor {name}: {problem}")
    return graph
