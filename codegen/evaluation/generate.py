"""Sample completions for benchmark problems through a predictor, resumably.

Each finished batch is appended to the samples file at once, so an interrupted
run loses at most the batch in flight; the next run counts what each problem
already has and asks only for the rest.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Mapping

from .problems import DISPLAY_NAME, Problem
from .truncation import restore_stop, stop_sequences, truncate_completion


def existing_counts(path: Path, problems: list[Problem]) -> dict[str, int]:
    """Samples per task already in `path`; cuts off a last line left half-written by an interruption."""
    known = {p.task_id for p in problems}
    counts = {p.task_id: 0 for p in problems}
    if not path.exists():
        return counts
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            task_id = json.loads(line)["task_id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{number}: not a sample line; "
                             "remove the file or choose another --output") from None
        if task_id not in known:
            raise ValueError(f"{path}:{number}: task {task_id!r} is not part of this evaluation; "
                             "the directory holds another run's samples, choose another --output")
        counts[task_id] += 1
    return counts


def plan_batches(problems: list[Problem], wanted: Mapping[str, tuple[int, int]],
                 batch_size: int) -> list[tuple[list[tuple[Problem, int]], int]]:
    """Calls to make: ([(problem, first completion_id), ...], samples per prompt).

    `wanted` maps a task to (its first missing completion_id, how many to make).
    One call returns the same number of samples for each of its prompts and at
    most `batch_size` sequences in all: many samples of one problem use whole
    calls, and few samples each of several problems share one.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    chunks = []
    for problem in problems:
        start, left = wanted.get(problem.task_id, (0, 0))
        while left > 0:
            take = min(left, batch_size)
            chunks.append((problem, start, take))
            start, left = start + take, left - take
    calls: list[tuple[list[tuple[Problem, int]], int]] = []
    for problem, start, count in chunks:
        if calls and calls[-1][1] == count and (len(calls[-1][0]) + 1) * count <= batch_size:
            calls[-1][0].append((problem, start))
        else:
            calls.append(([(problem, start)], count))
    return calls


def generate_samples(predictor, problems: list[Problem], path: str | Path, *, num_samples: int, config,
                     batch_size: int = 8, prompts: Mapping[str, str] | None = None, language_tag: bool = False,
                     progress: bool = True, record: bool = True) -> int:
    """Bring `path` to `num_samples` samples per problem; returns how many were generated now.

    With `record` False the same calls are made and nothing is written: the ranks of a split
    model other than 0 compute every sample with rank 0, which alone writes them.

    `config` is a GenerationConfig; its `stop` is replaced by the language's stop
    sequences and its `num_return_sequences` by the batch plan. With a seed, each
    call's seed follows from it, the task and the first sample's index, so the same
    seed and batch size give the same samples again. `prompts` overrides
    what the model sees (translation); programs are always built from `problem.prompt`.
    """
    if num_samples < 1:
        raise ValueError(f"number of samples per problem must be at least 1, got {num_samples}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    have = existing_counts(path, problems)
    wanted = {task: (count, num_samples - count) for task, count in have.items() if count < num_samples}
    calls = plan_batches(problems, wanted, batch_size)
    total = sum(left for _, left in wanted.values())
    bar = _progress_bar(total, problems[0].language if problems else "", progress)
    written = 0
    try:
        with open(path if record else os.devnull, "a", encoding="utf-8") as out:
            for members, per_prompt in calls:
                language = members[0][0].language
                call_config = replace(config, num_return_sequences=per_prompt, stop=stop_sequences(language),
                                      seed=_call_seed(config.seed, members[0][0].task_id, members[0][1]))
                texts = [_prompt_text(problem, prompts, language_tag) for problem, _ in members]
                results = predictor.generate(texts, call_config)
                if len(results) != len(members):
                    raise RuntimeError(f"predictor returned {len(results)} results for {len(members)} prompts")
                for (problem, start), text, sequences in zip(members, texts, results):
                    for offset, sequence in enumerate(sequences):
                        raw = restore_stop(problem.language, sequence.text, sequence.finish_reason)
                        row = {"task_id": problem.task_id, "completion_id": start + offset,
                               "completion": truncate_completion(problem.language, raw,
                                                                 starts_line=text.endswith("\n")),
                               "finish_reason": sequence.finish_reason, "raw_completion": sequence.text}
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        written += 1
                out.flush()
                if record:
                    os.fsync(out.fileno())
                if bar is not None:
                    bar.update(sum(len(s) for s in results))
    finally:
        if bar is not None:
            bar.close()
    return written


def _prompt_text(problem: Problem, prompts: Mapping[str, str] | None, language_tag: bool) -> str:
    text = prompts[problem.task_id] if prompts else problem.prompt
    if language_tag:
        # CodeGeeX was trained with a first line naming the file's language
        from ..languages import with_language_tag
        text = with_language_tag(text, DISPLAY_NAME[problem.language])
    return text


def _call_seed(seed: int | None, task_id: str, first: int) -> int | None:
    if seed is None:
        return None
    return (seed + zlib.crc32(f"{task_id}#{first}".encode())) % (2 ** 31)


def _progress_bar(total: int, language: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm
    # tqdm's rate and remaining-time estimate are the ETA
    return tqdm(total=total, desc=f"generating {language}", unit="sample", smoothing=0.1)
