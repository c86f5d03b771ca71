"""Perplexity of a model on code files, per language (told by the file extension).

A file longer than the window is scored in overlapping windows: each window
scores only the `stride` tokens it adds, with up to `window - stride` tokens
before them as context, so every token is scored exactly once. Each file starts
after the end-of-text token (the models' document separator), so its first
token is scored too.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

EXTENSIONS = {
    ".py": "python", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".java": "java", ".js": "js", ".mjs": "js", ".cjs": "js", ".ts": "typescript", ".go": "go", ".rs": "rust",
    ".cs": "csharp", ".rb": "ruby", ".php": "php", ".scala": "scala", ".kt": "kotlin", ".swift": "swift",
    ".sh": "shell", ".lua": "lua", ".r": "r", ".jl": "julia", ".sql": "sql",
}


@dataclass
class LanguageScore:
    files: int = 0
    tokens: int = 0
    nll: float = 0.0                 # summed negative log-likelihood, nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    def to_dict(self) -> dict:
        if not self.tokens:
            return {"files": self.files, "tokens": 0, "nll_per_token": None, "perplexity": None}
        return {"files": self.files, "tokens": self.tokens, "nll_per_token": self.nll / self.tokens,
                "perplexity": self.perplexity}


def code_files(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, language) for the files given and those under the directories given (hidden ones skipped)."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            language = EXTENSIONS.get(path.suffix.lower())
            if language is None:
                raise ValueError(f"{path}: cannot tell the language from the extension {path.suffix!r}; "
                                 f"known: {', '.join(sorted(EXTENSIONS))}")
            found.append((path, language))
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    language = EXTENSIONS.get(Path(name).suffix.lower())
                    if language and not name.startswith("."):
                        found.append((Path(root) / name, language))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def score_tokens(model, ids: list[int], window: int, stride: int, start_id: int | None) -> tuple[float, int]:
    """(summed NLL, tokens scored) of `ids`, each token predicted from up to `window - 1` tokens before it."""
    import paddle

    if not 1 <= stride < window:
        raise ValueError(f"stride must be at least 1 and less than the window ({window}), got {stride}")
    sequence = ([start_id] if start_id is not None else []) + list(ids)
    total, count = 0.0, 0
    target_start = 1                 # position 0 has nothing before it to predict it from
    with paddle.no_grad():
        while target_start < len(sequence):
            target_end = min(target_start + stride, len(sequence))
            begin = max(0, target_end - window)
            logits = model(paddle.to_tensor([sequence[begin:target_end]], dtype="int64"))[0]
            # the logits at position t predict token t + 1
            predicting = logits[target_start - begin - 1:target_end - begin - 1].numpy()
            total += _summed_nll(predicting, sequence[target_start:target_end])
            count += target_end - target_start
            target_start = target_end
    return total, count


def _summed_nll(logits, targets: list[int], rows_at_once: int = 256) -> float:
    """-sum(log_softmax(logits)[i, targets[i]]) in float64, a block of rows at a time to bound memory.

    In numpy: Paddle's CPU log_softmax over a 51200-token vocabulary takes seconds per call.
    """
    import numpy as np

    total = 0.0
    for start in range(0, len(targets), rows_at_once):
        block = logits[start:start + rows_at_once].astype(np.float64)
        peak = block.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(block - peak).sum(axis=-1)) + peak[:, 0]
        picked = block[np.arange(len(block)), targets[start:start + rows_at_once]]
        total += float((log_norm - picked).sum())
    return total


def perplexity(model, tokenizer, files: list[tuple[Path, str]], window: int, stride: int | None = None,
               progress: bool = False) -> dict[str, LanguageScore]:
    """Per-language scores, plus "all" over every file."""
    stride = stride or max(1, window // 2)
    scores: dict[str, LanguageScore] = {}
    iterator = files
    if progress:
        from tqdm import tqdm
        iterator = tqdm(files, desc="perplexity", unit="file")
    for path, language in iterator:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
        ids = tokenizer.encode(text)
        if not ids:
            continue
        nll, count = score_tokens(model, ids, window, stride, tokenizer.eos_token_id)
        for key in (language, "all"):
            score = scores.setdefault(key, LanguageScore())
            score.files += 1
            score.tokens += count
            score.nll += nll
    return scores
