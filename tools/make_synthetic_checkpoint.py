"""Write a checkpoint with a published model's exact shapes and random weights, as its authors ship it.

    python tools/make_synthetic_checkpoint.py codegeex-13b /work/bigtmp/codegeex_13b.pt
    python tools/make_synthetic_checkpoint.py codegen-16b-mono /work/bigtmp/codegen-16B-mono

- codegeex-13b: the fp16 `.pt` THUDM ships (a torch.save zip: `module -> language_model ->
  embedding / topQueryEmbedding / transformer`, Q, K and V apart, 39 layers plus the top-query
  layer), about 26 GB;
- codegen-6b-mono, codegen-16b-mono: fp16 safetensors in Hugging Face's layout (config.json,
  model-0000X-of-0000N.safetensors shards of at most 5 GB and model.safetensors.index.json).

For bench/bench_big_models.py, which measures converting, loading and generating at full size
without downloading 26-32 GB. Needs no torch: the torch file is written by hand, one storage at a
time, its zip members stored uncompressed as torch.save stores them. The writer holds one tensor at
most (the safetensors side) or one chunk (the torch side).

Values: normal * 0.02 (LayerNorm weights 1). Drawing 16 billion normals would take ten minutes of
a core, so a pool of a few million fp16 normals is drawn once per file and every chunk of every
tensor is a window of it at a random offset: the scale of real weights at the speed of a copy.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codegen.checkpoints import write_safetensors  # noqa: E402
from codegen.models.codegeex import CODEGEEX_CONFIGS, CodeGeeXConfig  # noqa: E402
from codegen.models.codegen import CODEGEN_CONFIGS, CodeGenConfig  # noqa: E402

MODELS = {
    "codegeex-13b": CODEGEEX_CONFIGS["THUDM/codegeex-13b"],
    "codegen-6b-mono": CODEGEN_CONFIGS["Salesforce/codegen-6B-mono"],
    "codegen-16b-mono": CODEGEN_CONFIGS["Salesforce/codegen-16B-mono"],
}
CHUNK = 1 << 22           # elements drawn from the pool at a time
POOL = CHUNK + 4099       # a little longer than a chunk, so windows start anywhere
SHARD_BYTES = 5 * 10**9   # Hugging Face's max_shard_size default ("5GB")


class RandomWeights:
    """fp16 values for a tensor, chunk by chunk: windows of one pool of normals * 0.02."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.pool = (self.rng.standard_normal(POOL, dtype=np.float32) * 0.02).astype(np.float16)

    def chunks(self, name: str, numel: int) -> Iterator[np.ndarray]:
        if _is_layernorm_weight(name):
            for start in range(0, numel, CHUNK):
                yield np.ones(min(CHUNK, numel - start), np.float16)
            return
        for start in range(0, numel, CHUNK):
            size = min(CHUNK, numel - start)
            offset = int(self.rng.integers(0, POOL - size + 1))
            yield self.pool[offset:offset + size]

    def tensor(self, name: str, shape: tuple) -> np.ndarray:
        out = np.empty(int(np.prod(shape, dtype=np.int64)), np.float16)
        start = 0
        for chunk in self.chunks(name, out.size):
            out[start:start + chunk.size] = chunk
            start += chunk.size
        return out.reshape(shape)


def _is_layernorm_weight(name: str) -> bool:
    return name.endswith(".weight") and any(part in name for part in ("layernorm", "ln_"))


# ---- CodeGeeX: THUDM's torch.save zip ---------------------------------------------------

def codegeex_tensors(config: CodeGeeXConfig) -> dict:
    """language_model's tree as THUDM saves it, leaves the tensors' shapes (torch's [out, in])."""
    h, positions = config.hidden_size, config.max_position_embeddings

    def layer():
        linear = {"attention.query": (h, h), "attention.key": (h, h), "attention.value": (h, h),
                  "attention.dense": (h, h), "mlp.dense_h_to_4h": (4 * h, h), "mlp.dense_4h_to_h": (h, 4 * h)}
        tensors = {}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{norm}.weight"], tensors[f"{norm}.bias"] = (h,), (h,)
        for name, shape in linear.items():
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = shape, shape[:1]
        return tensors

    transformer = {}
    for index in range(config.num_layers - 1):
        transformer.update({f"layers.{index}.{name}": shape for name, shape in layer().items()})
    transformer.update({f"topQueryLayer.{name}": shape for name, shape in layer().items()})
    transformer.update({"final_layernorm.weight": (h,), "final_layernorm.bias": (h,)})
    return {
        "embedding": {"word_embeddings": {"weight": (config.padded_vocab_size, h)},
                      "position_embeddings": {"weight": (positions, h)}},
        "topQueryEmbedding": {"top_query_embeddings": {"weight": (positions, h)}},
        "transformer": transformer,
    }


class _Tensor:
    """A leaf of the pickled tree: an fp16 tensor over storage `key`."""

    def __init__(self, key: str, shape: tuple):
        self.key, self.shape = key, tuple(shape)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _pickle_tree(tree) -> bytes:
    """Protocol 2, as torch.save writes it: dicts of str keys; tensors as `_rebuild_tensor_v2` over a
    persistent storage id ('storage', torch.HalfStorage, key, 'cpu', numel)."""
    out = bytearray(b"\x80\x02")

    def plain(value):
        out.extend(pickle.dumps(value, protocol=2)[2:-1])

    def emit(node):
        if isinstance(node, dict):
            out.extend(b"}(")                      # EMPTY_DICT, MARK
            for key, value in node.items():
                plain(key)
                emit(value)
            out.extend(b"u")                       # SETITEMS
        else:
            out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(")
            out.extend(b"(")
            plain("storage")
            out.extend(b"ctorch\nHalfStorage\n")
            plain(node.key), plain("cpu"), plain(node.numel)
            out.extend(b"tQ")                      # the id tuple, BINPERSID
            stride = tuple(int(np.prod(node.shape[i + 1:], dtype=np.int64)) for i in range(len(node.shape)))
            plain(0), plain(node.shape), plain(stride), plain(False)
            out.extend(b"ccollections\nOrderedDict\n)R")
            out.extend(b"tR")                      # the arguments tuple, REDUCE

    emit(tree)
    return bytes(out + b".")


def write_codegeex_pt(path: Path, config: CodeGeeXConfig, seed: int = 0) -> Path:
    """THUDM's fp16 CodeGeeX `.pt` for `config`, written storage by storage."""
    path = Path(path)
    keys = iter(range(1 << 62))
    leaves = []

    def with_storages(node, prefix=""):
        if isinstance(node, dict):
            return {k: with_storages(v, f"{prefix}{k}.") for k, v in node.items()}
        leaves.append((prefix.rstrip("."), _Tensor(str(next(keys)), node)))
        return leaves[-1][1]

    tree = {"module": {"language_model": with_storages(codegeex_tensors(config))}}
    weights = RandomWeights(seed)
    archive_name = path.stem
    tmp = path.with_name(path.name + ".partial")
    # ZIP_STORED as torch.save: a member is then read at any offset without inflating what precedes it
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr(f"{archive_name}/data.pkl", _pickle_tree(tree))
        archive.writestr(f"{archive_name}/byteorder", "little")
        for name, tensor in leaves:
            with archive.open(f"{archive_name}/data/{tensor.key}", "w", force_zip64=True) as member:
                for chunk in weights.chunks(name, tensor.numel):
                    member.write(chunk.astype("<f2", copy=False).tobytes())
    tmp.replace(path)
    return path


# ---- CodeGen: Hugging Face's sharded safetensors --------------------------------------------

def codegen_tensors(config: CodeGenConfig) -> dict:
    """Name -> shape of Hugging Face's CodeGenForCausalLM state dict (torch's [out, in])."""
    e, inner, vocab = config.n_embd, config.inner_dim, config.vocab_size
    tensors = {"transformer.wte.weight": (vocab, e)}
    for index in range(config.n_layer):
        block = f"transformer.h.{index}"
        tensors.update({
            f"{block}.ln_1.weight": (e,), f"{block}.ln_1.bias": (e,),
            f"{block}.attn.qkv_proj.weight": (3 * e, e), f"{block}.attn.out_proj.weight": (e, e),
            f"{block}.mlp.fc_in.weight": (inner, e), f"{block}.mlp.fc_in.bias": (inner,),
            f"{block}.mlp.fc_out.weight": (e, inner), f"{block}.mlp.fc_out.bias": (e,),
        })
    tensors.update({"transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,),
                    "lm_head.weight": (vocab, e), "lm_head.bias": (vocab,)})
    return tensors


def huggingface_config(config: CodeGenConfig) -> dict:
    """config.json as Salesforce's CodeGen releases have it."""
    return {"architectures": ["CodeGenForCausalLM"], "model_type": "codegen", "activation_function": "gelu_new",
            "vocab_size": config.vocab_size, "n_positions": config.n_positions, "n_ctx": config.n_positions,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
            "rotary_dim": config.rotary_dim, "n_inner": config.n_inner,
            "layer_norm_epsilon": config.layer_norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0, "tie_word_embeddings": False, "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id, "torch_dtype": "float16"}


def write_huggingface_codegen(directory: Path, config: CodeGenConfig, seed: int = 0,
                              shard_bytes: int = SHARD_BYTES) -> Path:
    """config.json, fp16 shards of at most `shard_bytes` (a larger tensor gets one of its own) and the index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards, size = [[]], 0
    for name, shape in codegen_tensors(config).items():
        nbytes = 2 * int(np.prod(shape, dtype=np.int64))
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weights = RandomWeights(seed)
    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        file_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / file_name, [
            (name, shape, np.float16, (lambda name=name, shape=shape: weights.tensor(name, shape)))
            for name, shape in shard])
        for name, shape in shard:
            weight_map[name] = file_name
            total += 2 * int(np.prod(shape, dtype=np.int64))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(huggingface_config(config), indent=2) + "\n")
    return directory


def write(model: str, dst: Path, seed: int = 0) -> Path:
    config = MODELS[model]
    if isinstance(config, CodeGeeXConfig):
        return write_codegeex_pt(dst, config, seed)
    return write_huggingface_codegen(dst, config, seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(MODELS))
    parser.add_argument("dst", type=Path, help="the .pt file (CodeGeeX) or the directory (CodeGen) to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write(args.model, args.dst, args.seed)}")


if __name__ == "__main__":
    main()
