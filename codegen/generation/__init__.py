"""Text generation for every caller: one decode loop for greedy search and
sampling (streamed or not), beam search beside it, and a prompt cache for
editors.

    generate(model, tokenizer, prompt_ids, config) -> [[Sequence, ...], ...]
    stream(model, tokenizer, [Request(prompt_ids, config), ...], prompt_cache=None) -> Stream of StreamEvent

`model` follows the models' protocol (`model(ids, attention_mask, cache)`,
`model.new_cache`, `model.config`); `tokenizer` the tokenizer's (`decode_bytes`,
`decode`, `eos_token_id`, `pad_token_id`, `len`). Prompts must already fit the
context with their max_new_tokens (the predictor truncates them).
"""
from .beam import beam_search
from .config import DECODE_STRATEGIES, GenerationConfig
from .decode import Batch, Request, Stream, generate, stream
from .outputs import Sequence, StreamEvent
from .prompt_cache import PromptCache
from .scoring import score

__all__ = ["Batch", "DECODE_STRATEGIES", "GenerationConfig", "PromptCache", "Request", "Sequence", "Stream",
           "StreamEvent", "beam_search", "generate", "score", "stream"]
