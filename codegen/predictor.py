"""The predictor: load a model and tokenizer once, then generate or stream.

Taskflow, the server, the CLI and evaluation all go through this class, so
prompt truncation, device placement and the fast path are decided here once.

Under `python -m paddle.distributed.launch --nproc_per_node N` the model is split N ways
(inference/parallel.py): every process builds the same Predictor and must make the same
calls with the same prompts, as a script run by every rank does; each returns the same results.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Iterator, Sequence as Seq

from .generation import Batch, GenerationConfig, PromptCache, Request, StreamEvent, generate, score, stream

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
    # "gpu" is the launch's own GPU for this rank under paddle.distributed.launch: name it
    return paddle.get_device() if device == "gpu" else device


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as the model will see it (see `Predictor.prepare`)."""
    ids: list[int]
    max_new_tokens: int    # the request's max_new_tokens, clamped to what the context leaves
    dropped: int           # prompt tokens cut to fit the context (estimated for text cut before tokenizing)
    text: str              # the prompt as the model sees it, for `echo`


class PromptError(ValueError):
    """A prompt the model cannot take; `param` names the request field at fault ("prompt" or "suffix")."""

    def __init__(self, message: str, param: str = "prompt"):
        super().__init__(message)
        self.param = param


class Predictor:
    """`Predictor(model)` loads `model` (a converted directory, a public name under $CODEGEN_HOME, or by
    default the model shipped in the package); `generate` and `stream` take prompts as text.

    `tensor_parallel` splits the model over that many processes of a paddle.distributed launch
    (default: all of them; 1: none, each holds the whole model); `parallel` says this one's share."""

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | None = None,
                 quantize: str | None = None, use_fast: bool | None = None, use_fp16_decoding: bool = False,
                 prompt_cache_entries: int = 0, prompt_cache_mb: int | None = None,
                 tensor_parallel: int | None = None):
        from .checkpoints import resolve_model_dir
        from .inference import load_for_inference
        from .inference.parallel import join_launch
        from .tokenizer import load_tokenizer

        self.device = pick_device(device)
        self.model_dir = resolve_model_dir(model or DEFAULT_MODEL)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.parallel = join_launch(tensor_parallel)
        self.model = load_for_inference(self.model_dir, quantize=quantize, use_fast=use_fast,
                                        use_fp16_decoding=use_fp16_decoding, device=self.device,
                                        parallel=self.parallel)
        self.model_config = self.model.config
        self.context_length = self.model_config.max_position_embeddings
        self.name = str(model or DEFAULT_MODEL)
        self.prompt_cache = PromptCache(prompt_cache_entries, prompt_cache_mb and prompt_cache_mb * 2 ** 20) \
            if prompt_cache_entries else None

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

    @property
    def vocab_size(self) -> int:
        """Ids below this are valid prompt tokens: the model has an embedding row and the tokenizer text
        for each (a checkpoint's embedding may be padded past its tokenizer, or be smaller than it)."""
        return min(len(self.tokenizer), self.model_config.vocab_size)

    @cached_property
    def max_prompt_chars(self) -> int:
        """No token stands for more than `longest_token_bytes` bytes, so this many characters of text
        make at least `context_length` tokens: more of a prompt than this can never reach the model."""
        return self.context_length * self.tokenizer.longest_token_bytes

    def check_ids(self, ids: Seq[int], what: str = "prompt", param: str | None = None) -> None:
        """PromptError naming the first id of `what` (request field `param`) that is not a token of this model."""
        vocab = self.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise PromptError(f"{what} has token id {bad}, outside this model's vocabulary 0..{vocab - 1}",
                              param or what.split("[")[0])

    def prompt_ids(self, prompt: str | Seq[int], what: str = "prompt", keep_end: bool = True) -> tuple[list[int], int]:
        """The checked token ids of a prompt given as text or, as the OpenAI API allows, as token ids.

        Text longer than `max_prompt_chars` is cut to its end (its start with keep_end=False) before
        it is tokenized, so the work is bounded by the context, not by the prompt. Returns (ids, tokens
        cut off before tokenizing), the latter estimated from the kept text's characters per token and
        0 when nothing was cut. Near the cut the kept tokens may differ from the whole text's
        tokenization, but the cut lies at least a context's worth of tokens from the kept end.
        """
        cut = 0
        if isinstance(prompt, str):
            cut = max(0, len(prompt) - self.max_prompt_chars)
            text = prompt[cut:] if keep_end else prompt[:len(prompt) - cut]
            ids = self.tokenizer.encode(text)
            cut = round(cut * len(ids) / len(text)) if cut else 0
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
        else:
            raise PromptError(f"{what} must be a string or a list of token ids, got {type(prompt).__name__}",
                              what.split("[")[0])
        self.check_ids(ids, what)
        return ids, cut

    def encode(self, prompt: str | list[int], max_new_tokens: int) -> tuple[list[int], int, bool]:
        """Token ids for a prompt given as text or token ids, fitted to the context (see `fit`)."""
        if not prompt:
            raise PromptError("prompt is empty: give the start of the code to complete")
        prompt_ids, cut = self.prompt_ids(prompt)
        ids, max_new, truncated = self.fit(prompt_ids, max_new_tokens)
        if truncated:
            logger.warning("prompt of %s tokens left-truncated to %d to fit the model's context of %d",
                           f"about {len(prompt_ids) + cut}" if cut else len(prompt_ids), len(ids),
                           self.context_length)
        return ids, max_new, truncated

    def prepare(self, prompt: str | list[int], max_new_tokens: int, suffix: str | None = None,
                what: str = "prompt") -> PreparedPrompt:
        """An editor's prompt fitted to the context; with a suffix and an infilling model, a PSM prompt.

        As OpenAI does, an empty prompt generates from the start of a document. `suffix` is ignored
        when the tokenizer has no fill-in-the-middle tokens. Errors are PromptErrors naming `what`
        (or the suffix); `dropped` counts text cut before tokenizing as estimated (see `prompt_ids`).
        """
        ids, cut = self.prompt_ids(prompt, what)
        fim = self.tokenizer.fim_sentinels
        if suffix is not None and fim is not None:
            suffix_ids, suffix_cut = self.prompt_ids(suffix, "suffix", keep_end=False)
            return self._prepare_infill(ids, suffix_ids, fim, max_new_tokens, cut + suffix_cut)
        if not ids:
            ids = [self.tokenizer.eos_token_id]
        kept, max_new, truncated = self.fit(ids, max_new_tokens)
        text = prompt if isinstance(prompt, str) and not (truncated or cut) else self.tokenizer.decode(kept)
        return PreparedPrompt(kept, max_new, cut + len(ids) - len(kept), text)

    def _prepare_infill(self, prefix: list[int], suffix: list[int], fim, max_new_tokens: int,
                        cut: int) -> PreparedPrompt:
        sentinels = (fim.prefix, fim.suffix, fim.middle)
        self.check_ids(sentinels, "the tokenizer's fill-in-the-middle tokens (used with suffix)", "suffix")
        prefix_id, suffix_id, middle_id = sentinels
        whole = [prefix_id, *prefix, suffix_id, *suffix, middle_id]
        kept, max_new, truncated = self.fit(whole, max_new_tokens)
        if truncated:
            # the code next to the cursor matters most: cut the prefix's start and the
            # suffix's end, giving the suffix up to a quarter of the room
            room = len(kept) - len(sentinels)
            suffix_keep = min(len(suffix), max(room // 4, room - len(prefix)))
            prefix = prefix[len(prefix) - (room - suffix_keep):]
            suffix = suffix[:suffix_keep]
            kept = [prefix_id, *prefix, suffix_id, *suffix, middle_id]
        return PreparedPrompt(kept, max_new, cut + len(whole) - len(kept), self.tokenizer.decode(kept))

    def score(self, prompt_ids: list[int], top: int):
        """(logprobs, top_logprobs) of each prompt token given those before it; None for the first."""
        return score(self.model, self.tokenizer, prompt_ids, top)

    # -- generation ---------------------------------------------------------------

    def same_draws(self, config: GenerationConfig) -> GenerationConfig:
        """`config`, seeded by rank 0 if it samples without a seed and the model is split: every rank
        must then draw the same tokens, or their next forward passes would not match."""
        if self.parallel.world == 1 or config.decode_strategy != "sampling" or config.seed is not None:
            return config
        from .inference.parallel import from_rank_zero
        return replace(config, seed=from_rank_zero(secrets.randbits(63)))

    def generate(self, prompts: Seq[str | list[int]], config: GenerationConfig):
        """One list of `Sequence`s (config.num_return_sequences each) per prompt."""
        config = self.same_draws(config.validate())
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
            config = self.same_draws(config.validate())
            ids, max_new, _ = self.encode(prompt, config.max_new_tokens)
            batch.append(Request(ids, replace(config, max_new_tokens=max_new)))
        return stream(self.model, self.tokenizer, batch, prompt_cache=self.prompt_cache, **kwargs)

    def batch(self, prefill_chunk: int | None = None) -> Batch:
        """An empty joinable batch over this model and prompt cache: `add(ids, config)` prepared prompts
        (see `prepare`) at any time and `step()` it; `prefill_chunk` bounds the prompt positions per step."""
        return Batch(self.model, self.tokenizer, self.prompt_cache, prefill_chunk)

    def release_freed_memory(self) -> None:
        """Hand heap memory freed since the last call back to the OS. A long-running batch should call
        this now and then: its prompt-cache entries and per-step arrays come and go in many sizes, and
        glibc keeps the freed pages, so the process grows without holding more."""
        from .inference import release_freed_memory
        release_freed_memory()
