"""CodeGeeX: parity with THUDM's reference model, caching, padding, and conversion
of every checkpoint layout THUDM publishes.

The golden checkpoint and its reference outputs come from THUDM's PyTorch model
(see tests/fixtures/codegeex/README.md); the fused and sharded layouts are the
same weights re-saved by tools/make_codegeex_fixtures.py.
"""
import json
import pickle
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import codegeex_greedy, codegeex_logits as logits, needs_kernels
from safetensors.numpy import load_file

from codegen.checkpoints import WEIGHTS_FILE, _codegeex_hyperparameters, convert
from codegen.models.codegeex import CodeGeeXConfig, CodeGeeXForCausalLM

FIXTURES = Path(__file__).parent / "fixtures" / "codegeex"
GOLDEN_PT = FIXTURES / "codegeex-tiny-a.pt"
GOLDEN_JSON = FIXTURES / "codegeex-tiny-a.json"
REFERENCE = np.load(FIXTURES / "codegeex-tiny-a.npz")


@pytest.fixture(params=["plain", pytest.param("fused", marks=needs_kernels)])
def plain_or_fused(request):
    """The golden CodeGeeX on either path: what both must do alike."""
    return request.getfixturevalue({"plain": "golden_codegeex", "fused": "fused_golden_codegeex"}[request.param])


def test_logits_match_the_reference_model(golden_codegeex):
    ours = logits(golden_codegeex, REFERENCE["input_ids"])
    assert ours.shape == REFERENCE["logits"].shape
    assert np.abs(ours - REFERENCE["logits"]).max() <= 1e-4


def test_cached_greedy_decoding_reproduces_the_reference_continuation(golden_codegeex):
    prompt = REFERENCE["greedy_prompt"]
    expected = REFERENCE["greedy_new_ids"][0].tolist()
    cache = golden_codegeex.new_cache(batch_size=1)
    assert codegeex_greedy(golden_codegeex, prompt, len(expected), cache) == expected
    assert cache.length == prompt.shape[1] + len(expected) - 1     # every token but the last was fed


def test_batched_generation_reproduces_the_reference_continuation(golden_codegeex, golden_codegeex_dir):
    import codegen
    from codegen.generation import GenerationConfig, generate
    tokenizer = codegen.load_tokenizer(golden_codegeex_dir)
    prompt = REFERENCE["greedy_prompt"][0].tolist()
    # same length: padding would use the tokenizer's pad id, beyond this tiny vocabulary
    other = REFERENCE["input_ids"][1].tolist()
    alone = generate(golden_codegeex, tokenizer, [other], GenerationConfig(max_new_tokens=12))
    both = generate(golden_codegeex, tokenizer, [prompt, other], GenerationConfig(max_new_tokens=12))
    assert both[0][0].token_ids == REFERENCE["greedy_new_ids"][0].tolist()
    assert both[1][0].token_ids == alone[0][0].token_ids


def test_cached_decoding_equals_a_full_forward(plain_or_fused):
    model = plain_or_fused
    ids = REFERENCE["input_ids"]
    full = logits(model, ids)
    cache = model.new_cache(batch_size=2, max_length=ids.shape[1])
    # a prompt (on the fused path, GEMMs), then steps of 1 and 3 tokens (matvecs): keys and values of
    # every layer, the top-query layer's included, come back from the cache
    pieces = [logits(model, ids[:, a:b], cache=cache) for a, b in ((0, 9), (9, 10), (10, 13), (13, 16))]
    assert len(cache.keys) == 4
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


def test_left_padding_gives_each_row_its_unpadded_logits(plain_or_fused):
    model = plain_or_fused
    short, long = REFERENCE["input_ids"][0, :5], REFERENCE["input_ids"][1, :12]
    ids = np.zeros((2, 12), dtype=np.int64)
    mask = np.zeros((2, 12), dtype=np.int64)
    ids[0, 7:], mask[0, 7:] = short, 1
    ids[1], mask[1] = long, 1
    batched = logits(model, ids, mask)
    np.testing.assert_allclose(batched[0, 7:], logits(model, [short])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched[1], logits(model, [long])[0], atol=1e-5, rtol=0)
    # the padded row keeps going from the cache, its positions those of the row alone
    cache = model.new_cache(batch_size=2)
    logits(model, ids, mask, cache)
    step = logits(model, [[3], [4]], np.concatenate([mask, [[1], [1]]], axis=1), cache)
    np.testing.assert_allclose(step[0, 0], logits(model, [[*short, 3]])[0, -1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(step[1, 0], logits(model, [[*long, 4]])[0, -1], atol=1e-5, rtol=0)


def test_too_long_input_is_refused(golden_codegeex):
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        logits(golden_codegeex, np.zeros((1, 65), dtype=np.int64))


def test_converted_checkpoint_records_its_shape_and_carries_the_codegeex_tokenizer(golden_codegeex_dir):
    import codegen
    config = json.loads((golden_codegeex_dir / "config.json").read_text())
    assert config["model_type"] == "codegeex"
    # THUDM's num_layers 3 is the standard layers; ours counts the top-query layer too
    assert (config["num_layers"], config["hidden_size"], config["num_attention_heads"]) == (4, 64, 4)
    tokenizer = codegen.load_tokenizer(golden_codegeex_dir)
    # CodeGeeX encodes a run of n spaces as <|extratoken_{8+n}|> = 50256 + 8 + n
    assert tokenizer.encode("    return x")[0] == 50256 + 8 + 4
    assert tokenizer.eos_token_id == 50256


@pytest.mark.parametrize("layout", ["codegeex-tiny-a-qkv.pt", "mp2", "mp4-qkv"])
def test_fused_and_sharded_layouts_convert_to_the_same_weights(golden_codegeex_dir, layout, tmp_path):
    expected = load_file(str(golden_codegeex_dir / WEIGHTS_FILE))
    got = load_file(str(convert(FIXTURES / layout, tmp_path / "out", config_path=GOLDEN_JSON) / WEIGHTS_FILE))
    assert sorted(got) == sorted(expected)
    for name, array in got.items():
        assert array.dtype == np.float16, name  # these fixtures are fp16, like THUDM's release
        np.testing.assert_array_equal(array, expected[name].astype(np.float16), err_msg=name)


def test_a_missing_shard_is_named(tmp_path):
    shutil.copy(FIXTURES / "mp4-qkv" / "mp_rank_00_model_states.pt", tmp_path)
    shutil.copy(FIXTURES / "mp4-qkv" / "mp_rank_02_model_states.pt", tmp_path)
    with pytest.raises(ValueError, match="missing mp_rank_01_model_states.pt"):
        convert(tmp_path, tmp_path / "out", config_path=GOLDEN_JSON)


def test_a_checkpoint_other_than_13b_needs_a_config(tmp_path):
    with pytest.raises(ValueError, match="not CodeGeeX-13B's; give --config"):
        convert(GOLDEN_PT, tmp_path / "out")


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 128}, "hidden_size is 128 but the checkpoint .* has 64"),
    ({"num_layers": 7}, "num_layers is 7 but the checkpoint .* has 4"),
    ({"padded_vocab_size": 52224}, "padded_vocab_size is 52224"),
    ({"num_attention_heads": 5}, "must be divisible by num_attention_heads"),
    ({"num_attention_heads": "4"}, "num_attention_heads must be a positive integer, got '4'"),
    ({"max_position_embeddings": None}, "missing max_position_embeddings"),
])
def test_a_config_that_does_not_fit_the_checkpoint_is_refused(tmp_path, change, message):
    config = {**json.loads(GOLDEN_JSON.read_text()), **change}
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        convert(GOLDEN_PT, tmp_path / "out", config_path=path)


def test_a_torch_file_without_a_codegeex_model_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {"step": 1}}))
    with pytest.raises(ValueError, match="not a CodeGeeX checkpoint"):
        convert(path, tmp_path / "out", config_path=GOLDEN_JSON)


def test_13b_shapes_need_no_config():
    def shape(*dims):
        return SimpleNamespace(shape=dims)
    pieces = {"word_embeddings.weight": shape(52224, 5120), "position_embeddings.weight": shape(2048, 5120),
              **{f"layers.{i}.input_layernorm.weight": shape(5120) for i in range(39)}}
    hyper = _codegeex_hyperparameters(pieces, Path("codegeex_13b.pt"), None)
    assert CodeGeeXConfig(**hyper) == CodeGeeXConfig()
    assert (hyper["num_layers"], hyper["num_attention_heads"]) == (40, 40)


def test_13b_config_is_registered():
    from codegen.models import MODEL_TYPES, PUBLIC_CONFIGS
    assert MODEL_TYPES["codegeex"] == (CodeGeeXConfig, CodeGeeXForCausalLM)
    config = PUBLIC_CONFIGS["THUDM/codegeex-13b"]
    assert (config.num_layers, config.hidden_size, config.num_attention_heads, config.vocab_size,
            config.max_position_embeddings, config.head_dim) == (40, 5120, 40, 52224, 2048, 128)
