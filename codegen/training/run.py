"""run_clm.py: fine-tune a CodeGen or CodeGeeX model on jsonl code files.

Single process: `python run_clm.py --model_name_or_path M --train_file F --output_dir O ...`;
data parallel: the same under `python -m paddle.distributed.launch --nproc_per_node N`
(or `--gpus 0,1`). Everything that can be wrong with the flags, the model or the data
is reported before training starts. The output directory ends up holding the
model in codegen's format (or LoRA adapters), metrics.json and loss.png.
"""
from __future__ import annotations

import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import paddle

from ..checkpoints import codegen_home, resolve_model_dir, save_model
from .args import LATEST, parse_args
from .blas_linear import use_blas_linears
from .data import BlockDataset, find_data_files, tokenize_to_cache
from .fim import FimTransform, add_fim_tokens, validate_rates
from .launcher import exit_with_launcher
from .lora import apply_lora, merge_lora
from .model import adapter_config, checkpoint_io, load_merged
from .vocab import fit_vocab, vocab_parameters

logger = logging.getLogger("codegen.training")

DEFAULT_MAX_BLOCK = 1024


@dataclass
class Setup:
    model: object
    tokenizer: object
    train_dataset: BlockDataset
    eval_dataset: BlockDataset | None
    adapter: dict | None          # LoRA adapter config, None for full fine-tuning
    resume_from: Path | None


def build_datasets(data_args, tokenizer, block_size: int, fim_encode, fim_key):
    cache_root = Path(data_args.data_cache_dir or codegen_home() / "data")
    common = dict(text_field=data_args.text_field, cache_root=cache_root, skip_bad_lines=data_args.skip_bad_lines)
    train = tokenize_to_cache(find_data_files(data_args.train_file), tokenizer, encode=fim_encode,
                              encoding_key=fim_key, **common)
    train_dataset = BlockDataset(train, block_size, "training")
    eval_dataset = None
    if data_args.validation_file:
        # validation stays plain text: its loss then compares across runs with and without FIM
        valid = tokenize_to_cache(find_data_files(data_args.validation_file), tokenizer, **common)
        eval_dataset = BlockDataset(valid, block_size, "validation")
    return train_dataset, eval_dataset


def resolve_resume(training_args) -> Path | None:
    from .trainer import checkpoint_dirs

    output_dir = Path(training_args.output_dir)
    existing = checkpoint_dirs(output_dir)
    resume = training_args.resume_from_checkpoint
    if resume == LATEST or (resume or "").lower() == "true":
        if not existing:
            logger.info("no checkpoint in %s yet: training from the start", output_dir)
            return None
        return existing[-1]
    if resume:
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"--resume_from_checkpoint {resume}: not a checkpoint directory "
                                    f"(no trainer_state.json); checkpoints here: "
                                    f"{', '.join(p.name for p in existing) or 'none'}")
        return path
    if existing:
        if not training_args.overwrite_output_dir:
            raise ValueError(f"{output_dir} already holds checkpoints (latest {existing[-1].name}): pass "
                             f"--resume_from_checkpoint to continue that run, or --overwrite_output_dir to start over")
        if training_args.should_save:
            for path in existing:
                shutil.rmtree(path)
    return None


def prepare(model_args, data_args, training_args) -> Setup:
    """Load and check everything; nothing here trains."""
    from paddlenlp.trainer.trainer_utils import IntervalStrategy

    validate_rates(data_args.fim_rate, data_args.fim_spm_rate)
    if model_args.merge_lora and not model_args.lora:
        raise ValueError("--merge_lora needs --lora")
    if training_args.evaluation_strategy != IntervalStrategy.NO and not data_args.validation_file:
        raise ValueError(f"--evaluation_strategy {training_args.evaluation_strategy.value} needs --validation_file")
    resume_from = resolve_resume(training_args)

    model_dir = resolve_model_dir(model_args.model_name_or_path)
    model, tokenizer = load_merged(model_dir)
    context = model.config.max_position_embeddings
    block_size = data_args.block_size or min(context, DEFAULT_MAX_BLOCK)
    if block_size > context:
        raise ValueError(f"--block_size {block_size} exceeds the context of {model_dir} ({context} tokens)")

    fim_encode = fim_key = None
    added_tokens = []
    if data_args.fim_rate > 0:
        sentinels, added_tokens = add_fim_tokens(tokenizer)
        model = fit_vocab(model, len(tokenizer))
        fim_encode = FimTransform(tokenizer.encode, sentinels, data_args.fim_rate, data_args.fim_spm_rate,
                                  training_args.seed)
        fim_key = {"fim_rate": data_args.fim_rate, "fim_spm_rate": data_args.fim_spm_rate,
                   "seed": training_args.seed}
        if added_tokens:
            logger.info("added %s to the tokenizer (now %d tokens)", ", ".join(added_tokens), len(tokenizer))

    train_dataset, eval_dataset = build_datasets(data_args, tokenizer, block_size, fim_encode, fim_key)

    adapter = None
    total = sum(math.prod(p.shape) for p in model.parameters())
    if model_args.lora:
        # new token rows are untrained; under LoRA they would stay so unless trained too
        train_vocab = bool(added_tokens)
        trainable = apply_lora(model, rank=model_args.lora_rank, alpha=model_args.lora_alpha,
                               target=model_args.lora_target,
                               train_also=vocab_parameters(model) if train_vocab else ())
        adapter = adapter_config(model_dir, model_args, train_vocab)
    else:
        trainable = total
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)", flush=True)
    if training_args.recompute:
        from .recompute import enable_recompute
        enable_recompute(model)
    if paddle.get_device() == "cpu":
        use_blas_linears(model)

    if eval_dataset is not None and training_args.evaluation_strategy == IntervalStrategy.NO:
        training_args.evaluation_strategy = IntervalStrategy.STEPS
        training_args.do_eval = True
        # PaddleNLP's CodeGen README calls --save_steps the "save and evaluate" interval
        training_args.eval_steps = training_args.eval_steps or training_args.save_steps
    return Setup(model, tokenizer, train_dataset, eval_dataset, adapter, resume_from)


def train(setup: Setup, model_args, training_args) -> None:
    from paddlenlp.data import default_data_collator
    from paddlenlp.trainer.trainer_callback import PrinterCallback, ProgressCallback

    from .callbacks import MetricsWriter, ProgressPrinter
    from .trainer import CausalLMTrainer

    save_weights, load_weights = checkpoint_io(setup.model, setup.tokenizer, setup.adapter)
    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * max(training_args.dataset_world_size, 1) * setup.train_dataset.block_size)
    training_args.disable_tqdm = True
    trainer = CausalLMTrainer(
        model=setup.model, args=training_args, data_collator=default_data_collator,
        train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
        callbacks=[ProgressPrinter(tokens_per_step), MetricsWriter()],
        save_weights=save_weights, load_weights=load_weights)
    trainer.pop_callback(PrinterCallback)
    trainer.pop_callback(ProgressCallback)

    trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    if setup.eval_dataset is not None:
        evaluated = [e["step"] for e in trainer.state.log_history if "eval_loss" in e]
        if not evaluated or evaluated[-1] != trainer.state.global_step:
            trainer.evaluate()

    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if model_args.merge_lora and training_args.should_save:
        save_model(merge_lora(setup.model), output_dir, setup.tokenizer)
    if training_args.should_save:
        if setup.adapter is None or model_args.merge_lora:
            print(f"saved the model to {output_dir}: load it with Taskflow(\"code_generation\", "
                  f"model=\"{output_dir}\") or `codegen_server.py --model {output_dir}`", flush=True)
        else:
            print(f"saved LoRA adapters to {output_dir}; merge them into a model with "
                  f"`python -m codegen.training.merge_lora {output_dir} MERGED_DIR`", flush=True)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    exit_with_launcher()
    argv = sys.argv[1:] if argv is None else argv
    try:
        model_args, data_args, training_args = parse_args(argv)
        setup = prepare(model_args, data_args, training_args)
    except (ValueError, FileNotFoundError) as e:
        print(f"run_clm.py: error: {e}", file=sys.stderr, flush=True)
        return 2
    train(setup, model_args, training_args)
    return 0
