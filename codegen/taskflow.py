"""`Taskflow("code_generation")`: PaddleNLP's one-liner, on codegen's predictor.

Keyword arguments and defaults follow PaddleNLP's code_generation task, so code
written for it runs unchanged; `max_length`/`min_length` count new tokens there
and here.
"""
from __future__ import annotations

from .generation import GenerationConfig
from .predictor import Predictor

STRATEGIES = ("greedy_search", "sampling", "beam_search")


class CodeGenerationTask:
    def __init__(self, model=None, *, batch_size: int = 1, max_length: int = 128, min_length: int = 0,
                 decode_strategy: str = "sampling", temperature: float = 0.6, top_k: int = 5, top_p: float = 1.0,
                 num_beams: int = 4, length_penalty: float = 1.0, repetition_penalty: float = 1.1,
                 output_scores: bool = False, use_faster: bool | None = None, use_fast: bool | None = None,
                 use_fp16_decoding: bool = False, num_return_sequences: int = 1, stop=None, seed: int | None = None,
                 language: str | None = None, device: str | None = None, quantize: str | None = None):
        if decode_strategy not in STRATEGIES:
            raise ValueError(f"decode_strategy must be one of {', '.join(STRATEGIES)}, got {decode_strategy!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(stop, str):
            stop = [stop]
        self.config = GenerationConfig(
            max_new_tokens=max_length, min_new_tokens=min_length, decode_strategy=decode_strategy,
            temperature=temperature, top_k=top_k, top_p=top_p,
            num_beams=num_beams if decode_strategy == "beam_search" else 1,
            length_penalty=length_penalty, repetition_penalty=repetition_penalty,
            num_return_sequences=num_return_sequences, stop=list(stop or []), seed=seed)
        self.config.validate()
        self.batch_size = batch_size
        self.output_scores = output_scores
        self.language = language
        self.predictor = Predictor(model, device=device, quantize=quantize,
                                   use_fast=use_fast if use_fast is not None else use_faster,
                                   use_fp16_decoding=use_fp16_decoding)

    def prompt(self, text: str) -> str:
        if self.language is None:
            return text
        from .languages import with_language_tag
        return with_language_tag(text, self.language)

    def __call__(self, inputs):
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ValueError("input must be a string or a list of strings")
        if not texts:
            raise ValueError("input is an empty list: give at least one prompt")
        completions, scores = [], []
        for start in range(0, len(texts), self.batch_size):
            batch = [self.prompt(t) for t in texts[start:start + self.batch_size]]
            for seqs in self.predictor.generate(batch, self.config):
                if self.config.num_return_sequences == 1:
                    completions.append(seqs[0].text)
                    scores.append(seqs[0].score)
                else:
                    completions.append([s.text for s in seqs])
                    scores.append([s.score for s in seqs])
        return (completions, scores) if self.output_scores else completions


TASKS = {"code_generation": CodeGenerationTask}


def Taskflow(task: str = "code_generation", model=None, **kwargs):
    """Create a task: `Taskflow("code_generation", model=PATH_OR_NAME, **options)(prompts)`."""
    if task == "code_translation":
        from .translation import CodeTranslationTask
        return CodeTranslationTask(model, **kwargs)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join([*TASKS, 'code_translation'])}")
    return TASKS[task](model, **kwargs)
