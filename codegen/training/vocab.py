"""Growing a model's vocabulary when the tokenizer gains tokens (the FIM sentinels).

Both architectures pad their vocabulary beyond the tokenizer (CodeGen 51200 rows
for about 50300 tokens), so new tokens usually take existing rows; only when the
tokenizer outgrows the rows are the vocabulary tensors enlarged.
"""
from __future__ import annotations

import numpy as np

# per model type: the config field holding the vocabulary size, and the tensors
# with a vocabulary axis (name -> axis)
VOCAB_FIELD = {"codegen": "vocab_size", "codegeex": "padded_vocab_size"}
VOCAB_TENSORS = {
    "codegen": {"transformer.wte.weight": 0, "lm_head.weight": 1, "lm_head.bias": 0},
    "codegeex": {"word_embeddings.weight": 0},
}
# kept a multiple of this, as the released checkpoints are, for efficient matmuls
PAD_MULTIPLE = 64


def vocab_parameters(model) -> list:
    state = model.state_dict()
    return [state[name] for name in VOCAB_TENSORS[model.config.model_type]]


def fit_vocab(model, num_tokens: int):
    """`model`, or a copy with room for `num_tokens` tokens; new rows start at the mean of the old ones."""
    from ..checkpoints import build_model

    if num_tokens <= model.config.vocab_size:
        return model
    model_type = model.config.model_type
    config = model.config.to_dict()
    new_size = -(-num_tokens // PAD_MULTIPLE) * PAD_MULTIPLE
    config[VOCAB_FIELD[model_type]] = new_size
    grown = build_model(config)
    state = {}
    for name, tensor in model.state_dict().items():
        array = tensor.numpy()
        axis = VOCAB_TENSORS[model_type].get(name)
        if axis is not None:
            extra_shape = list(array.shape)
            extra_shape[axis] = new_size - array.shape[axis]
            mean = array.mean(axis=axis, keepdims=True)
            array = np.concatenate([array, np.broadcast_to(mean, extra_shape)], axis=axis)
        state[name] = array
    grown.set_state_dict(state)
    return grown
