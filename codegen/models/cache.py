"""A key/value cache allocated once per generation, and the masked attention over it.

Both architectures write each new step's keys and values into preallocated
buffers instead of concatenating, so a decode step touches fixed shapes and a
compiled step can replace the eager one without changing callers.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F


class KVCache:
    """Per-layer key/value buffers of shape [batch, heads, max_length, head_dim].

    `length` counts the positions already written. A forward pass writes its new
    positions at `length` for every layer and the model calls `advance` once at
    the end, so all layers of one pass see the same offset.
    """

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_length: int,
                 head_dim: int, dtype: str = "float32"):
        shape = [batch_size, num_heads, max_length, head_dim]
        self.keys = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.max_length = max_length
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, key: paddle.Tensor, value: paddle.Tensor):
        """Store `key`/`value` [batch, heads, new, head_dim]; return all keys/values so far."""
        end = self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; this step needs {end}")
        write_positions(self.keys[layer], self.length, key.astype(self.keys[layer].dtype))
        write_positions(self.values[layer], self.length, value.astype(self.values[layer].dtype))
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_positions: int) -> None:
        self.length += num_positions

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache over rows [start, stop) that shares these buffers (its writes land here) and starts at
        our length. A decode step over some of the rows runs on it; the caller then advances this cache."""
        if (start, stop) == (0, self.batch_size):
            return self
        view = KVCache.__new__(KVCache)
        view.keys, view.values = [k[start:stop] for k in self.keys], [v[start:stop] for v in self.values]
        view.max_length, view.length = self.max_length, self.length
        if view.keys[0].data_ptr() != self.keys[0][start:start + 1].data_ptr():
            raise RuntimeError("slicing the KV cache copied it; Paddle's strided views are needed (FLAGS_use_stride_kernel)")
        return view

    def reorder(self, batch_index: paddle.Tensor) -> None:
        """Gather batch rows, e.g. to follow the surviving beams in beam search."""
        self.keys = [paddle.index_select(k, batch_index, axis=0) for k in self.keys]
        self.values = [paddle.index_select(v, batch_index, axis=0) for v in self.values]

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on (the buffers are overwritten later)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length


def write_positions(buffer: paddle.Tensor, start: int, values: paddle.Tensor, first_row: int = 0) -> None:
    """`buffer[first_row:first_row + rows, :, start:start + n] = values` for a cache buffer
    [batch, heads, max_length, head_dim] and `values` [rows, heads, n, head_dim].

    Paddle's copy into a 4-D strided slice is slow (0.4 ms of CPU for a 1,300-position prompt
    of 4 heads of 16, the server benchmark's model, twice as long on a busy machine); seen as
    [batch * heads, max_length * head_dim], each head's stretch is one contiguous run and the
    same copy takes well under half of that.
    """
    batch, heads, max_length, head_dim = buffer.shape
    rows, n = values.shape[0], values.shape[2]
    flat = buffer.reshape([batch * heads, max_length * head_dim])
    if flat.data_ptr() != buffer.data_ptr():    # not a view (no strided kernels): write the slice itself
        buffer[first_row:first_row + rows, :, start:start + n] = values
        return
    flat[first_row * heads:(first_row + rows) * heads, start * head_dim:(start + n) * head_dim] = \
        values.reshape([rows * heads, n * head_dim])


def full_attention_mask(input_ids: paddle.Tensor, attention_mask, cache: KVCache | None,
                        context: int) -> paddle.Tensor:
    """The 0/1 mask over cached + new positions, checked against the cache and the context."""
    batch, seq = input_ids.shape
    past = cache.length if cache is not None else 0
    if attention_mask is None:
        attention_mask = paddle.ones([batch, past + seq], dtype="int64")
    elif attention_mask.shape[1] != past + seq:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions, "
                         f"expected cached {past} + new {seq}")
    if past + seq > context:
        raise ValueError(f"sequence of {past + seq} tokens exceeds the model's context of {context}")
    return attention_mask


def attention_bias(attention_mask: paddle.Tensor, num_new: int) -> paddle.Tensor:
    """Additive bias [batch, 1, num_new, total] from a 0/1 padding mask [batch, total].

    The new positions are the last `num_new` of `total`; each may see itself, the
    positions before it, and no padding. One fill value for everything masked keeps
    rows that see nothing (padding queries) finite instead of NaN.
    """
    total = attention_mask.shape[1]
    past = total - num_new
    query_pos = paddle.arange(past, total, dtype="int64").unsqueeze(1)
    key_pos = paddle.arange(0, total, dtype="int64").unsqueeze(0)
    causal = (key_pos <= query_pos).unsqueeze(0).unsqueeze(0)            # [1, 1, new, total]
    keep = paddle.logical_and(causal, attention_mask.astype("bool")[:, None, None, :])
    zero = paddle.zeros([], dtype="float32")
    masked = paddle.full([], float(paddle.finfo(paddle.float32).min), dtype="float32")
    return paddle.where(keep, zero, masked)


def position_ids_from_mask(attention_mask: paddle.Tensor, num_new: int) -> paddle.Tensor:
    """Positions of the last `num_new` tokens, counting only real (unpadded) tokens.

    Left padding then gives every row the positions it would have had unpadded.
    """
    positions = paddle.cumsum(attention_mask.astype("int64"), axis=1) - 1
    positions = paddle.clip(positions, min=0)
    return positions[:, -num_new:]


def attend(query: paddle.Tensor, key: paddle.Tensor, value: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
    """Scaled dot-product attention of [batch, heads, seq, head_dim] tensors -> [batch, seq, heads * head_dim].

    Scores and softmax are float32 whatever the weights' dtype, as both reference models do.
    """
    scores = paddle.matmul(query.astype("float32"), key.astype("float32"), transpose_y=True)
    scores = scores / math.sqrt(query.shape[-1]) + bias
    probs = F.softmax(scores, axis=-1).astype(value.dtype)
    out = paddle.matmul(probs, value).transpose([0, 2, 1, 3])
    return out.reshape([out.shape[0], out.shape[1], -1])
