"""Salesforce CodeGen in Paddle.

A GPT-J style decoder: token embeddings only (positions enter through rotary on
the first `rotary_dim` dims of each head), one LayerNorm feeding attention and
MLP in parallel, and an untied LM head with bias. Parameter names and the fused
QKV layout follow the released checkpoints so conversion is a transpose, not a
reshuffle.
"""
from __future__ import annotations

from dataclasses import dataclass

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .config_io import (MAX_HIDDEN, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, ConfigDict, check_epsilon,
                        check_parameter_count, check_sizes, check_table_size)
from .cache import KVCache, attend, attention_bias, full_attention_mask, position_ids_from_mask
from .parallel import UNSPLIT, TensorParallel

# Salesforce trained on TPU v4 with 4-way model parallelism and kept that
# sharding in the fused projection: each of MP_NUM shards holds [query | value | key].
MP_NUM = 4


@dataclass
class CodeGenConfig(ConfigDict):
    vocab_size: int = 51200
    n_positions: int = 2048
    n_embd: int = 1024
    n_layer: int = 20
    n_head: int = 16
    rotary_dim: int = 32
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    model_type: str = "codegen"

    def __post_init__(self):
        check_sizes(self, {"vocab_size": (1, MAX_VOCAB), "n_positions": (1, MAX_POSITIONS), "n_embd": (1, MAX_HIDDEN),
                           "n_layer": (1, MAX_LAYERS), "n_head": (1, MAX_HIDDEN), "rotary_dim": (0, MAX_HIDDEN)})
        if self.n_inner is not None:
            check_sizes(self, {"n_inner": (1, 4 * MAX_HIDDEN)})
        check_epsilon("layer_norm_epsilon", self.layer_norm_epsilon)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % MP_NUM:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by {MP_NUM} (the fused QKV layout)")
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and at most head_dim ({self.head_dim})")
        check_parameter_count(self.parameter_count)
        check_table_size("the rotary tables (n_positions × rotary_dim)", self.rotary_table_size)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def num_layers(self) -> int:
        return self.n_layer

    @property
    def num_heads(self) -> int:
        return self.n_head

    @property
    def parameter_count(self) -> int:
        e, i = self.n_embd, self.inner_dim
        block = 2 * e + 4 * e * e + (e * i + i) + (i * e + e)  # ln_1, qkv + out, fc_in, fc_out
        return self.vocab_size * e + self.n_layer * block + 2 * e + (e * self.vocab_size + self.vocab_size)

    @property
    def rotary_table_size(self) -> int:
        """Floats in the rotary sin and cos tables the model computes when it is built."""
        return self.n_positions * self.rotary_dim



def _sizes(n_embd, n_layer, n_head, rotary_dim):
    return dict(n_embd=n_embd, n_layer=n_layer, n_head=n_head, rotary_dim=rotary_dim)


_SIZES = {
    "350M": _sizes(1024, 20, 16, 32),
    "2B": _sizes(2560, 32, 32, 64),
    "6B": _sizes(4096, 33, 16, 64),
    "16B": _sizes(6144, 34, 24, 64),
}

# The published checkpoints: nl, multi and mono share each size's shape and
# differ only in the data they were trained on.
CODEGEN_CONFIGS = {
    f"Salesforce/codegen-{size}-{data}": CodeGenConfig(**dims)
    for size, dims in _SIZES.items()
    for data in ("nl", "multi", "mono")
}


def rotary_tables(num_positions: int, rotary_dim: int):
    """sin and cos [num_positions, rotary_dim // 2] with GPT-J's frequencies."""
    inv_freq = 1.0 / (10000 ** (paddle.arange(0, rotary_dim, 2, dtype="float32") / rotary_dim))
    angles = paddle.arange(num_positions, dtype="float32").unsqueeze(1) * inv_freq.unsqueeze(0)
    return paddle.sin(angles), paddle.cos(angles)


def apply_rotary(x: paddle.Tensor, sin: paddle.Tensor, cos: paddle.Tensor) -> paddle.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of x [b, s, h, rotary_dim].

    sin/cos are [b, s, 1, rotary_dim // 2]; each angle serves one pair.
    """
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated_even = even * cos - odd * sin
    rotated_odd = odd * cos + even * sin
    return paddle.stack([rotated_even, rotated_odd], axis=-1).flatten(start_axis=-2)


class CodeGenAttention(nn.Layer):
    def __init__(self, config: CodeGenConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        self.config = config
        # split over ranks, each holds whole shards of the fused projection, so its heads are contiguous
        self.shards = parallel.part(MP_NUM, "CodeGen's fused qkv shards")
        self.num_heads = config.n_head // MP_NUM * self.shards
        width = self.num_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.n_embd, 3 * width, bias_attr=False)
        self.out_proj = nn.Linear(width, config.n_embd, bias_attr=False)

    def _split_qkv(self, qkv):
        c = self.config
        b, s = qkv.shape[0], qkv.shape[1]
        shards = qkv.reshape([b, s, self.shards, 3, c.n_head // MP_NUM, c.head_dim])
        # shard order within the fused projection is query, value, key; unbind rather than three slices,
        # whose gradients would each be a zero-filled copy of the whole projection
        query, value, key = paddle.unbind(shards, axis=3)
        heads = [b, s, self.num_heads, c.head_dim]
        return query.reshape(heads), key.reshape(heads), value.reshape(heads)

    def forward(self, x, sin, cos, bias, cache: KVCache | None, layer_index: int):
        c = self.config
        query, key, value = self._split_qkv(self.qkv_proj(x))
        r = c.rotary_dim
        if r < c.head_dim:
            query = paddle.concat([apply_rotary(query[..., :r], sin, cos), query[..., r:]], axis=-1)
            key = paddle.concat([apply_rotary(key[..., :r], sin, cos), key[..., r:]], axis=-1)
        else:
            query, key = apply_rotary(query, sin, cos), apply_rotary(key, sin, cos)
        query, key, value = (t.transpose([0, 2, 1, 3]) for t in (query, key, value))
        if cache is not None:
            key, value = cache.update(layer_index, key, value)
        return self.out_proj(attend(query, key, value, bias))


class CodeGenMLP(nn.Layer):
    def __init__(self, config: CodeGenConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        inner = parallel.part(config.inner_dim, "CodeGen's MLP width")
        self.fc_in = nn.Linear(config.n_embd, inner)
        self.fc_out = nn.Linear(inner, config.n_embd)

    def forward(self, x):
        return self.fc_out(F.gelu(self.fc_in(x), approximate=True))


class CodeGenBlock(nn.Layer):
    def __init__(self, config: CodeGenConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        self.parallel = parallel
        self.ln_1 = nn.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon)
        self.attn = CodeGenAttention(config, parallel)
        self.mlp = CodeGenMLP(config, parallel)

    def forward(self, x, sin, cos, bias, cache, layer_index):
        h = self.ln_1(x)
        if self.parallel.world == 1:
            return x + self.attn(h, sin, cos, bias, cache, layer_index) + self.mlp(h)
        # attention and MLP both read h and both end in the residual: one all-reduce of their
        # summed partials is the two all-reduces' total, at half the collectives
        return x + self.parallel.all_reduce(self.attn(h, sin, cos, bias, cache, layer_index) + self.mlp(h))


class CodeGenModel(nn.Layer):
    def __init__(self, config: CodeGenConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.LayerList([CodeGenBlock(config, parallel) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon)


class CodeGenForCausalLM(nn.Layer):
    """`model(input_ids, attention_mask=None, cache=None)` -> float32 logits [batch, seq, vocab].

    With a cache, `input_ids` are the new tokens and `attention_mask` covers the
    cached positions plus the new ones ([batch, cache.length + seq]). With `parallel`, this
    rank's share of every block (models/parallel.py); the cache holds this rank's heads.
    """

    # Megatron's split (models/parallel.py): the Linears whose outputs, and whose inputs, are divided
    column_parallel = ("qkv_proj", "fc_in")
    row_parallel = ("out_proj", "fc_out")

    def __init__(self, config: CodeGenConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.transformer = CodeGenModel(config, parallel)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        sin, cos = rotary_tables(config.n_positions, config.rotary_dim)
        self.register_buffer("rotary_sin", sin, persistable=False)
        self.register_buffer("rotary_cos", cos, persistable=False)

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype: str | None = None) -> KVCache:
        c = self.config
        dtype = dtype or self.lm_head.weight.dtype
        return KVCache(c.n_layer, batch_size, self.transformer.h[0].attn.num_heads, max_length or c.n_positions,
                       c.head_dim, dtype)

    def forward(self, input_ids, attention_mask=None, cache: KVCache | None = None, last_only: bool = False):
        """`last_only` returns logits for the last position alone ([batch, 1, vocab]):
        a prefill needs no more, and the LM head dominates a small model's prefill."""
        seq = input_ids.shape[1]
        attention_mask = full_attention_mask(input_ids, attention_mask, cache, self.config.n_positions)
        positions = position_ids_from_mask(attention_mask, seq)
        sin = F.embedding(positions, self.rotary_sin).unsqueeze(2)
        cos = F.embedding(positions, self.rotary_cos).unsqueeze(2)
        bias = attention_bias(attention_mask, seq)
        x = self.transformer.wte(input_ids)
        for i, block in enumerate(self.transformer.h):
            x = block(x, sin, cos, bias, cache, i)
        if cache is not None:
            cache.advance(seq)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.transformer.ln_f(x)).astype("float32")
