"""The fast CPU inference path for CodeGeeX: each layer is one compiled operator.

`FastCodeGeeXForCausalLM` wraps a `CodeGeeXForCausalLM` whose Linears are
`WeightOnlyLinear`s (int8 / bf16 / fp16 / fp32). Each layer, the top-query layer
included, runs as `codegeex_decoder_layer` (codegen/kernels): LayerNorm, Q, K and V
read in one pass from one packed weight, the KV-cache write and attention, dense +
residual, LayerNorm, fc1 + fast GELU, fc2 + residual. Learned position embeddings,
the final LayerNorm and the top-query embeddings are looked up here, in Paddle; the
tied output projection reads the fp32 word embeddings through the kernels' matvec.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn

from ..models.cache import KVCache, full_attention_mask, position_ids_from_mask
from ..models.codegeex import CodeGeeXForCausalLM
from .quantize import WeightOnlyLinear


def pack_qkv(attention) -> WeightOnlyLinear:
    """The attention's query, key and value Linears as one, rows [query | value | key]: the layout
    the kernels' attention reads (CodeGen's fused projection with a single shard)."""
    parts = [attention.query, attention.value, attention.key]
    formats = {part.weight_dtype for part in parts}
    if len(formats) != 1 or any(part.bias is None for part in parts):
        raise ValueError(f"query, key and value must share one weight format and have biases, got {formats}")
    scales = [part.weight_scale for part in parts]
    return WeightOnlyLinear(paddle.concat([part.weight for part in parts]),
                            paddle.concat(scales) if scales[0] is not None else None,
                            paddle.concat([part.bias for part in parts]))


class FastCodeGeeXForCausalLM(nn.Layer):
    """A `CodeGeeXForCausalLM` with fused decoding; `kernels` the loaded `codegen.kernels.Kernels`.

    Each layer's query, key and value are packed into `attention.qkv` (the three Linears are
    dropped, so the weights are held once): the wrapped `self.model` no longer runs by itself.
    """

    def __init__(self, model: CodeGeeXForCausalLM, kernels):
        super().__init__()
        self.model = model
        self.config = model.config
        self._kernels = kernels
        self._layer_weights = []
        for layer in [*model.layers, model.top_query_layer]:
            attention = layer.attention
            attention.qkv = pack_qkv(attention)
            del attention.query, attention.key, attention.value
            self._layer_weights.append(kernels.codegeex_layer_weights(
                layer.input_layernorm, attention.qkv, attention.dense, layer.post_attention_layernorm,
                layer.mlp.dense_h_to_4h, layer.mlp.dense_4h_to_h))

    def new_cache(self, batch_size: int, max_length: int | None = None, dtype: str | None = None) -> KVCache:
        c = self.config
        if dtype not in (None, "float32"):
            raise ValueError(f"the fused CodeGeeX layers keep a float32 KV cache, not {dtype}")
        return KVCache(c.num_layers, batch_size, c.num_attention_heads, max_length or c.max_position_embeddings,
                       c.head_dim, "float32")

    def forward(self, input_ids, attention_mask=None, cache: KVCache | None = None, last_only: bool = False):
        """As `CodeGeeXForCausalLM.forward`, on CPU tensors."""
        batch, seq = input_ids.shape
        if cache is None:  # the operator writes keys/values somewhere: a cache for this call
            cache = self.new_cache(batch, min(seq, self.config.max_position_embeddings))
        if cache.keys[0].dtype != paddle.float32 or not input_ids.place.is_cpu_place():
            raise ValueError("the fused CodeGeeX layers run on CPU tensors with a float32 KV cache")
        full_mask = full_attention_mask(input_ids, attention_mask, cache, self.config.max_position_embeddings)
        if cache.length + seq > cache.max_length:
            raise ValueError(f"KV cache holds {cache.max_length} positions; this step needs {cache.length + seq}")
        with paddle.no_grad():
            return self._fused_forward(input_ids, attention_mask, full_mask, cache, last_only)

    def _fused_forward(self, input_ids, attention_mask, full_mask, cache: KVCache, last_only: bool):
        c, model, kernels = self.config, self.model, self._kernels
        mask = attention_mask.astype("int64").contiguous() if attention_mask is not None else None
        positions = position_ids_from_mask(full_mask, input_ids.shape[1])
        x = model.word_embeddings(input_ids) + model.position_embeddings(positions)
        options = dict(past=int(cache.length), num_heads=c.num_attention_heads, eps=float(c.layernorm_epsilon))
        *standard, top = self._layer_weights
        for i, weights in enumerate(standard):
            x = kernels.codegeex_layer(x, weights, cache.keys[i], cache.values[i], mask, **options)
        x = kernels.codegeex_layer(model.final_layernorm(x), top, cache.keys[-1], cache.values[-1], mask,
                                   model.top_query_embeddings(positions), **options)
        cache.advance(input_ids.shape[1])
        if last_only:
            x = x[:, -1:]
        # the word embeddings [vocab, hidden] are already the [out, in] rows the matvec reads
        return kernels.weight_only_linear(x.contiguous(), model.word_embeddings.weight)
