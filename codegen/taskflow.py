"""`Taskflow("code_generation")`: PaddleNLP's one-liner, on codegen's predictor.

Keyword arguments and defaults follow PaddleNLP's code_generation task, so code
written for it runs unchanged; `max_length`/`min_length` count new tokens there
and here. Its output too: each completion is cut before the first unindented
`class`, `def`, `#`, `@`, `print` or `if` line and stripped of trailing
whitespace, unless `stop` says otherwise.
"""
from __future__ import annotations

from .generation import GenerationConfig
from .predictor import Predictor

STRATEGIES = ("greedy_search", "sampling", "beam_search")

# PaddleNLP's code_generation task splits each decoded completion at the first of these and
# rstrips it; given as stop strings they also end generation there instead of at max_length
PADDLENLP_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif")


class CodeGenerationTask:
    def __init__(self, model=None, *, batch_size: int = 1, max_length: int = 128, min_length: int = 0,
                 decode_strategy: str = "sampling", temperature: float = 0.6, top_k: int = 5, top_p: float = 1.0,
                 num_beams: int = 4, length_penalty: float = 1.0, repetition_penalty: float = 1.1,
                 output_scores: bool = False, use_faster: bool | None = None, use_fast: bool | None = None,
                 use_fp16_decoding: bool = False, num_return_sequences: int = 1, stop=None, seed: int | None = None,
                 language: str | None = None, device: str | None = None, quantize: str | None = None,
                 tensor_parallel: int | None = None, prompt_lookup_num_tokens: int = 0):
        if decode_strategy not in STRATEGIES:
            raise ValueError(f"decode_strategy must be one of {', '.join(STRATEGIES)}, got {decode_strategy!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        # PaddleNLP's stops are Python's (`\n#` would end C++ at its first `#include`)
        self.paddlenlp_cut = stop is None and (language is None or _is_python(language))
        if self.paddlenlp_cut:
            stop = PADDLENLP_STOPS
        elif isinstance(stop, str):
            stop = [stop]
        self.config = GenerationConfig(
            max_new_tokens=max_length, min_new_tokens=min_length, decode_strategy=decode_strategy,
            temperature=temperature, top_k=top_k, top_p=top_p,
            num_beams=num_beams if decode_strategy == "beam_search" else 1,
            length_penalty=length_penalty, repetition_penalty=repetition_penalty,
            num_return_sequences=num_return_sequences, stop=list(stop or []), seed=seed,
            prompt_lookup_num_tokens=prompt_lookup_num_tokens)
        self.config.validate()
        self.batch_size = batch_size
        self.output_scores = output_scores
        self.language = language
        self.predictor = Predictor(model, device=device, quantize=quantize,
                                   use_fast=use_fast if use_fast is not None else use_faster,
                                   use_fp16_decoding=use_fp16_decoding, tensor_parallel=tensor_parallel)

    def prompt(self, text):
        if self.language is None or not isinstance(text, str):
            return text
        from .languages import with_language_tag
        return with_language_tag(text, self.language)

    def __call__(self, inputs):
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, (str, list)) for t in texts):
            raise ValueError("input must be a string or a list of strings (or of token-id lists)")
        if not texts:
            raise ValueError("input is an empty list: give at least one prompt")
        completions, scores = [], []
        for start in range(0, len(texts), self.batch_size):
            batch = [self.prompt(t) for t in texts[start:start + self.batch_size]]
            for seqs in self.predictor.generate(batch, self.config):
                if self.config.num_return_sequences == 1:
                    completions.append(self.completion(seqs[0]))
                    scores.append(seqs[0].score)
                else:
                    completions.append([self.completion(s) for s in seqs])
                    scores.append([s.score for s in seqs])
        return (completions, scores) if self.output_scores else completions

    def completion(self, sequence) -> str:
        return sequence.text.rstrip() if self.paddlenlp_cut else sequence.text


def _is_python(language: str) -> bool:
    from .languages import canonical_language
    return canonical_language(language) == "Python"


class CodeTranslationTask(CodeGenerationTask):
    """CodeGeeX's translation: `Taskflow("code_translation", model=..., source_language="Python",
    target_language="Go")(source_code)` returns the code in the target language.

    Generation stops where the target language ends a top-level function. Give the
    target's signature as `target_prefix` to steer the translation; it starts the output.
    """

    def __init__(self, model=None, *, source_language: str, target_language: str, target_prefix: str = "",
                 decode_strategy: str = "greedy_search", max_length: int = 512, stop=None, **kwargs):
        from .languages import canonical_language, function_end_stops
        self.source_language = canonical_language(source_language)
        self.target_language = canonical_language(target_language)
        self.target_prefix = target_prefix
        stops = function_end_stops(self.target_language) if target_prefix else []
        super().__init__(model, decode_strategy=decode_strategy, max_length=max_length,
                         stop=[*stops, *([stop] if isinstance(stop, str) else stop or [])], **kwargs)

    def prompt(self, text):
        from .languages import translation_prompt
        if not isinstance(text, str):
            raise ValueError("code_translation takes source code as a string or a list of strings")
        return translation_prompt(text, self.source_language, self.target_language, self.target_prefix)

    def completion(self, sequence) -> str:
        from .languages import close_function
        text = sequence.text
        if self.target_prefix and sequence.finish_reason == "stop":
            text = close_function(text, self.target_language)
        return self.target_prefix + text


TASKS = {"code_generation": CodeGenerationTask, "code_translation": CodeTranslationTask}


def Taskflow(task: str = "code_generation", model=None, **kwargs):
    """Create a task: `Taskflow("code_generation", model=PATH_OR_NAME, **options)(prompts)`."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    return TASKS[task](model, **kwargs)
