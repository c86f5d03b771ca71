"""Regenerate tests/fixtures/codegeex/ from the golden tiny CodeGeeX checkpoint.

Dev tooling only: needs torch (the package and its tests never import it). Run
from the repo root with the shared data beside the clone:

    /tmp/refvenv/bin/python tools/make_codegeex_fixtures.py [--golden ../shared/golden]

Copies the golden checkpoint, its reference outputs and hyper-parameters, then
re-saves the same weights in the other layouts THUDM's tools produce, so tests
can show every layout converts to the same model:

- codegeex-tiny-a-qkv.pt: Q/K/V fused into `attention.query_key_value` and the
  top-query layer's K/V into `attention.key_value` (THUDM's get_ckpt_qkv), fp16;
- mp2/: two model-parallel shards `mp_rank_XX_model_states.pt` with separate
  Q/K/V (THUDM's convert_ckpt_parallel), fp16, with the extra entries Megatron
  saves beside the weights;
- mp4-qkv/: four shards, each fusing the Q/K/V of its own heads, fp16.
"""
import argparse
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "codegeex"
NAME = "codegeex-tiny-a"

COLUMN_PARALLEL = (".attention.query.", ".attention.key.", ".attention.value.", ".mlp.dense_h_to_4h.")
ROW_PARALLEL = (".attention.dense.", ".mlp.dense_4h_to_h.")


def fuse_qkv(transformer: dict) -> dict:
    """Concatenate each layer's projections along their outputs, in THUDM's order."""
    fused = {}
    for name, tensor in transformer.items():
        prefix, found, rest = name.partition(".attention.")
        projection, _, kind = rest.partition(".")
        # the top-query layer's query reads another input, so only its key and value fuse
        parts = ("key", "value") if prefix == "topQueryLayer" else ("query", "key", "value")
        if not found or projection not in parts:
            fused[name] = tensor
        elif projection == parts[0]:
            fused[f"{prefix}.attention.{'_'.join(parts)}.{kind}"] = torch.cat(
                [transformer[f"{prefix}.attention.{p}.{kind}"] for p in parts], dim=0)
    return fused


def shard(language_model: dict, ranks: int, fused: bool) -> list[dict]:
    """Split like Megatron: column-parallel along outputs, row-parallel along inputs,
    vocab-parallel embeddings (words, top-query positions) along their rows."""
    def split(tensor, dim):
        return [t.clone() for t in torch.chunk(tensor, ranks, dim=dim)]

    embedding = language_model["embedding"]
    words = split(embedding["word_embeddings"]["weight"], 0)
    top_query = split(language_model["topQueryEmbedding"]["top_query_embeddings"]["weight"], 0)
    transformer = [{} for _ in range(ranks)]
    for name, tensor in language_model["transformer"].items():
        if any(p in name for p in ROW_PARALLEL) and name.endswith("weight"):
            pieces = split(tensor, 1)
        elif any(p in name for p in COLUMN_PARALLEL):
            pieces = split(tensor, 0)
        else:  # LayerNorms and row-parallel biases: every rank holds a copy
            pieces = [tensor.clone()] * ranks
        for rank, piece in enumerate(pieces):
            transformer[rank][name] = piece
    if fused:
        transformer = [fuse_qkv(t) for t in transformer]
    return [{
        "module": {"language_model": {
            "embedding": {"word_embeddings": {"weight": words[rank]},
                          "position_embeddings": {"weight": embedding["position_embeddings"]["weight"].clone()}},
            "topQueryEmbedding": {"top_query_embeddings": {"weight": top_query[rank]}},
            "transformer": transformer[rank],
        }},
        "iteration": 1000,
        "checkpoint_version": 3.0,
        "args": argparse.Namespace(tensor_model_parallel_size=ranks),
    } for rank in range(ranks)]


def half(tree):
    if isinstance(tree, dict):
        return {k: half(v) for k, v in tree.items()}
    return tree.half() if isinstance(tree, torch.Tensor) else tree


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", type=Path, default=ROOT.parent / "shared" / "golden")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for suffix in (".pt", ".npz", ".json"):
        shutil.copyfile(args.golden / f"{NAME}{suffix}", OUT / f"{NAME}{suffix}")

    golden = torch.load(args.golden / f"{NAME}.pt", map_location="cpu", weights_only=False)
    language_model = half(golden["module"]["language_model"])

    fused = dict(language_model, transformer=fuse_qkv(language_model["transformer"]))
    torch.save({"module": {"language_model": fused}}, OUT / f"{NAME}-qkv.pt")

    for directory, ranks, fuse in (("mp2", 2, False), ("mp4-qkv", 4, True)):
        (OUT / directory).mkdir(exist_ok=True)
        for rank, state in enumerate(shard(language_model, ranks, fuse)):
            torch.save(state, OUT / directory / f"mp_rank_{rank:02d}_model_states.pt")
    print(f"wrote {sorted(str(p.relative_to(OUT)) for p in OUT.rglob('*') if p.is_file())}")


if __name__ == "__main__":
    main()
