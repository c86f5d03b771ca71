"""LoRA (Hu et al. 2021): train low-rank updates of chosen Linear layers, freeze the rest.

A wrapped layer computes x W + b + (x A B) * alpha / rank with A [in, rank]
and B [rank, out]; B starts at zero so training starts from the base model.
The wrapper holds the base layer's own weight and bias under the same names,
so the model's state-dict names do not change and a merged model (W + A B
alpha / rank folded back into a plain Linear) saves like any other.

Adapters are saved as every trainable tensor (the A/B pairs, plus the token
embeddings when new tokens had to be learned) with a config naming the base model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FORMAT = "codegen-lora/1"

# --lora_target group -> the Linear layers it means, as suffixes of sublayer names
TARGETS = {
    "codegen": {"qkv": ("attn.qkv_proj",), "out": ("attn.out_proj",), "fc": ("mlp.fc_in", "mlp.fc_out")},
    "codegeex": {"qkv": ("attention.query", "attention.key", "attention.value"), "out": ("attention.dense",),
                 "fc": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")},
}


class LoRALinear(nn.Layer):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        in_features, out_features = base.weight.shape
        self.lora_A = self.create_parameter(
            [in_features, rank], dtype=base.weight.dtype,
            default_initializer=nn.initializer.Uniform(-1 / math.sqrt(in_features), 1 / math.sqrt(in_features)))
        self.lora_B = self.create_parameter(
            [rank, out_features], dtype=base.weight.dtype, default_initializer=nn.initializer.Constant(0.0))
        self.scaling = alpha / rank

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + paddle.matmul(paddle.matmul(x, self.lora_A), self.lora_B) \
            * self.scaling

    def merged(self) -> nn.Linear:
        in_features, out_features = self.weight.shape
        linear = nn.Linear(in_features, out_features, bias_attr=None if self.bias is not None else False)
        with paddle.no_grad():
            linear.weight.set_value(self.weight + paddle.matmul(self.lora_A, self.lora_B) * self.scaling)
            if self.bias is not None:
                linear.bias.set_value(self.bias)
        return linear


def parse_targets(model_type: str, target: str) -> list[str]:
    groups = [t.strip() for t in target.split(",") if t.strip()]
    known = TARGETS[model_type]
    unknown = [g for g in groups if g not in known]
    if unknown or not groups:
        raise ValueError(f"--lora_target {target!r}: choose from {', '.join(known)} (comma-separated)")
    return [suffix for g in groups for suffix in known[g]]


def _replace_sublayers(model: nn.Layer, should_replace, make):
    for name, layer in list(model.named_sublayers()):
        if should_replace(name, layer):
            *path, attr = name.split(".")
            parent = model
            for part in path:
                parent = getattr(parent, part)
            setattr(parent, attr, make(layer))


def apply_lora(model: nn.Layer, *, rank: int, alpha: float, target: str, train_also=()) -> int:
    """Wrap the target layers, freeze everything else except `train_also`; returns the trainable count."""
    if rank < 1:
        raise ValueError(f"--lora_rank must be at least 1, got {rank}")
    suffixes = tuple(parse_targets(model.config.model_type, target))
    for p in model.parameters():
        p.stop_gradient = True
    _replace_sublayers(model, lambda name, layer: isinstance(layer, nn.Linear) and name.endswith(suffixes),
                       lambda layer: LoRALinear(layer, rank, alpha))
    for p in train_also:
        p.stop_gradient = False
    return sum(math.prod(p.shape) for p in model.parameters() if not p.stop_gradient)


def merge_lora(model: nn.Layer) -> nn.Layer:
    """Fold every adapter into its Linear, in place; the model is then a plain model again."""
    _replace_sublayers(model, lambda name, layer: isinstance(layer, LoRALinear), lambda layer: layer.merged())
    for p in model.parameters():
        p.stop_gradient = False
    return model


def trainable_state(model: nn.Layer) -> dict:
    trainable = {id(p) for p in model.parameters() if not p.stop_gradient}
    return {name: t for name, t in model.state_dict().items() if id(t) in trainable}


def save_adapters(model: nn.Layer, directory, config: dict) -> None:
    from ..checkpoints import write_safetensors
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = trainable_state(model)
    write_safetensors(directory / ADAPTER_WEIGHTS,
                      [(name, tuple(t.shape), t.numpy().dtype, (lambda t=t: t.numpy())) for name, t in state.items()])
    (directory / ADAPTER_CONFIG).write_text(json.dumps({**config, "format": ADAPTER_FORMAT}, indent=1) + "\n")


def read_adapter_config(directory) -> dict | None:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    if config.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a codegen LoRA adapter config")
    return config


def load_adapters(model: nn.Layer, directory) -> None:
    """Set the model's trainable tensors (adapters applied already) from a saved adapter."""
    path = Path(directory) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} holds no LoRA adapter")
    from ..checkpoints import read_tensors_into
    read_tensors_into(path, trainable_state(model), "check --lora_rank and --lora_target")
