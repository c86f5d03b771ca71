"""Our checkpoint format, conversion from PaddleNLP, and the errors users see."""
import json
import os
import pickle
import shutil

import numpy as np
import paddle
import pytest

from codegen.checkpoints import CONFIG_FILE, WEIGHTS_FILE, convert, load_model, resolve_model_dir, save_model
from codegen.torch_pickle import CheckpointError, load_torch_file

from conftest import FIXTURES, random_codegen

IDS = [[5, 17, 900, 3, 44]]


def small_model(seed=3):
    return random_codegen(seed, vocab_size=1000, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4)


def logits(model):
    return model(paddle.to_tensor(IDS)).numpy()


def test_save_then_load_round_trips_every_weight(tmp_path):
    model = small_model()
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert np.array_equal(logits(model), logits(loaded))


def paddlenlp_dir(tmp_path, model, config_style="flat"):
    src = tmp_path / "paddlenlp"
    src.mkdir()
    config = {**model.config.to_dict(), "n_ctx": 32, "architectures": ["CodeGenForCausalLM"]}
    if config_style == "init_args":  # PaddleNLP before 2.5
        config = {"init_args": [config], "init_class": "CodeGenForCausalLM"}
    (src / "model_config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize("config_style, protocol", [("flat", 4), ("init_args", 4), ("flat", 3), ("flat", 2)])
def test_paddlenlp_checkpoint_converts(tmp_path, config_style, protocol):
    # protocol 4 is paddle.save's default; 2 pickles bytes through _codecs.encode
    model = small_model()
    src = paddlenlp_dir(tmp_path, model, config_style)
    paddle.save({k: v for k, v in model.state_dict().items()}, str(src / "model_state.pdparams"), protocol=protocol)
    converted = load_model(convert(src, tmp_path / "ours"))
    assert np.array_equal(logits(model), logits(converted))


def test_paddlenlp_tensors_saved_in_slices_are_joined(tmp_path):
    # paddle.save with protocol 2 or 3 stores a tensor over 1 GiB as flat slices "NAME@@.i" listed
    # under UnpackBigParamInfor@@ (paddle/framework/io_utils.py); the same layout for a small tensor
    model = small_model()
    src = paddlenlp_dir(tmp_path, model)
    state = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
    wte = state.pop("transformer.wte.weight")
    slices = {f"transformer.wte.weight@@.{i}": part for i, part in enumerate(np.array_split(wte.ravel(), 3))}
    state.update(slices)
    state["UnpackBigParamInfor@@"] = {"transformer.wte.weight": {"OriginShape": wte.shape, "slices": list(slices)}}
    with open(src / "model_state.pdparams", "wb") as f:
        pickle.dump(state, f, protocol=2)
    assert np.array_equal(paddle.load(str(src / "model_state.pdparams"))["transformer.wte.weight"], wte)
    converted = load_model(convert(src, tmp_path / "ours"))
    assert np.array_equal(logits(model), logits(converted))


def test_paddlenlp_bfloat16_weights_are_refused_naming_the_tensor(tmp_path):
    # Paddle pickles bfloat16 as uint16: converting those bits as integers would be silently wrong
    model = small_model()
    src = paddlenlp_dir(tmp_path, model)
    state = {name: tensor.astype("bfloat16") for name, tensor in model.state_dict().items()}
    paddle.save(state, str(src / "model_state.pdparams"))
    with pytest.raises(CheckpointError, match=f"^{src / 'model_state.pdparams'}: tensor .* is uint16; only "
                                              f"float32 and float16 weights are supported"):
        convert(src, tmp_path / "ours")


def test_converted_directory_carries_a_tokenizer(tmp_path):
    from codegen.tokenizer import load_tokenizer
    dst = convert(FIXTURES / "hf-codegen-tiny", tmp_path / "c")
    assert load_tokenizer(dst).encode("def f():\n    return 1") == load_tokenizer("codegen").encode("def f():\n    return 1")


def test_torch_reader_refuses_to_run_code_from_the_pickle(tmp_path):
    # a pickle that would call os.system if unpickled with the standard unpickler
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with zipfile.ZipFile(tmp_path / "evil.bin", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}))
    with pytest.raises(CheckpointError, match=f"evil.bin: refuses global {os.name}.system"):
        load_torch_file(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned").exists()


def test_unknown_name_says_where_it_looked_and_how_to_convert(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEN_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        resolve_model_dir("Salesforce/codegen-350M-mono")
    assert str(tmp_path / "Salesforce" / "codegen-350M-mono") in str(e.value)
    assert "codegen convert" in str(e.value)


def test_public_name_resolves_under_codegen_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEGEN_HOME", str(tmp_path))
    save_model(small_model(), tmp_path / "Salesforce" / "codegen-350M-mono")
    assert resolve_model_dir("Salesforce/codegen-350M-mono") == tmp_path / "Salesforce" / "codegen-350M-mono"


def test_truncated_weights_are_a_clear_error(tmp_path):
    d = save_model(small_model(), tmp_path / "m")
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(d)


def test_weights_that_do_not_match_the_config_are_a_clear_error(tmp_path):
    d = save_model(small_model(), tmp_path / "m")
    config = json.loads((d / CONFIG_FILE).read_text())
    config["n_layer"] = 3
    (d / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing"):
        load_model(d)
    config["n_layer"], config["n_embd"], config["rotary_dim"] = 2, 64, 4
    (d / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape"):
        load_model(d)


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    d = save_model(small_model(), tmp_path / "m")
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(d)


def test_converting_something_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a recognised checkpoint"):
        convert(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing", tmp_path / "out")


def test_hf_checkpoint_with_wrong_shapes_is_rejected_before_writing(tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(FIXTURES / "hf-codegen-tiny-bin", src)
    config = json.loads((src / "config.json").read_text())
    config["n_embd"] = 64
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out" / WEIGHTS_FILE).exists()
