"""Assembling a job's results into OpenAI `text_completion` responses and chunks."""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from .engine import PromptScores
from .logprobs import LogprobsBuilder, merge
from .protocol import CompletionParams

if TYPE_CHECKING:
    from ..predictor import PreparedPrompt


class CompletionRun:
    """The choices of one request as its job's items arrive.

    Choice i belongs to prompt i // n, as OpenAI orders them. `consume` returns
    the streaming chunks an item produces; the non-streamed response is built
    from the same state, so both carry the same text.
    """

    def __init__(self, params: CompletionParams, prompts: list[PreparedPrompt], tokenizer, model_id: str):
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.params = params
        self.prompts = prompts
        rows = len(prompts) * params.n
        self.texts = [""] * rows
        self.finish_reasons: list[str | None] = [None] * rows
        self.logprobs: list[dict | None] = [None] * rows
        self._builders = [LogprobsBuilder(tokenizer) for _ in range(rows)] if params.logprobs is not None else None
        self.completion_tokens = 0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def chunk(self, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_id,
                "choices": choices, **extra}

    # -- building choices -------------------------------------------------------------

    def _add(self, index: int, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        self.texts[index] += text
        if logprobs is not None:
            self.logprobs[index] = merge(self.logprobs[index], logprobs)
        if finish_reason is not None:
            self.finish_reasons[index] = finish_reason
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def echo_chunks(self) -> list[dict]:
        """The prompts as the first text of each choice (`echo` without `logprobs`)."""
        return [self.chunk([self._add(i, self.prompts[i // self.params.n].text, None, None)])
                for i in range(len(self.texts))]

    def consume(self, item) -> list[dict]:
        if isinstance(item, PromptScores):
            return self._consume_scores(item)
        index = item.index
        self.completion_tokens += len(item.token_ids)
        logprobs = None
        if self._builders is not None:
            logprobs = self._builders[index].add(item.token_ids, item.logprobs, item.top_logprobs)
        if not item.text and not item.token_ids and item.finish_reason is None:
            return []
        return [self.chunk([self._add(index, item.text, logprobs, item.finish_reason)])]

    def _consume_scores(self, scores: PromptScores) -> list[dict]:
        n = self.params.n
        text = self.prompts[scores.prompt_index].text
        chunks = []
        for index in range(scores.prompt_index * n, (scores.prompt_index + 1) * n):
            logprobs = self._builders[index].add(scores.token_ids, scores.logprobs, scores.top_logprobs)
            chunks.append(self.chunk([self._add(index, text, logprobs, None)]))
        return chunks

    def finish(self) -> list[dict]:
        """Chunks closing choices that generated nothing (max_tokens 0)."""
        return [self.chunk([self._add(i, "", None, "length")])
                for i, reason in enumerate(self.finish_reasons) if reason is None]

    def response(self) -> dict:
        choices = [{"text": text, "index": i, "logprobs": self.logprobs[i], "finish_reason": self.finish_reasons[i]}
                   for i, text in enumerate(self.texts)]
        return self.chunk(choices, usage=self.usage())
