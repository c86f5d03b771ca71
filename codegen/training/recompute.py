"""Activation recomputation (--recompute): keep only each decoder block's input during the
forward pass and recompute the block in the backward pass, trading compute for memory.

The blocks' `forward` is wrapped on the instance, so parameter names and the
model classes stay as they are.
"""
from __future__ import annotations

import inspect

from paddle.distributed.fleet.utils import recompute


def decoder_blocks(model) -> list:
    if model.config.model_type == "codegen":
        return list(model.transformer.h)
    return [*model.layers, model.top_query_layer]


def enable_recompute(model) -> None:
    for block in decoder_blocks(model):
        forward = block.forward
        signature = inspect.signature(forward)

        def checkpointed(*args, _block=block, _forward=forward, _signature=signature, **kwargs):
            if not _block.training:
                return _forward(*args, **kwargs)
            # Paddle's recompute takes positional arguments only (CodeGeeX's top-query
            # layer gets its queries by keyword)
            return recompute(_forward, *_signature.bind(*args, **kwargs).args)

        block.forward = checkpointed
