"""THUDM CodeGeeX in Paddle.

A GPT-2 style decoder (learned word and position embeddings, pre-LayerNorm
layers with separate Q/K/V projections and a 4h MLP) that ends differently: after
the final LayerNorm comes a "top-query" layer whose queries are not computed from
the hidden states but from a learned embedding of the position alone, while its
keys and values come from the hidden states. The output is projected onto the
word embeddings (tied, no bias).

`num_layers` counts the top-query layer: CodeGeeX-13B is 39 standard layers plus
the top-query layer, 40 in all, and every one of them keeps keys and values in the
KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .config_io import (MAX_HIDDEN, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, ConfigDict, check_epsilon,
                        check_parameter_count, check_sizes)
from .cache import KVCache, attend, attention_bias, full_attention_mask, position_ids_from_mask
from .parallel import UNSPLIT, TensorParallel


@dataclass
class CodeGeeXConfig(ConfigDict):
    hidden_size: int = 5120
    num_layers: int = 40
    num_attention_heads: int = 40
    padded_vocab_size: int = 52224
    max_position_embeddings: int = 2048
    layernorm_epsilon: float = 1e-5
    eos_token_id: int = 50256
    model_type: str = "codegeex"

    def __post_init__(self):
        check_sizes(self, {"hidden_size": (1, MAX_HIDDEN), "num_layers": (1, MAX_LAYERS),
                           "num_attention_heads": (1, MAX_HIDDEN), "padded_vocab_size": (1, MAX_VOCAB),
                           "max_position_embeddings": (1, MAX_POSITIONS)})
        check_epsilon("layernorm_epsilon", self.layernorm_epsilon)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        check_parameter_count(self.parameter_count)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def vocab_size(self) -> int:
        return self.padded_vocab_size

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def parameter_count(self) -> int:
        h = self.hidden_size
        layer = 2 * 2 * h + 4 * (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)  # LayerNorms, attention, MLP
        embeddings = (self.padded_vocab_size + 2 * self.max_position_embeddings) * h
        return embeddings + self.num_layers * layer + 2 * h



CODEGEEX_CONFIGS = {"THUDM/codegeex-13b": CodeGeeXConfig()}


def fast_gelu(x: paddle.Tensor) -> paddle.Tensor:
    """The sigmoid approximation of GELU that CodeGeeX was trained with (MindSpore's)."""
    return x * F.sigmoid(1.702 * x)


class CodeGeeXAttention(nn.Layer):
    def __init__(self, config: CodeGeeXConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.num_heads = parallel.part(config.num_attention_heads, "CodeGeeX's attention heads")
        width = self.num_heads * config.head_dim
        self.query = nn.Linear(h, width)
        self.key = nn.Linear(h, width)
        self.value = nn.Linear(h, width)
        self.dense = nn.Linear(width, h)

    def _heads(self, x):
        return x.reshape([x.shape[0], x.shape[1], self.num_heads, self.config.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, query_input, kv_input, bias, cache: KVCache | None, layer_index: int):
        query = self._heads(self.query(query_input))
        key = self._heads(self.key(kv_input))
        value = self._heads(self.value(kv_input))
        if cache is not None:
            key, value = cache.update(layer_index, key, value)
        return self.dense(attend(query, key, value, bias))


class CodeGeeXMLP(nn.Layer):
    def __init__(self, config: CodeGeeXConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        inner = parallel.part(4 * config.hidden_size, "CodeGeeX's MLP width")
        self.dense_h_to_4h = nn.Linear(config.hidden_size, inner)
        self.dense_4h_to_h = nn.Linear(inner, config.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(fast_gelu(self.dense_h_to_4h(x)))


class CodeGeeXLayer(nn.Layer):
    """A pre-LayerNorm layer; as the top-query layer, queries come from `query_input`."""

    def __init__(self, config: CodeGeeXConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        eps = config.layernorm_epsilon
        self.parallel = parallel
        self.input_layernorm = nn.LayerNorm(config.hidden_size, epsilon=eps)
        self.attention = CodeGeeXAttention(config, parallel)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, epsilon=eps)
        self.mlp = CodeGeeXMLP(config, parallel)

    def forward(self, x, bias, cache, layer_index, query_input=None):
        h = self.input_layernorm(x)
        # the top-query embedding enters the attention as it is, without a LayerNorm
        attention = self.attention(h if query_input is None else query_input, h, bias, cache, layer_index)
        x = x + self.parallel.all_reduce(attention)
        return x + self.parallel.all_reduce(self.mlp(self.post_attention_layernorm(x)))


class CodeGeeXForCausalLM(nn.Layer):
    """`model(input_ids, attention_mask=None, cache=None)` -> float32 logits [batch, seq, vocab].

    With a cache, `input_ids` are the new tokens and `attention_mask` covers the
    cached positions plus the new ones ([batch, cache.length + seq]). With `parallel`, this
    rank's share of every layer (models/parallel.py); the cache holds this rank's heads.
    """

    # Megatron's split (models/parallel.py): the Linears whose outputs, and whose inputs, are divided
    column_parallel = ("query", "key", "value", "dense_h_to_4h")
    row_parallel = ("dense", "dense_4h_to_h")

    def __init__(self, config: CodeGeeXConfig, parallel: TensorParallel = UNSPLIT):
        super().__init__()
        self.config = config
        self.parallel = parallel
        c = config
        self.word_embeddings = nn.Embedding(c.padded_vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.top_query_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.layers = nn.LayerList([CodeGeeXLayer(c, parallel) for _ in range(c.num_layers - 1)])
        self.final_layernorm = nn.LayerNorm(c.hidden_size, epsilon=c.layernorm_epsilon)
        self.top_query_layer = CodeGeeXLayer(c, parallel)

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype: str | None = None) -> KVCache:
        c = self.config
        dtype = dtype or self.word_embeddings.weight.dtype
        return KVCache(c.num_layers, batch_size, self.top_query_layer.attention.num_heads,
                       max_length or c.max_position_embeddings, c.head_dim, dtype)

    def forward(self, input_ids, attention_mask=None, cache: KVCache | None = None, last_only: bool = False):
        """`last_only` returns logits for the last position alone ([batch, 1, vocab])."""
        seq = input_ids.shape[1]
        attention_mask = full_attention_mask(input_ids, attention_mask, cache, self.config.max_position_embeddings)
        positions = position_ids_from_mask(attention_mask, seq)
        bias = attention_bias(attention_mask, seq)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, cache, i)
        x = self.top_query_layer(self.final_layernorm(x), bias, cache, len(self.layers),
                                 query_input=self.top_query_embeddings(positions))
        if cache is not None:
            cache.advance(seq)
        if last_only:
            x = x[:, -1:]
        logits = paddle.matmul(x, self.word_embeddings.weight, transpose_y=True)
        return logits.astype("float32")
