"""Converting and loading a CodeGeeX checkpoint stream tensor by tensor.

The checkpoint is synthetic, at the full width of CodeGeeX-13B (hidden 5120,
40 heads, so every weight has the 13B shape) with one standard layer plus the
top-query layer, in fp16 like THUDM's release, written here without torch. Each
step runs in a fresh interpreter so its peak RSS (ru_maxrss) is its own.

Run as a script to print the figures recorded in bench/codegeex.md:
    .venv/bin/python tests/test_codegeex_memory.py [--layers N] [--keep DIR]
"""
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
from conftest import MEASURE_RSS, run_measured

HIDDEN, HEADS, VOCAB, POSITIONS = 5120, 40, 1024, 64
_STORAGES = {np.dtype(np.float16): "HalfStorage", np.dtype(np.float32): "FloatStorage"}


def write_torch_file(path: Path, tree: dict) -> None:
    """Save nested dicts of `(shape, dtype, make)` leaves in torch.save's zip format.

    `make()` returns the array; arrays are made and written one at a time. The
    pickle is written opcode by opcode since the globals it names are torch's.
    """
    leaves = []
    out = io.BytesIO()

    def string(s: str):
        data = s.encode()
        out.write(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def ints(values):
        out.write(pickle.MARK)
        for v in values:
            out.write(pickle.BININT + struct.pack("<i", v))
        out.write(pickle.TUPLE)

    def node(value):
        if isinstance(value, dict):
            out.write(pickle.EMPTY_DICT)
            if value:
                out.write(pickle.MARK)
                for key, child in value.items():
                    string(key)
                    node(child)
                out.write(pickle.SETITEMS)
            return
        shape, dtype, make = value
        key = str(len(leaves))
        leaves.append(value)
        numel = int(np.prod(shape))
        strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
        out.write(pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK)
        out.write(pickle.MARK)
        string("storage")
        out.write(pickle.GLOBAL + f"torch\n{_STORAGES[np.dtype(dtype)]}\n".encode())
        string(key)
        string("cpu")
        out.write(pickle.BININT + struct.pack("<i", numel) + pickle.TUPLE + pickle.BINPERSID)
        out.write(pickle.BININT + struct.pack("<i", 0))  # storage offset
        ints(shape)
        ints(strides)
        out.write(pickle.NEWFALSE)  # requires_grad
        out.write(pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE)
        out.write(pickle.TUPLE + pickle.REDUCE)

    out.write(pickle.PROTO + b"\x02")
    node(tree)
    out.write(pickle.STOP)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", out.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, (shape, dtype, make) in enumerate(leaves):
            array = make()
            assert array.shape == tuple(shape) and array.dtype == np.dtype(dtype)
            with archive.open(f"archive/data/{key}", "w", force_zip64=True) as f:
                f.write(memoryview(np.ascontiguousarray(array)).cast("B"))
        archive.writestr("archive/version", "3\n")


def synthetic_checkpoint(path: Path, standard_layers: int) -> int:
    """A CodeGeeX `.pt` of 13B-width layers with small constant-valued tensors; returns its tensor bytes."""
    total = 0

    def tensor(*shape):
        nonlocal total
        total += int(np.prod(shape)) * 2
        value = 0.01 * (len(shape) + 1)
        return shape, np.float16, lambda: np.full(shape, value, dtype=np.float16)

    def layer(prefix):
        h = HIDDEN
        return {
            **{f"{prefix}.{ln}.{k}": tensor(h) for ln in ("input_layernorm", "post_attention_layernorm")
               for k in ("weight", "bias")},
            **{f"{prefix}.attention.{p}.weight": tensor(h, h) for p in ("query", "key", "value", "dense")},
            **{f"{prefix}.attention.{p}.bias": tensor(h) for p in ("query", "key", "value", "dense")},
            f"{prefix}.mlp.dense_h_to_4h.weight": tensor(4 * h, h), f"{prefix}.mlp.dense_h_to_4h.bias": tensor(4 * h),
            f"{prefix}.mlp.dense_4h_to_h.weight": tensor(h, 4 * h), f"{prefix}.mlp.dense_4h_to_h.bias": tensor(h),
        }

    transformer = {}
    for i in range(standard_layers):
        transformer.update(layer(f"layers.{i}"))
    transformer.update(layer("topQueryLayer"))
    transformer.update({"final_layernorm.weight": tensor(HIDDEN), "final_layernorm.bias": tensor(HIDDEN)})
    tree = {"module": {"language_model": {
        "embedding": {"word_embeddings": {"weight": tensor(VOCAB, HIDDEN)},
                      "position_embeddings": {"weight": tensor(POSITIONS, HIDDEN)}},
        "topQueryEmbedding": {"top_query_embeddings": {"weight": tensor(POSITIONS, HIDDEN)}},
        "transformer": transformer,
    }}}
    write_torch_file(path, tree)
    return total


_CONVERT = MEASURE_RSS.format(
    imports="from codegen.checkpoints import convert\nfrom codegen.tokenizer import load_tokenizer\n"
            "import paddle\nload_tokenizer('codegeex')",
    step="convert(sys.argv[1], sys.argv[2], config_path=sys.argv[3])\nfigures = {}")
_LOAD = MEASURE_RSS.format(
    imports="import paddle\nfrom codegen.checkpoints import load_model",
    step="model = load_model(sys.argv[1])\n"
         "figures = {'params_bytes': sum(p.numel().item() * 4 for p in model.parameters())}")


def measure(directory: Path, standard_layers: int, load: bool) -> dict:
    src = directory / "codegeex-wide.pt"
    figures = {"tensor_bytes": synthetic_checkpoint(src, standard_layers),
               "largest_tensor_bytes": 4 * HIDDEN * HIDDEN * 2}  # dense_h_to_4h / dense_4h_to_h in fp16
    config = directory / "config.json"
    config.write_text(json.dumps({"hidden_size": HIDDEN, "num_layers": standard_layers + 1,
                                  "num_attention_heads": HEADS, "padded_vocab_size": VOCAB,
                                  "max_position_embeddings": POSITIONS}))
    dst = directory / "converted"
    converted = run_measured(_CONVERT, src, dst, config)
    src.unlink()  # disk: one copy of the weights at a time
    figures.update(convert_growth=converted["peak"] - converted["before"], convert_maxrss=converted["maxrss"])
    if load:
        loaded = run_measured(_LOAD, dst)
        figures.update(load_growth=loaded["peak"] - loaded["before"], load_maxrss=loaded["maxrss"],
                       fp32_params_bytes=loaded["params_bytes"])
    return figures


def test_conversion_streams_tensor_by_tensor(tmp_path):
    """About 20 s of CPU: writes and converts 1.2 GB. Loading is measured by the script mode."""
    m = measure(tmp_path, standard_layers=1, load=False)
    assert (tmp_path / "converted" / "model.safetensors").stat().st_size > m["tensor_bytes"]
    # Holding the checkpoint whole would take at least its tensor bytes; streaming
    # needs about two copies of the largest tensor (read and transposed).
    assert m["convert_growth"] < 0.5 * m["tensor_bytes"], m
    assert m["convert_growth"] < 3 * m["largest_tensor_bytes"], m


if __name__ == "__main__":
    import argparse
    import tempfile
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=1, help="standard layers besides the top-query layer")
    parser.add_argument("--keep", type=Path, help="work in this directory instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = measure(work, args.layers, load=True)
    mb = {k: round(v / 2**20) for k, v in figures.items()}
    print(json.dumps({"standard_layers": args.layers, **{f"{k}_MiB": v for k, v in mb.items()}}))
