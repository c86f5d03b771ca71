"""The predictor: load a model and tokenizer once, then generate or stream.

Taskflow, the server, the CLI and evaluation all go through this class, so
prompt truncation, device placement and the fast path are decided here once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Iterator, Sequence as Seq

from .generation import GenerationConfig, PromptCache, Request, StreamEvent, generate, stream

logger = logging.getLogger(__name__)

# The small Python model shipped inside the package, trained by run_clm.py on the standard library
# (examples/train_default_model.md): everything works offline with no download.
DEFAULT_MODEL = "codegen-stdlib-9M"


def pick_device(device: str | None) -> str:
    import paddle
    if device is None:
        device = "gpu" if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
    if device.startswith("gpu") and not paddle.device.is_compiled_with_cuda():
        raise ValueError(f"device {device!r} requested but this Paddle build has no CUDA support")
    if not (device == "cpu" or device.startswith("gpu")):
        raise ValueError(f"device must be 'cpu', 'gpu' or 'gpu:N', got {device!r}")
    paddle.set_device(device)
    return device


class Predictor:
    """`Predictor(model)` loads `model` (a converted directory, a public name under $CODEGEN_HOME, or by
    default the model shipped in the package); `generate` and `stream` take prompts as text."""

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | None = None,
                 quantize: str | None = None, use_fast: bool | None = None, use_fp16_decoding: bool = False,
                 prompt_cache_entries: int = 0):
        from .checkpoints import resolve_model_dir
        from .inference import load_for_inference
        from .tokenizer import load_tokenizer

        self.device = pick_device(device)
        self.model_dir = resolve_model_dir(model or DEFAULT_MODEL)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_for_inference(self.model_dir, quantize=quantize, use_fast=use_fast,
                                        use_fp16_decoding=use_fp16_decoding, device=self.device)
        self.model_config = self.model.config
        self.context_length = self.model_config.max_position_embeddings
        self.name = str(model or DEFAULT_MODEL)
        self.prompt_cache = PromptCache(prompt_cache_entries) if prompt_cache_entries else None

    # -- prompts ------------------------------------------------------------------

    def fit(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], int, bool]:
        """Left-truncate a prompt and clamp `max_new_tokens` to fit the context.

        The prompt keeps at least half the context (or all of itself if shorter);
        the new tokens get the rest. Returns (ids, max_new_tokens, truncated).
        """
        ctx = self.context_length
        if not prompt_ids:
            raise ValueError("prompt is empty: give at least one token of text")
        keep = max(ctx - max_new_tokens, min(len(prompt_ids), ctx // 2))
        truncated = len(prompt_ids) > keep
        ids = prompt_ids[-keep:] if truncated else prompt_ids
        return ids, min(max_new_tokens, ctx - len(ids)), truncated

    def encode(self, prompt: str | list[int], max_new_tokens: int) -> tuple[list[int], int, bool]:
        """Token ids for a prompt given as text or, as the OpenAI API allows, as token ids."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty: give the start of the code to complete")
            prompt_ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = self.model_config.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt token id {bad[0]} is outside the model's vocabulary 0..{vocab - 1}")
            prompt_ids = list(prompt)
        else:
            raise ValueError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        ids, max_new, truncated = self.fit(prompt_ids, max_new_tokens)
        if truncated:
            logger.warning("prompt of %d tokens left-truncated to %d to fit the model's context of %d",
                           len(prompt_ids), len(ids), self.context_length)
        return ids, max_new, truncated

    # -- generation ---------------------------------------------------------------

    def generate(self, prompts: Seq[str | list[int]], config: GenerationConfig):
        """One list of `Sequence`s (config.num_return_sequences each) per prompt."""
        config.validate()
        results = []
        # prompts fitted one by one since each may need its own clamp of max_new_tokens
        fitted = [self.encode(p, config.max_new_tokens) for p in prompts]
        groups: dict[int, list[int]] = {}
        for i, (_, max_new, _) in enumerate(fitted):
            groups.setdefault(max_new, []).append(i)
        results = [None] * len(prompts)
        for max_new, indices in groups.items():
            out = generate(self.model, self.tokenizer, [fitted[i][0] for i in indices],
                           replace(config, max_new_tokens=max_new))
            for i, seqs in zip(indices, out):
                results[i] = seqs
        return results

    def stream(self, requests: Seq[tuple[str, GenerationConfig]], **kwargs) -> Iterator[StreamEvent]:
        """Text deltas for several (prompt, config) requests decoded as one batch."""
        batch = []
        for prompt, config in requests:
            config.validate()
            ids, max_new, _ = self.encode(prompt, config.max_new_tokens)
            batch.append(Request(ids, replace(config, max_new_tokens=max_new)))
        return stream(self.model, self.tokenizer, batch, prompt_cache=self.prompt_cache, **kwargs)
