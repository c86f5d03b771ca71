"""Read PaddlePaddle state dicts (`paddle.save`'s `.pdparams`) as data, without `paddle.load`.

`paddle.save(state_dict, path)` pickles (protocol 2 to 4, 4 by default) a dict of
parameter name -> numpy array, plus "StructuredToParameterName@@" (name -> Paddle's
internal tensor name). With protocols 2 and 3, whose opcodes cannot hold more than
4 GB, an array over 1 GiB is saved flattened in slices "NAME@@.0", "NAME@@.1", ...,
listed under "UnpackBigParamInfor@@" with its shape. numpy pickles an array as
`_reconstruct(ndarray, ...)` whose state (shape, dtype, order, bytes) is set by BUILD.

`paddle.load` unpickles with no restriction: any global named in the file is
imported and may be called. Here the unpickler knows only numpy's array and dtype
constructors (and the two ways protocol 2 pickles bytes), as inert records, and
numpy itself never sees a pickled state: an array is made with `np.frombuffer`
only after its dtype, shape and byte count have been checked.
"""
from __future__ import annotations

import collections
import pickle
import reprlib
from dataclasses import dataclass
from math import prod

import numpy as np

from .restricted_pickle import MAX_INDEX, CheckpointError, RestrictedUnpickler, unpickle_checkpoint

SLICES_TABLE = "UnpackBigParamInfor@@"  # sic: Paddle's spelling

# numpy's dtype codes for numbers; an object or structured dtype is not a tensor
_NUMBER_DTYPES = {f"{kind}{size}" for kind, sizes in (("f", "248"), ("i", "1248"), ("u", "1248"))
                  for size in sizes} | {"b1"}
# numpy's dtype state for a plain number type, after its byte order
_PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)
_MAX_DIMS = 32  # numpy 1.x's limit
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 40


def _brief(value) -> str:
    """What the file holds where something else was expected, bounded in length and depth:
    a crafted pickle can nest lists far deeper than repr() recurses."""
    return _SHORT_REPR.repr(value)


class _DtypeRecord:
    """A number dtype's code and the byte order its BUILD sets."""

    def __init__(self, code: str):
        self.code, self.byteorder = code, "|"

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|")
                and state[2:] == _PLAIN_DTYPE_STATE):
            raise pickle.UnpicklingError(f"dtype {self.code} with the state {_brief(state)}, not a plain number type")
        self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        return dtype if self.byteorder == "|" else dtype.newbyteorder(self.byteorder)


class _ArrayRecord:
    """An array whose state BUILD sets to (version, shape, dtype, is_fortran, bytes); checked
    by `problem()`, made by `numpy()`."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    @property
    def shape(self) -> tuple:
        return self.state[1]

    @property
    def dtype(self) -> np.dtype:
        return self.state[2].numpy()

    def problem(self) -> str | None:
        """Why the pickled state is not an array of numbers (None when it is)."""
        if not (isinstance(self.state, tuple) and len(self.state) == 5 and self.state[0] == 1):
            return f"array state {_brief(self.state)} is not numpy's (1, shape, dtype, is_fortran, bytes)"
        _, shape, dtype, is_fortran, data = self.state
        if not isinstance(dtype, _DtypeRecord) or not isinstance(is_fortran, bool) or not isinstance(data, bytes):
            return (f"array state holds {type(dtype).__name__}, {type(is_fortran).__name__}, "
                    f"{type(data).__name__} where a dtype, a bool and bytes belong")
        if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < MAX_INDEX for n in shape)):
            return f"shape {_brief(shape)} is not up to {_MAX_DIMS} sizes in 0..{MAX_INDEX - 1}"
        needed = prod(shape) * dtype.numpy().itemsize
        if len(data) != needed:
            return f"shape {list(shape)} of {dtype.numpy().name} takes {needed} bytes, the file holds {len(data)}"
        return None

    def numpy(self) -> np.ndarray:
        _, shape, dtype, is_fortran, data = self.state
        return np.frombuffer(data, dtype=dtype.numpy()).reshape(shape, order="F" if is_fortran else "C")


@dataclass(frozen=True)
class _JoinedArray:
    """An array that protocols 2 and 3 saved as flat slices, joined when `numpy()` is called."""
    shape: tuple
    dtype: np.dtype
    slices: list

    def numpy(self) -> np.ndarray:
        return np.concatenate([part.numpy() for part in self.slices]).reshape(self.shape)


# The stand-ins are functions and plain objects, not classes, so that NEWOBJ (which calls
# `cls.__new__` on a class) cannot make a record without its checked fields.

def _dtype(code, align=False, copy=False) -> _DtypeRecord:
    """`numpy.dtype(code, align, copy)`."""
    if code not in _NUMBER_DTYPES:
        raise pickle.UnpicklingError(f"an array of dtype {_brief(code)} (only numbers are tensors)")
    return _DtypeRecord(code)


# `numpy.ndarray`, which a pickle names only as `_reconstruct`'s first argument
_NDARRAY = object()


def _reconstruct(subtype, *unused) -> _ArrayRecord:
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")`: an empty array BUILD fills."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"_reconstruct of {_brief(subtype)}, not of numpy.ndarray")
    return _ArrayRecord()


def _latin1_bytes(text, encoding):
    """`_codecs.encode`, as protocol 2 pickles bytes: a str of code points 0-255 in latin-1."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise pickle.UnpicklingError(f"_codecs.encode of {type(text).__name__} to {_brief(encoding)}, "
                                     f"not bytes as latin-1")
    return text.encode("latin1")


def _empty_bytes():
    """`bytes()`, as protocol 2 pickles b"" (an empty array's data); `bytes(n)` would allocate n."""
    return b""


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2's name
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
    # paddle.save pickles a dict of numpy arrays (not Tensors) as it is, OrderedDict included
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def load_paddle_state(path) -> dict:
    """Tensor name -> array (`.shape`, `.dtype`, `.numpy()`) of a `paddle.save` state dict, each
    array's dtype, shape and byte count checked. Values that are not arrays (the name table) are
    left out; arrays saved in slices are joined."""
    def load():
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path, _ALLOWED_GLOBALS).load()

    state = unpickle_checkpoint(path, "PaddlePaddle", load, (OSError,))
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    arrays = {}
    for name, value in state.items():
        if isinstance(name, str) and isinstance(value, _ArrayRecord):
            problem = value.problem()
            if problem:
                raise CheckpointError(f"{path}: tensor {name}: {problem}")
            arrays[name] = value
    table = state.get(SLICES_TABLE, {})
    joined = _sliced_arrays(path, table, arrays)
    slice_names = {part for info in table.values() for part in info["slices"]}
    return {**{name: a for name, a in arrays.items() if name not in slice_names}, **joined}


def _sliced_arrays(path, table, arrays: dict) -> dict:
    """Name -> `_JoinedArray` for the arrays protocols 2 and 3 split into slices."""
    if not isinstance(table, dict):
        raise CheckpointError(f"{path}: {SLICES_TABLE} is a {type(table).__name__}, not a dict")
    joined = {}
    for name, info in table.items():
        shape = info.get("OriginShape") if isinstance(info, dict) else None
        slice_names = info.get("slices") if isinstance(info, dict) else None
        if not (isinstance(shape, (tuple, list)) and isinstance(slice_names, list)
                and all(isinstance(part, str) for part in slice_names)):
            raise CheckpointError(f"{path}: tensor {name}: slice record {_brief(info)} is not "
                                  f"{{'OriginShape': shape, 'slices': [names]}}")
        missing = [s for s in slice_names if s not in arrays]
        if missing or not slice_names:
            raise CheckpointError(f"{path}: tensor {name}: slices {missing or slice_names} are not arrays in the file")
        slices = [arrays[s] for s in slice_names]
        dtypes = {part.dtype for part in slices}
        if len(dtypes) != 1 or any(len(part.shape) != 1 for part in slices):
            raise CheckpointError(f"{path}: tensor {name}: its slices are not flat arrays of one dtype")
        if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < MAX_INDEX for n in shape) \
                or len(shape) > _MAX_DIMS or prod(shape) != sum(part.shape[0] for part in slices):
            raise CheckpointError(f"{path}: tensor {name}: shape {_brief(list(shape))} does not hold its slices' "
                                  f"{sum(part.shape[0] for part in slices)} elements")
        joined[name] = _JoinedArray(tuple(shape), dtypes.pop(), slices)
    return joined
