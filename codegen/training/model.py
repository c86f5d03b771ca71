"""The model a run starts from, and how its weights go in and out of checkpoints.

A run can start from a converted checkpoint or from an earlier run's output. A
LoRA output without --merge_lora holds only adapters and names its base, so
starting from it loads the base (itself possibly adapters) and folds the
adapters in.
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoints import CONFIG_FILE, WEIGHTS_FILE, load_model, read_tensors_into, resolve_model_dir, save_model
from ..tokenizer import load_tokenizer
from .lora import apply_lora, load_adapters, merge_lora, read_adapter_config, save_adapters
from .vocab import fit_vocab, vocab_parameters


def load_merged(name_or_path):
    """(model, tokenizer) for a checkpoint or a run's output, adapters merged in."""
    model_dir = resolve_model_dir(name_or_path)
    tokenizer = load_tokenizer(model_dir)
    adapter = read_adapter_config(model_dir)
    # a merged LoRA output holds both the model and its adapters: the model is enough
    if adapter is None or (model_dir / CONFIG_FILE).is_file():
        return load_model(model_dir), tokenizer
    model, _ = load_merged(adapter["base_model"])
    model = fit_vocab(model, len(tokenizer))
    apply_lora(model, rank=adapter["rank"], alpha=adapter["alpha"], target=adapter["target"],
               train_also=vocab_parameters(model) if adapter["trains_vocab"] else ())
    load_adapters(model, model_dir)
    return merge_lora(model), tokenizer


def load_weights_into(model, directory: Path) -> None:
    """Set every parameter of `model` from `directory`'s model.safetensors (our format)."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a complete checkpoint of this run")
    read_tensors_into(path, model.state_dict(), "was it written with other flags?")


def adapter_config(base_dir: Path, lora_args, trains_vocab: bool) -> dict:
    return {"base_model": str(Path(base_dir).resolve()), "rank": lora_args.lora_rank, "alpha": lora_args.lora_alpha,
            "target": lora_args.lora_target, "trains_vocab": trains_vocab}


def checkpoint_io(model, tokenizer, adapter: dict | None):
    """(save_weights, load_weights) for the trainer: the whole model in our format, or adapters only."""
    if adapter is None:
        return (lambda d: save_model(model, d, tokenizer)), (lambda d: load_weights_into(model, d))

    def save(directory):
        save_adapters(model, directory, adapter)
        tokenizer.save(directory)

    return save, (lambda d: load_adapters(model, d))
