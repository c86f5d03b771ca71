"""run_clm.py's command line: PaddleNLP's TrainingArguments plus model and data options.

Every TrainingArguments flag works as in PaddleNLP's examples. On top:
`--train_batch_size`, `--eval_batch_size` and `--warmup_proportion` (the names in
PaddleNLP's CodeGen README) are accepted as aliases, and `--resume_from_checkpoint`
may be given bare to mean the latest checkpoint in --output_dir.
"""
# no `from __future__ import annotations`: PdArgumentParser reads the field types at runtime
import argparse
from dataclasses import dataclass, field
from typing import List, Optional

from paddlenlp.trainer import PdArgumentParser, TrainingArguments

ALIASES = {"--train_batch_size": "--per_device_train_batch_size", "--eval_batch_size": "--per_device_eval_batch_size",
           "--warmup_proportion": "--warmup_ratio"}
RESUME_FLAG = "--resume_from_checkpoint"
LATEST = "latest"


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "a converted checkpoint directory, a public name under "
                                                      "$CODEGEN_HOME, or the output of an earlier run"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of all weights"})
    lora_rank: int = field(default=8, metadata={"help": "rank of the LoRA updates"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scale numerator (updates scaled by alpha/rank)"})
    lora_target: str = field(default="qkv,out", metadata={"help": "layers to adapt, comma-separated from qkv, out, fc"})
    merge_lora: bool = field(default=False, metadata={"help": "with --lora, also write the merged model to "
                                                               "--output_dir (loads like any other model)"})


@dataclass
class DataArguments:
    train_file: str = field(metadata={"help": "a jsonl file, or a directory of .jsonl/.json files"})
    validation_file: Optional[str] = field(default=None, metadata={"help": "jsonl file or directory for evaluation"})
    text_field: str = field(default="code", metadata={"help": "the field of each JSON object holding the text"})
    block_size: Optional[int] = field(default=None, metadata={
        "help": "tokens per training sample (default: the model's context, at most 1024)"})
    skip_bad_lines: bool = field(default=False, metadata={"help": "skip malformed lines instead of stopping"})
    data_cache_dir: Optional[str] = field(default=None, metadata={
        "help": "where tokenized data is cached (default: $CODEGEN_HOME/data, i.e. ~/.cache/codegen/data)"})
    fim_rate: float = field(default=0.0, metadata={"help": "share of training documents rearranged for "
                                                           "fill-in-the-middle"})
    fim_spm_rate: float = field(default=0.5, metadata={"help": "share of those in suffix-prefix-middle order "
                                                               "(the rest prefix-suffix-middle)"})


@dataclass
class CLMTrainingArguments(TrainingArguments):
    # PaddleNLP defaults to "gpu" even where there is none
    device: Optional[str] = field(default=None, metadata={"help": "cpu or gpu (default: gpu when available)"})
    # metrics.json and loss.png replace PaddleNLP's VisualDL default, whose writer
    # rejects boolean hyper-parameters under current protobuf
    report_to: Optional[List[str]] = field(default_factory=lambda: ["none"], metadata={
        "help": "also log to these integrations (visualdl, wandb, tensorboard)"})


def rewrite_argv(argv: list[str]) -> list[str]:
    """Resolve the aliases and a bare --resume_from_checkpoint."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        name = ALIASES.get(name, name)
        out.append(name + eq + value)
        if name == RESUME_FLAG and not eq and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append(LATEST)
    return out


def set_device(device: Optional[str]) -> str:
    import paddle
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    device = device or ("gpu" if has_gpu else "cpu")
    if device.split(":")[0] not in ("cpu", "gpu"):
        raise ValueError(f"--device must be cpu or gpu, got {device!r}")
    if device.startswith("gpu") and not has_gpu:
        raise ValueError(f"--device {device}: no GPU visible to this Paddle build; use --device cpu")
    paddle.set_device(device)
    return device


def parse_args(argv: list[str]):
    """(model, data, training) arguments; the device is set before TrainingArguments starts
    the distributed environment, which picks its backend from it."""
    from paddlenlp.utils.log import logger
    logger.set_level("INFO")  # at DEBUG it prints every TrainingArguments field
    argv = rewrite_argv(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device")
    device = set_device(pre.parse_known_args(argv)[0].device)
    parser = PdArgumentParser((ModelArguments, DataArguments, CLMTrainingArguments),
                              description="Fine-tune a CodeGen or CodeGeeX model on jsonl code files.")
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    training_args.device = device
    if (training_args.fp16 or training_args.bf16) and device == "cpu":
        raise ValueError("--fp16/--bf16 need a GPU: Paddle's mixed precision does nothing on CPU, so the run would "
                         "silently train in fp32; drop the flag or train with --device gpu")
    return model_args, data_args, training_args
