"""Converting and loading a CodeGeeX checkpoint stream tensor by tensor.

The checkpoint is synthetic, at the full width of CodeGeeX-13B (hidden 5120,
40 heads, so every weight has the 13B shape) with one standard layer plus the
top-query layer, in fp16 like THUDM's release, written without torch by
tools/make_synthetic_checkpoint.py. Each step runs in a fresh interpreter so
its peak RSS (ru_maxrss) is its own.

Run as a script to print the figures recorded in bench/codegeex.md:
    .venv/bin/python tests/test_codegeex_memory.py [--layers N] [--keep DIR]
"""
import json
from pathlib import Path

from conftest import MEASURE_RSS, run_measured, tool_module

HIDDEN, HEADS, VOCAB, POSITIONS = 5120, 40, 1024, 64


def synthetic_checkpoint(path: Path, standard_layers: int) -> int:
    """A CodeGeeX `.pt` of 13B-width layers (tools/make_synthetic_checkpoint.py); returns its tensor bytes."""
    from codegen.models.codegeex import CodeGeeXConfig
    config = CodeGeeXConfig(hidden_size=HIDDEN, num_layers=standard_layers + 1, num_attention_heads=HEADS,
                            padded_vocab_size=VOCAB, max_position_embeddings=POSITIONS)
    tool_module("make_synthetic_checkpoint").write_codegeex_pt(path, config)
    return 2 * config.parameter_count


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
