"""Evaluation: HumanEval / HumanEval-X pass@k with sandboxed execution, translation, perplexity.

Light to import: toolchains start and Paddle loads only when a command needs them.
The command line is `codegen eval ...` (see `codegen.evaluation.cli`).
"""
from .metrics import mean_pass_at_k, pass_at_k
from .problems import LANGUAGES, Problem, Sample, load_humaneval, load_humaneval_x, read_samples
from .truncation import stop_sequences, truncate_completion

__all__ = ["LANGUAGES", "Problem", "Sample", "load_humaneval", "load_humaneval_x", "mean_pass_at_k", "pass_at_k",
           "read_samples", "stop_sequences", "truncate_completion"]
