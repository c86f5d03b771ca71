"""What an evaluation writes: results.json (pass@k and counts) and per_problem.jsonl (every verdict)."""
from __future__ import annotations

import json
from collections import Counter
from itertools import groupby
from pathlib import Path

from .execution import STATUSES, Evaluation
from .metrics import DEFAULT_KS, mean_pass_at_k
from .problems import Problem

RESULTS_FILE, PER_PROBLEM_FILE = "results.json", "per_problem.jsonl"


def summarize(benchmark: str, problems: list[Problem], evaluation: Evaluation, ks=DEFAULT_KS,
              settings: dict | None = None) -> dict:
    """results.json's content. Every problem counts, known-bad ones too, so numbers compare with
    other harnesses; `pass@k_excluding_known_bad` leaves those out."""
    by_task: dict[str, list] = {p.task_id: [] for p in problems}
    for verdict in evaluation.verdicts:
        by_task[verdict.task_id].append(verdict)
    attempted = {task: verdicts for task, verdicts in by_task.items() if verdicts}
    counts = {task: (len(v), sum(x.passed for x in v)) for task, v in attempted.items()}
    sizes = [n for n, _ in counts.values()]
    statuses = Counter(v.status for v in evaluation.verdicts)
    summary = {
        "benchmark": benchmark,
        "language": evaluation.language,
        "problems": len(problems),
        "problems_attempted": len(attempted),
        "samples": len(evaluation.verdicts),
        "samples_per_problem": {"min": min(sizes), "max": max(sizes)} if sizes else None,
        "pass@k": mean_pass_at_k(list(counts.values()), ks),
        "pass@k_excluding_known_bad": mean_pass_at_k(
            [c for task, c in counts.items() if task not in evaluation.known_bad], ks),
        "statuses": {status: statuses.get(status, 0) for status in STATUSES},
        "known_bad": evaluation.known_bad,
        "sandbox": evaluation.protections,
    }
    if len(attempted) < len(problems):
        summary["note"] = (f"only {len(attempted)} of {len(problems)} problems have samples: "
                           "pass@k is over those and not comparable with full runs")
    if settings:
        summary["settings"] = settings
    return summary


def write_results(output: Path, summary: dict, evaluation: Evaluation) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / RESULTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    with open(output / PER_PROBLEM_FILE, "w", encoding="utf-8") as out:
        # verdicts come sorted by problem, so each group is one problem's samples
        for task_id, verdicts in groupby(evaluation.verdicts, key=lambda v: v.task_id):
            out.write(json.dumps(_problem_line(task_id, list(verdicts), evaluation.known_bad)) + "\n")


def write_skipped(output: Path, benchmark: str, language: str, reason: str) -> dict:
    summary = {"benchmark": benchmark, "language": language, "skipped": reason}
    output.mkdir(parents=True, exist_ok=True)
    (output / RESULTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _problem_line(task_id: str, verdicts: list, known_bad: dict[str, str]) -> dict:
    statuses = Counter(v.status for v in verdicts)
    return {
        "task_id": task_id,
        "samples": len(verdicts),
        "passed": statuses.get("passed", 0),
        "statuses": dict(statuses),
        "known_bad": known_bad.get(task_id),
        "results": [{"completion_id": v.completion_id, "status": v.status, "error": v.error,
                     "seconds": round(v.seconds, 3)} for v in verdicts],
    }
