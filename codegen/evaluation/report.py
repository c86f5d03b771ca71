"""pass@k by language as a markdown table and a bar chart, from results.json summaries."""
from __future__ import annotations

import json
from pathlib import Path

from .problems import DISPLAY_NAME


def load_summaries(paths: list[str | Path]) -> list[dict]:
    """results.json files, or directories holding one (or one per language below them)."""
    summaries = []
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(path.glob("results.json")) or sorted(path.glob("*/results.json"))
        if not files:
            raise FileNotFoundError(f"{path}: no results.json here or one level below")
        for file in files:
            try:
                summaries.append(json.loads(file.read_text()))
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}: not valid JSON ({e.msg})") from None
    return summaries


def _ks(summaries: list[dict]) -> list[str]:
    names = {name for s in summaries for name in s.get("pass@k", {})}
    return sorted(names, key=lambda name: int(name.split("@")[1]))


def _row_name(summary: dict) -> str:
    name = DISPLAY_NAME.get(summary.get("language", ""), summary.get("language", "?"))
    benchmark = summary.get("benchmark", "")
    return f"{name} ({benchmark})" if benchmark and benchmark != "humaneval-x" else name


def markdown_table(summaries: list[dict]) -> str:
    ks = _ks(summaries)
    lines = ["| Language | Problems | Samples/problem | " + " | ".join(ks) + " |",
             "|---|---:|---:|" + "---:|" * len(ks)]
    for s in summaries:
        if "skipped" in s:
            lines.append(f"| {_row_name(s)} | skipped: {s['skipped']} | |" + " |" * len(ks))
            continue
        per = s.get("samples_per_problem") or {}
        samples = str(per.get("min", "")) if per.get("min") == per.get("max") else f"{per.get('min')}-{per.get('max')}"
        scores = [f"{100 * s['pass@k'][k]:.2f}%" if k in s["pass@k"] else "–" for k in ks]
        lines.append(f"| {_row_name(s)} | {s['problems_attempted']} | {samples} | " + " | ".join(scores) + " |")
    known_bad = [(task, why) for s in summaries for task, why in s.get("known_bad", {}).items()]
    if known_bad:
        lines += ["", "Known-bad problems (their canonical solutions fail here; counted as in other harnesses):", ""]
        lines += [f"- {task}: {why}" for task, why in known_bad]
    return "\n".join(lines) + "\n"


def plot_pass_at_k(summaries: list[dict], path: str | Path, title: str = "pass@k by language") -> Path:
    """Grouped bars: one group per language, one bar per k."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in summaries if "skipped" not in s and s.get("pass@k")]
    if not shown:
        raise ValueError("no evaluated language has pass@k to plot")
    ks = _ks(shown)
    width = 0.8 / len(ks)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(shown) + 1.5), 4.0), dpi=120)
    for i, k in enumerate(ks):
        xs = [j + (i - (len(ks) - 1) / 2) * width for j in range(len(shown))]
        values = [100 * s["pass@k"].get(k, 0.0) for s in shown]
        bars = ax.bar(xs, values, width, label=k)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(shown)), [_row_name(s) for s in shown])
    ax.set_ylabel("% of problems solved")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8, ncols=len(ks), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
