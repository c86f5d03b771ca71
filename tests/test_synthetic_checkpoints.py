"""tools/make_synthetic_checkpoint.py at tiny sizes: the layouts bench/bench_big_models.py writes at full
size (THUDM's CodeGeeX .pt, Hugging Face's sharded CodeGen safetensors) convert, load and generate."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import FIXTURES, REPO, tool_module

synthetic = tool_module("make_synthetic_checkpoint")

# the golden tiny CodeGeeX's shapes: 3 standard layers and the top-query layer, which our num_layers counts
TINY_CODEGEEX = dict(hidden_size=64, num_layers=4, num_attention_heads=4, padded_vocab_size=1024,
                     max_position_embeddings=64)


def tiny_codegen_config():
    from codegen.models.codegen import CodeGenConfig
    return CodeGenConfig(vocab_size=51200, n_positions=256, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)


def generate(model_dir, prompt, new_tokens: int = 8):
    from codegen.generation.config import GenerationConfig
    from codegen.predictor import Predictor
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return Predictor(model_dir).generate([prompt], config)[0][0]


def test_codegen_is_sharded_as_hugging_face_ships_it_and_converts_to_its_values(tmp_path):
    from codegen.checkpoints import SafetensorsFile, convert
    src = synthetic.write_huggingface_codegen(tmp_path / "hf", tiny_codegen_config(), shard_bytes=2 << 20)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert json.loads((src / "config.json").read_text())["n_layer"] == 2
    files = {name: SafetensorsFile(src / name) for name in shards}
    held = {tensor: name for name, f in files.items() for tensor in f.names}
    assert held == index["weight_map"]
    assert index["metadata"]["total_size"] == sum((src / name).stat().st_size - files[name].data_start
                                                  for name in shards)

    convert(src, tmp_path / "fp32")
    ours = SafetensorsFile(tmp_path / "fp32" / "model.safetensors")
    for name in ("transformer.h.1.mlp.fc_in.weight", "lm_head.weight"):  # in the first and the last shard
        source = files[held[name]].float_rows(name)
        assert source.dtype == np.float32 and 0.01 < source.std() < 0.03
        np.testing.assert_array_equal(ours.float_rows(name), source.T)
    assert (files[held["transformer.h.0.ln_1.weight"]].float_rows("transformer.h.0.ln_1.weight") == 1).all()

    convert(src, tmp_path / "int8", quantize="int8")
    assert len(generate(tmp_path / "int8", "def fib(n):").token_ids) == 8


def test_a_missing_shard_is_named(tmp_path):
    from codegen.checkpoints import convert
    src = synthetic.write_huggingface_codegen(tmp_path / "hf", tiny_codegen_config(), shard_bytes=2 << 20)
    (src / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00004.safetensors"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_codegeex_pt_has_the_layout_of_thudms_and_converts(tmp_path):
    from codegen.models.codegeex import CodeGeeXConfig
    from codegen.torch_pickle import load_torch_file, named_tensors
    pt = synthetic.write_codegeex_pt(tmp_path / "codegeex.pt", CodeGeeXConfig(**TINY_CODEGEEX))
    with zipfile.ZipFile(pt) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    ours = {name: (t.shape, t.dtype) for name, t in named_tensors(load_torch_file(pt))}
    # the golden checkpoint was saved by torch from THUDM's model code (in fp32)
    golden = {name: t.shape for name, t in named_tensors(load_torch_file(FIXTURES / "codegeex" / "codegeex-tiny-a.pt"))}
    assert {name: shape for name, (shape, _) in ours.items()} == golden
    assert {dtype for _, dtype in ours.values()} == {np.float16}

    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_CODEGEEX))
    done = subprocess.run([sys.executable, "-m", "codegen.cli", "convert", pt, tmp_path / "int8", "--config", config,
                           "--quantize", "int8"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "int8" / "config.json").read_text())["weight_format"] == "int8"
    # token ids: the tiny vocabulary is smaller than the tokenizer's
    assert len(generate(tmp_path / "int8", list(range(100, 120))).token_ids) == 8
