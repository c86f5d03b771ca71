"""Weight formats in numpy: int8 rows with one scale each, bfloat16, float16, float32.

`codegen convert --quantize/--dtype` writes these and the loader makes them at load
time with the same functions, so a pre-quantized checkpoint holds exactly the int8
weights and scales that quantizing at load makes (and that the CPU kernels' own
`pack_weight` makes: absmax / 127 per output row, rounded half to even).

A Linear weight is read as row blocks of its Paddle layout [in, out] and packed into
[out, in] (one row per output, the layout `WeightOnlyLinear` keeps): no block is
larger than BLOCK_BYTES in float32, so no full fp32 copy of a big tensor is ever made.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

FORMATS = ("float32", "float16", "bfloat16", "int8")
# the numpy array each format is held in (numpy has no bfloat16: its bits as uint16)
STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int8": np.int8}
BLOCK_BYTES = 64 << 20

RowReader = Callable[[int, int], np.ndarray]  # (start, stop) -> float32 rows [stop - start, ...], a new array


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even; NaN stays a (quiet) NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded) if nan.any() else rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode(x: np.ndarray, fmt: str) -> np.ndarray:
    """float32 values in `fmt`'s storage (int8 excepted: it needs scales, see `pack_linear`)."""
    return bfloat16_bits(x) if fmt == "bfloat16" else x.astype(STORAGE[fmt], copy=False)


def row_blocks(rows: int, row_elements: int) -> Iterator[tuple[int, int]]:
    step = max(1, BLOCK_BYTES // max(1, 4 * row_elements))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def cast_rows(read: RowReader, shape: tuple, fmt: str) -> np.ndarray:
    """The tensor `read` gives, block by block, in `fmt`'s storage and the same layout."""
    shape = tuple(shape)
    out = np.empty(shape, dtype=STORAGE[fmt])
    if not shape:
        out[()] = encode(read(0, 1), fmt)
        return out
    row_elements = int(np.prod(shape[1:], dtype=np.int64))
    for start, stop in row_blocks(shape[0], row_elements):
        out[start:stop] = encode(read(start, stop), fmt)
    return out


def int8_scales(read: RowReader, shape: tuple) -> np.ndarray:
    """Per-output scales [out] of a weight [in, out]: absmax / 127 (1 for an all-zero row, whose
    zeros any scale reproduces)."""
    absmax = np.zeros(shape[1], dtype=np.float32)
    for start, stop in row_blocks(shape[0], shape[1]):
        np.maximum(absmax, np.abs(read(start, stop)).max(axis=0), out=absmax)
    return np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)


def pack_linear(read: RowReader, shape: tuple, fmt: str,
                scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A Linear weight [in, out] as `fmt` [out, in], with its int8 scales [out] (None for float formats).

    `scale` gives int8 scales made elsewhere: those of the whole weight when `read` gives a share of its rows.
    """
    rows, cols = shape
    packed = np.empty((cols, rows), dtype=STORAGE[fmt])
    if fmt == "int8" and scale is None:
        scale = int8_scales(read, shape)
    for start, stop in row_blocks(rows, cols):
        block = read(start, stop)
        if scale is not None:
            # in place: each full-block temporary would add to the peak
            np.divide(block, scale, out=block)
            np.clip(np.rint(block, out=block), -127, 127, out=block)
            block = block.astype(np.int8)
        packed[:, start:stop] = encode(block, fmt).T
    return packed, scale


def format_name(dtype: str) -> str:
    """The format for a user's spelling ('int8', 'bf16', 'fp16', 'fp32', 'float16', ...)."""
    names = {"int8": "int8", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
             "fp32": "float32", "float32": "float32"}
    try:
        return names[str(dtype).replace("paddle.", "")]
    except KeyError:
        raise ValueError(f"weight dtype must be one of {sorted(names)}, got {dtype!r}") from None
