"""The `codegen` command: generate, translate, convert, init, serve, eval."""
from __future__ import annotations

import argparse
import os
import sys

from .load_flags import add_load_arguments, load_options


def output_of(predictor):
    """Where a command writes its results: standard output, or nowhere on the ranks of a split model
    other than 0 (every rank computes the same text; it is printed once)."""
    return sys.stdout if predictor.parallel.rank == 0 else open(os.devnull, "w")


def _generate(args):
    from .generation import GenerationConfig
    from .predictor import Predictor

    config = GenerationConfig(
        max_new_tokens=args.max_length, min_new_tokens=args.min_length, decode_strategy=args.decode_strategy,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty, num_return_sequences=args.num_return_sequences,
        stop=args.stop or [], seed=args.seed, prompt_lookup_num_tokens=args.prompt_lookup)
    config.validate()
    text = sys.stdin.read() if args.prompt == "-" else args.prompt
    prompt = text
    if args.language is not None:
        # the tag tells CodeGeeX the language; the output shows the prompt as given
        from .languages import with_language_tag
        prompt = with_language_tag(text, args.language)
    predictor = Predictor(args.model, **load_options(args))
    out = output_of(predictor)
    if args.stream and args.num_return_sequences == 1 and args.decode_strategy != "beam_search":
        out.write(text)
        for event in predictor.stream([(prompt, config)]):
            out.write(event.text)
            out.flush()
        out.write("\n")
        return
    for seq in predictor.generate([prompt], config)[0]:
        out.write(text + seq.text + "\n")


def _translate(args):
    from pathlib import Path
    from .taskflow import Taskflow
    source = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    flow = Taskflow("code_translation", model=args.model, source_language=args.source,
                    target_language=args.target, target_prefix=args.target_prefix, max_length=args.max_length,
                    **load_options(args))
    output_of(flow.predictor).write(flow(source)[0] + "\n")


def _convert(args):
    from .checkpoints import convert
    dst = convert(args.src, args.dst, config_path=args.config, quantize=args.quantize, dtype=args.dtype)
    print(f"converted {args.src} -> {dst}")


def _init(args):
    from dataclasses import asdict
    from .checkpoints import init_random_codegen
    from .models import PUBLIC_CONFIGS
    if args.like not in PUBLIC_CONFIGS or PUBLIC_CONFIGS[args.like].model_type != "codegen":
        raise ValueError(f"--like must name a public CodeGen checkpoint, e.g. Salesforce/codegen-350M-mono; "
                         f"got {args.like!r}")
    config = asdict(PUBLIC_CONFIGS[args.like])
    config.update({k: v for k, v in vars(args).items() if k in config and v is not None})
    tokenizer = None
    if args.tokenizer is not None:
        from .tokenizer import load_tokenizer
        tokenizer = load_tokenizer(args.tokenizer)
    dst = init_random_codegen(args.dst, seed=args.seed, tokenizer=tokenizer, **config)
    print(f"wrote a randomly initialised CodeGen to {dst}")


def _add_init(sub):
    p = sub.add_parser("init", help="write a randomly initialised CodeGen (to train from scratch)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--like", default="Salesforce/codegen-350M-mono", help="public config to start from")
    for name in ("n_embd", "n_layer", "n_head", "rotary_dim", "n_positions", "n_inner"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (e.g. from tools/train_tokenizer.py); default: CodeGen's")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_init)


def _add_generate(sub):
    p = sub.add_parser("generate", help="complete a prompt")
    p.add_argument("prompt", help="the code to complete ('-' reads standard input)")
    p.add_argument("--model", default=None, help="converted checkpoint directory or public name (default: the "
                   "small model shipped in the package)")
    p.add_argument("--max-length", type=int, default=128, help="maximum number of new tokens")
    p.add_argument("--min-length", type=int, default=0, help="minimum number of new tokens")
    p.add_argument("--decode-strategy", default="greedy_search",
                   choices=["greedy_search", "sampling", "beam_search"])
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--language", default=None, help="start the prompt with CodeGeeX's tag for this language "
                   "(e.g. C++, Go, Python)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--prompt-lookup", type=int, default=0, metavar="K",
                   help="draft up to K tokens per step from the prompt and verify them in one pass: faster when "
                        "the output repeats the prompt (editing code); greedy output is unchanged (default 0: off)")
    add_load_arguments(p)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.set_defaults(func=_generate)


def _add_translate(sub):
    p = sub.add_parser("translate", help="translate a source file to another language (CodeGeeX's prompt)")
    p.add_argument("file", help="the source code ('-' reads standard input)")
    p.add_argument("--source", required=True, help="its language, e.g. python")
    p.add_argument("--target", required=True, help="the language to translate to, e.g. go")
    p.add_argument("--target-prefix", default="", help="how the translation starts, e.g. the target signature")
    p.add_argument("--model", default=None, help="converted checkpoint directory or public name (a CodeGeeX "
                   "model translates; default: the small model shipped in the package)")
    p.add_argument("--max-length", type=int, default=512, help="maximum number of new tokens")
    add_load_arguments(p)
    p.set_defaults(func=_translate)


def _add_convert(sub):
    p = sub.add_parser("convert", help="convert a Hugging Face, PaddleNLP or CodeGeeX checkpoint",
                       description="Convert a checkpoint into codegen's format, one tensor at a time. With "
                       "--quantize int8 or --dtype the weights are stored in that format, and loading them does "
                       "no conversion (SRC may then also be a checkpoint converted before).")
    p.add_argument("src", help="checkpoint directory, CodeGeeX .pt file, or a float checkpoint of ours")
    p.add_argument("dst", help="output directory")
    p.add_argument("--config", default=None, help="CodeGeeX hyper-parameters JSON for non-13B checkpoints")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--quantize", default=None, choices=["int8"],
                     help="store the transformer Linears as int8 rows with one float32 scale each "
                     "(NAME.weight_scale); the LM head, embeddings and LayerNorms keep their dtype")
    fmt.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                     help="store every weight in this format (bf16 as safetensors BF16)")
    p.set_defaults(func=_convert)


def _add_serve(sub):
    from .server import add_arguments, run
    p = sub.add_parser("serve", help="an OpenAI-compatible completions server (a local Copilot)")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="codegen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_translate(sub)
    _add_convert(sub)
    _add_init(sub)
    _add_serve(sub)
    from .evaluation.cli import add_eval_subcommands
    add_eval_subcommands(sub)
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"codegen {args.command}: error: {e}\n")
    sys.exit(status or 0)


if __name__ == "__main__":
    main()
