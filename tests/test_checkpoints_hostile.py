"""Checkpoints crafted to attack codegen: refused with one line naming the file, nothing runs, nothing
is read out of bounds (issue 14). Every hostile file is written by hand, without torch."""
import argparse
import dataclasses
import json
import pickle
import random
import shutil
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from codegen.checkpoints import WEIGHTS_FILE, CheckpointError, convert, load_model
from codegen.models.codegeex import CodeGeeXConfig
from codegen.models.codegen import CodeGenConfig
from codegen.paddle_pickle import load_paddle_state
from codegen.torch_pickle import load_torch_file, named_tensors

from conftest import FIXTURES, Build, Call, Global, Raw, pickle_opcodes, torch_tensor, write_torch_file

FLOATS = np.arange(16, dtype="<f4")
CODEGEEX_JSON = FIXTURES / "codegeex" / "codegeex-tiny-a.json"


def hf_dir(tmp_path, graph, storages=None, compress=False, config=None):
    """A Hugging Face CodeGen directory: the tiny fixture's config.json and a crafted pytorch_model.bin."""
    src = tmp_path / "hf"
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps(config or json.loads(
        (FIXTURES / "hf-codegen-tiny-bin" / "config.json").read_text())))
    write_torch_file(src / "pytorch_model.bin", graph, storages, compress)
    return src


def plain(obj) -> Raw:
    """`obj` as the standard pickler writes it, inside a hand-written pickle."""
    return Raw(pickle.dumps(obj, protocol=2)[2:-1])


def codegen_cli(*args):
    return subprocess.run([sys.executable, "-m", "codegen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_refusal(run, *needles):
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- out-of-bounds layouts -------------------------------------------------------

@pytest.mark.parametrize("shape, stride, offset, problem", [
    ((32, 96), None, 0, "reaches element 3071 of storage 0, which holds 16"),   # the issue's [32, 96] over 4 bytes
    ((4, 4), (8, 1), 0, "reaches element 27"),                                    # stride past the end
    ((4,), (1,), 13, "reaches element 16"),                                       # offset past the end
    ((4,), (-1,), 0, "must be in 0.."),
    ((4,), (1,), -1, "must be in 0.."),
    ((2 ** 70,), (0,), 0, "must be in 0.."),                                      # overflow of numpy's arithmetic
    ((2 ** 30, 2 ** 30), (0, 0), 0, "must be in 0.."),
    ((4.0,), (1,), 0, "must be integers"),
    ((True,), (1,), 0, "must be integers"),
    ((2, 2), (1,), 0, "2 sizes but 1 strides"),
])
def test_a_tensor_outside_its_storage_is_refused_naming_it(tmp_path, shape, stride, offset, problem):
    graph = {"transformer.wte.weight": torch_tensor("0", shape, stride, offset, numel=16)}
    path = write_torch_file(tmp_path / "pytorch_model.bin", graph, {"0": FLOATS.tobytes()})
    with pytest.raises(CheckpointError) as e:
        load_torch_file(path)
    assert str(e.value).startswith(f"{path}: tensor transformer.wte.weight: shape ")
    assert problem in str(e.value)


def test_reading_checks_the_layout_again(tmp_path):
    path = write_torch_file(tmp_path / "m.bin", {"w": torch_tensor("0", (4, 4))}, {"0": FLOATS.tobytes()})
    tensor = load_torch_file(path)["w"]
    assert np.array_equal(tensor.numpy(), FLOATS.reshape(4, 4))
    with pytest.raises(CheckpointError, match="reaches element 3071 of storage 0"):
        dataclasses.replace(tensor, shape=(32, 96), stride=(96, 1)).numpy()


@pytest.mark.parametrize("state", [{"shape": (32, 96)}, (None, {"shape": (32, 96)})])
def test_a_pickle_cannot_rewrite_a_tensor_after_its_layout_was_checked(tmp_path, state):
    graph = {"w": Build(torch_tensor("0", (4,), numel=16), state)}
    path = write_torch_file(tmp_path / "m.bin", graph, {"0": FLOATS.tobytes()})
    with pytest.raises(CheckpointError, match="m.bin: corrupt PyTorch checkpoint .the pickle sets the state of a LazyTensor"):
        load_torch_file(path)


def test_views_strides_and_offsets_inside_the_storage_read_the_right_elements(tmp_path):
    graph = {"transposed": torch_tensor("0", (4, 4), (1, 4), numel=16),
             "tail": torch_tensor("0", (2, 3), (3, 1), offset=10, numel=16),
             "broadcast": torch_tensor("0", (3, 2), (0, 1), offset=5, numel=16),
             "empty": torch_tensor("0", (0, 64), (64, 1), numel=16),
             "scalar": torch_tensor("0", (), (), offset=15, numel=16)}
    state = load_torch_file(write_torch_file(tmp_path / "m.bin", graph, {"0": FLOATS.tobytes()}))
    assert np.array_equal(state["transposed"].numpy(), FLOATS.reshape(4, 4).T)
    assert np.array_equal(state["tail"].numpy(), FLOATS[10:16].reshape(2, 3))
    assert np.array_equal(state["broadcast"].numpy(), [[5, 6]] * 3)
    assert state["empty"].numpy().shape == (0, 64)
    assert state["scalar"].numpy() == 15


# ---- storages: declared sizes, zip bombs, bytes read -------------------------------

def test_a_storage_member_larger_than_declared_is_refused_before_it_is_inflated(tmp_path):
    # 8 MB of zeros deflate to ~8 KB; the pickle declares one float
    bomb = bytes(8 << 20)
    path = write_torch_file(tmp_path / "pytorch_model.bin", {"w": torch_tensor("0", (1,), numel=1)}, {"0": bomb},
                            compress=True)
    del bomb
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as e:
            load_torch_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value) == (f"{path}: storage 0 declares 1 elements (4 bytes) but its zip member holds "
                            f"{8 << 20} bytes; refused without reading it")
    assert peak < 1 << 20


def test_a_storage_is_read_only_as_far_as_its_tensor_needs(tmp_path):
    # an honest 8 MB storage holding a 2-element tensor: reading it must not inflate the rest
    data = np.zeros(2 << 20, "<f4")
    data[:2] = [1.5, 2.5]
    graph = {"w": torch_tensor("0", (2,), numel=data.size)}
    path = write_torch_file(tmp_path / "m.bin", graph, {"0": data.tobytes()}, compress=True)
    del data
    tensor = load_torch_file(path)["w"]
    tracemalloc.start()
    try:
        array = tensor.numpy()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert array.tolist() == [1.5, 2.5]
    assert peak < 1 << 20


def test_a_storage_missing_from_the_archive_is_named(tmp_path):
    path = write_torch_file(tmp_path / "m.bin", {"w": torch_tensor("7", (4,))}, {"0": FLOATS.tobytes()})
    with pytest.raises(CheckpointError, match="m.bin: storage 7 is not in the archive"):
        load_torch_file(path)


def test_an_int_as_storage_is_refused(tmp_path):
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    graph = {"w": Call(rebuild, (5, 0, (2,), (1,), False, Call(Global("collections", "OrderedDict"), ())))}
    path = write_torch_file(tmp_path / "m.bin", graph)
    with pytest.raises(CheckpointError) as e:
        load_torch_file(path)
    assert str(e.value) == f"{path}: corrupt PyTorch checkpoint (a tensor's storage must be a storage record, got int 5)"


def test_a_huge_object_graph_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("codegen.torch_pickle._MAX_PICKLE_BYTES", 1000)
    path = write_torch_file(tmp_path / "m.bin", {"padding": "x" * 2000})
    with pytest.raises(CheckpointError, match="data.pkl inflates to 20.. bytes"):
        load_torch_file(path)


# ---- globals: data, never code ------------------------------------------------------

@pytest.mark.parametrize("module, name, argument", [
    ("os", "system", "touch {marker}"),
    ("posix", "system", "touch {marker}"),
    ("builtins", "exec", "open({marker!r}, 'w')"),
    ("builtins", "eval", "open({marker!r}, 'w')"),
    ("subprocess", "check_call", ["touch", "{marker}"]),
    ("builtins", "getattr", "x"),
    ("torch", "load", "x"),  # torch itself, beyond the rebuild helpers, is code too
])
def test_a_global_that_is_not_data_is_refused_and_never_called(tmp_path, module, name, argument):
    marker = str(tmp_path / "pwned")
    argument = [a.format(marker=marker) for a in argument] if isinstance(argument, list) else \
        argument.format(marker=marker)
    graph = {"transformer.wte.weight": torch_tensor("0", (4,)), "evil": Call(Global(module, name), (argument,))}
    path = write_torch_file(tmp_path / "pytorch_model.bin", graph, {"0": FLOATS[:4].tobytes()})
    with pytest.raises(CheckpointError) as e:
        load_torch_file(path)
    assert str(e.value) == (f"{path}: refuses global {module}.{name}: "
                            f"a checkpoint may hold tensors and plain data only")
    assert not (tmp_path / "pwned").exists()


def test_training_arguments_and_rng_states_beside_the_weights_still_load(tmp_path):
    # what Megatron (CodeGeeX) saves next to "module", pickled by the standard pickler as torch.save does
    graph = {"module": {"language_model": {"w": torch_tensor("0", (4, 4))}},
             "args": plain(argparse.Namespace(tensor_model_parallel_size=2, seed=1234)),
             "np_rng_state": plain(np.random.RandomState(0).get_state()),
             "random_rng_state": plain(random.Random(0).getstate()),
             "torch_rng_state": torch_tensor("1", (8,), storage="ByteStorage"),
             "iteration": 1000, "checkpoint_version": 3.0}
    path = write_torch_file(tmp_path / "mp_rank_00_model_states.pt", graph,
                            {"0": FLOATS.tobytes(), "1": bytes(range(8))})
    tensors = dict(named_tensors(load_torch_file(path)))
    assert np.array_equal(tensors["module.language_model.w"].numpy(), FLOATS.reshape(4, 4))
    assert tensors["torch_rng_state"].numpy().tolist() == list(range(8))


@pytest.mark.parametrize("src, config", [
    ("hf-codegen-tiny-bin", None),
    ("codegeex/codegeex-tiny-a.pt", CODEGEEX_JSON),
    ("codegeex/mp2", CODEGEEX_JSON),
    ("codegeex/mp4-qkv", CODEGEEX_JSON),
])
def test_real_checkpoints_still_convert(tmp_path, src, config):
    dst = convert(FIXTURES / src, tmp_path / "out", config_path=config)
    assert (dst / WEIGHTS_FILE).stat().st_size > 100_000


# ---- configs -------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"vocab_size": 1e12}, "vocab_size must be an integer from 1 to 10000000, got 1000000000000.0"),
    ({"vocab_size": 10 ** 12}, "vocab_size must be an integer from 1 to 10000000"),
    ({"n_embd": 0}, "n_embd must be an integer from 1 to 65536, got 0"),
    ({"n_layer": -2}, "n_layer must be an integer from 1 to 1000, got -2"),
    ({"n_head": "4"}, "n_head must be an integer"),
    ({"n_inner": 0}, "n_inner must be an integer"),
    ({"layer_norm_epsilon": "small"}, "layer_norm_epsilon must be a number between 0 and 1"),
    # each size allowed, together 1.3e12 parameters
    ({"vocab_size": 10_000_000, "n_embd": 65_536, "n_head": 64, "rotary_dim": 64}, "more than the 1,000,000,000,000"),
    # few parameters, but sin and cos tables of 2 GiB, which the model computes when it is built
    ({"n_positions": 1 << 20, "n_embd": 2048, "n_head": 4, "rotary_dim": 512},
     "the rotary tables (n_positions × rotary_dim) would hold 536,870,912 floats, more than the 268,435,456"),
])
def test_an_absurd_config_is_refused_naming_the_file(tmp_path, change, message):
    config = {**json.loads((FIXTURES / "hf-codegen-tiny-bin" / "config.json").read_text()), **change}
    src = hf_dir(tmp_path, {}, config=config)
    with pytest.raises(CheckpointError) as e:
        convert(src, tmp_path / "out")
    assert str(e.value).startswith(f"{src / 'config.json'}: ") and message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_converted_checkpoint_whose_config_was_made_absurd_does_not_load(tmp_path, tiny_model_dir):
    from codegen.predictor import Predictor
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "vocab_size": 1e12}))
    for load in (load_model, Predictor):
        with pytest.raises(CheckpointError, match=f"^{model_dir / 'config.json'}: vocab_size must be"):
            load(model_dir)


def test_parameter_count_is_what_the_model_allocates():
    import paddle
    from codegen.checkpoints import build_model
    for config in (CodeGenConfig(vocab_size=100, n_positions=16, n_embd=32, n_layer=3, n_head=4, rotary_dim=4),
                   CodeGenConfig(vocab_size=100, n_positions=16, n_embd=32, n_layer=1, n_head=4, rotary_dim=4,
                                 n_inner=48),
                   CodeGeeXConfig(hidden_size=32, num_layers=3, num_attention_heads=4, padded_vocab_size=100,
                                  max_position_embeddings=16)):
        with paddle.LazyGuard():
            model = build_model(config.to_dict())
        assert config.parameter_count == sum(int(np.prod(p.shape)) for p in model.parameters())


def test_rotary_table_size_is_what_the_model_builds():
    from codegen.models.codegen import CodeGenForCausalLM
    config = CodeGenConfig(vocab_size=100, n_positions=48, n_embd=32, n_layer=1, n_head=4, rotary_dim=6)
    model = CodeGenForCausalLM(config)
    assert config.rotary_table_size == model.rotary_sin.size + model.rotary_cos.size


# ---- safetensors -----------------------------------------------------------------------

def damaged_safetensors(tmp_path, how):
    src = tmp_path / "hf"
    shutil.copytree(FIXTURES / "hf-codegen-tiny", src)
    data = (src / "model.safetensors").read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header length past the end":
        data = struct.pack("<Q", len(data) * 2) + data[8:]
    else:  # a header that is not JSON
        data = data[:8] + b"{not json" + data[17:]
    (src / "model.safetensors").write_bytes(data)
    return src


@pytest.mark.parametrize("how", ["truncated", "header length past the end", "header not JSON"])
def test_a_damaged_safetensors_file_is_refused_naming_it(tmp_path, how):
    src = damaged_safetensors(tmp_path, how)
    with pytest.raises(CheckpointError, match=f"^{src / 'model.safetensors'}: corrupt safetensors file"):
        convert(src, tmp_path / "out")


def test_truncated_weights_of_a_converted_checkpoint_are_refused_by_the_predictor(tmp_path, tiny_model_dir):
    from codegen.predictor import Predictor
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    data = (model_dir / WEIGHTS_FILE).read_bytes()
    (model_dir / WEIGHTS_FILE).write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=f"^{model_dir / WEIGHTS_FILE}: corrupt safetensors file"):
        Predictor(model_dir)


# ---- the table, through `codegen convert` ----------------------------------------

def test_every_hostile_checkpoint_is_one_line_and_exit_2_from_the_cli(tmp_path):
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    ordered_dict = Call(Global("collections", "OrderedDict"), ())
    tiny_config = json.loads((FIXTURES / "hf-codegen-tiny-bin" / "config.json").read_text())
    cases = {
        "out of bounds": ({"transformer.wte.weight": torch_tensor("0", (32, 96), numel=1)},
                          {"0": FLOATS[:1].tobytes()}, False, None,
                          "tensor transformer.wte.weight: shape [32, 96]"),
        "zip bomb": ({"transformer.wte.weight": torch_tensor("0", (1,), numel=1)}, {"0": bytes(4 << 20)}, True, None,
                     "storage 0 declares 1 elements (4 bytes) but its zip member holds 4194304 bytes"),
        "os.system": ({"x": Call(Global("os", "system"), (f"touch {tmp_path / 'pwned'}",))}, None, False, None,
                      "refuses global os.system"),
        "int storage": ({"w": Call(rebuild, (5, 0, (2,), (1,), False, ordered_dict))}, None, False, None,
                        "a tensor's storage must be a storage record, got int"),
        "vocab 1e12": ({}, None, False, {**tiny_config, "vocab_size": 1e12}, "vocab_size must be an integer"),
    }
    for case, (graph, storages, compress, config, message) in cases.items():
        src = hf_dir(tmp_path / case.replace(" ", "-"), graph, storages, compress, config)
        run = codegen_cli("convert", src, tmp_path / "out")
        problem_file = "config.json" if config else "pytorch_model.bin"
        assert_one_line_refusal(run, f"{src / problem_file}: ", message)
    for how in ("truncated", "header not JSON"):
        src = damaged_safetensors(tmp_path / how.replace(" ", "-"), how)
        run = codegen_cli("convert", src, tmp_path / "out")
        assert_one_line_refusal(run, f"{src / 'model.safetensors'}: corrupt safetensors file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()


# ---- PaddleNLP model_state.pdparams: paddle.save's pickles ---------------------------------

def paddlenlp_dir(tmp_path, pdparams: bytes):
    """A PaddleNLP CodeGen directory: the tiny fixture's config and `pdparams` as model_state.pdparams."""
    src = tmp_path / "paddlenlp"
    src.mkdir(parents=True)
    shutil.copy(FIXTURES / "hf-codegen-tiny-bin" / "config.json", src / "model_config.json")
    (src / "model_state.pdparams").write_bytes(pdparams)
    return src


PLAIN_F4 = (3, "<", None, None, None, -1, -1, 0)   # numpy's dtype state for float32


def crafted_array(state, dtype="f4", dtype_state=PLAIN_F4, subtype=Global("numpy", "ndarray")):
    """An ndarray as numpy pickles it, with `state(dtype)` as its (version, shape, dtype, is_fortran, bytes)."""
    dtype = Build(Call(Global("numpy", "dtype"), (dtype, False, True)), dtype_state)
    array = Call(Global("numpy.core.multiarray", "_reconstruct"), (subtype, (0,), b"b"))
    return Build(array, state(dtype))


def test_a_damaged_paddlenlp_checkpoint_is_refused_naming_it(tmp_path):
    src = paddlenlp_dir(tmp_path, b"\x80\x04\x95 not a pickle")
    with pytest.raises(CheckpointError, match=f"^{src / 'model_state.pdparams'}: corrupt PaddlePaddle checkpoint"):
        convert(src, tmp_path / "out")


def test_a_crafted_array_is_read_as_its_data_says(tmp_path):
    # the reader builds arrays itself: check it against numpy's own pickles of the same values
    path = tmp_path / "m.pdparams"
    path.write_bytes(pickle_opcodes({
        "crafted": crafted_array(lambda dtype: (1, (2, 2), dtype, False, FLOATS[:4].tobytes())),
        "fortran": plain(np.asfortranarray(FLOATS.reshape(4, 4))),
        "big-endian": plain(FLOATS.astype(">f4")),
        "int8": plain(np.arange(-3, 3, dtype=np.int8))}))
    arrays = {name: array.numpy() for name, array in load_paddle_state(path).items()}
    assert np.array_equal(arrays["crafted"], FLOATS[:4].reshape(2, 2))
    assert np.array_equal(arrays["fortran"], FLOATS.reshape(4, 4))
    assert np.array_equal(arrays["big-endian"], FLOATS)
    assert arrays["int8"].tolist() == [-3, -2, -1, 0, 1, 2]


@pytest.mark.parametrize("module, name, argument", [
    ("os", "system", "touch {marker}"),
    ("posix", "system", "touch {marker}"),
    ("builtins", "exec", "open({marker!r}, 'w')"),
    ("builtins", "eval", "open({marker!r}, 'w')"),  # what paddle.save itself writes for a DenseTensor
    ("subprocess", "check_call", ["touch", "{marker}"]),
    ("numpy", "load", "{marker}"),                  # numpy beyond the array constructors is code too
    ("paddle", "load", "{marker}"),
])
def test_a_pdparams_global_that_is_not_data_is_refused_and_never_called(tmp_path, module, name, argument):
    marker = str(tmp_path / "pwned")
    argument = [a.format(marker=marker) for a in argument] if isinstance(argument, list) else \
        argument.format(marker=marker)
    state = {"transformer.wte.weight": plain(FLOATS), "evil": Call(Global(module, name), (argument,))}
    src = paddlenlp_dir(tmp_path, pickle_opcodes(state))
    with pytest.raises(CheckpointError) as e:
        convert(src, tmp_path / "out")
    assert str(e.value) == (f"{src / 'model_state.pdparams'}: refuses global {module}.{name}: "
                            f"a checkpoint may hold tensors and plain data only")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("array, problem", [
    (crafted_array(lambda dtype: (1, (32, 96), dtype, False, FLOATS[:1].tobytes())),
     "tensor w: shape [32, 96] of float32 takes 12288 bytes, the file holds 4"),
    (crafted_array(lambda dtype: (1, (-1,), dtype, False, b"")), "tensor w: shape (-1,) is not up to 32 sizes"),
    (crafted_array(lambda dtype: (1, (0, 2 ** 70), dtype, False, b"")), "tensor w: shape (0, 118"),
    (crafted_array(lambda dtype: (1, (1,) * 33, dtype, False, FLOATS[:1].tobytes())), "is not up to 32 sizes"),
    (crafted_array(lambda dtype: (1, (1,), dtype, False, [1.0])),
     "tensor w: array state holds _DtypeRecord, bool, list where a dtype, a bool and bytes belong"),
    (crafted_array(lambda dtype: (2, (1,), dtype, False, FLOATS[:1].tobytes())), "is not numpy's (1, shape"),
    # lists nested 100,000 deep (EMPTY_LIST ... APPEND ...): deeper than repr() can recurse
    (Build(Call(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b")),
           Raw(b"]" * 100_000 + b"a" * 99_999)), "tensor w: array state [[[[[[[...]]]]]]] is not numpy's"),
    (crafted_array(lambda dtype: (1, (1,), dtype, False, FLOATS[:1].tobytes()), dtype="O8"),
     "corrupt PaddlePaddle checkpoint (an array of dtype 'O8' (only numbers are tensors))"),
    (crafted_array(lambda dtype: (1, (1,), dtype, False, FLOATS[:1].tobytes()),
                   dtype_state=(3, "|", None, ("a",), None, 4, 1, 16)), "not a plain number type"),
    (crafted_array(lambda dtype: (1, (1,), dtype, False, FLOATS[:1].tobytes()), subtype=Global("numpy", "dtype")),
     "_reconstruct of <function _dtype"),
    (Call(Global("numpy", "ndarray"), ((4,),)), "corrupt PaddlePaddle checkpoint (TypeError: 'object' object is "
                                                "not callable)"),
])
def test_a_crafted_pdparams_array_is_refused_naming_it(tmp_path, array, problem):
    path = tmp_path / "model_state.pdparams"
    path.write_bytes(pickle_opcodes({"w": array}))
    with pytest.raises(CheckpointError) as e:
        load_paddle_state(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)


@pytest.mark.parametrize("table, problem", [
    ({"w": {"OriginShape": (4, 4), "slices": ["w@@.0", "w@@.9"]}}, "tensor w: slices ['w@@.9'] are not arrays"),
    ({"w": {"OriginShape": (4, 5), "slices": ["w@@.0", "w@@.1"]}},
     "tensor w: shape [4, 5] does not hold its slices' 16 elements"),
    ({"w": {"OriginShape": (4, 4), "slices": [["w@@.0"]]}},
     "tensor w: slice record {'OriginShape': (4, 4), 'slices': [['w@@.0']]} is not {'OriginShape': shape, "
     "'slices': [names]}"),
    ({"w": "w@@.0"}, "tensor w: slice record 'w@@.0' is not"),
    ([], "UnpackBigParamInfor@@ is a list, not a dict"),
])
def test_a_bad_slice_table_is_refused_naming_the_tensor(tmp_path, table, problem):
    path = tmp_path / "model_state.pdparams"
    path.write_bytes(pickle_opcodes({"w@@.0": plain(FLOATS[:8]), "w@@.1": plain(FLOATS[8:]),
                                     "UnpackBigParamInfor@@": table}))
    with pytest.raises(CheckpointError) as e:
        load_paddle_state(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)


def test_every_hostile_pdparams_is_one_line_and_exit_2_from_the_cli(tmp_path):
    honest = pickle.dumps({"transformer.wte.weight": np.zeros((64, 64), np.float32)}, protocol=4)
    cases = {
        "truncated": (honest[: len(honest) // 2], "corrupt PaddlePaddle checkpoint (pickle data was truncated)"),
        "garbage": (bytes(random.Random(0).randrange(256) for _ in range(4096)), "corrupt PaddlePaddle checkpoint"),
        "a bytes length past the end": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"xyz",
                                        "corrupt PaddlePaddle checkpoint"),
        "not a dict": (pickle.dumps([1, 2]), "expected a state dict, found list"),
        "os.system": (pickle_opcodes({"x": Call(Global("os", "system"), (f"touch {tmp_path / 'pwned'}",))}),
                      "refuses global os.system"),
        "out of bounds": (pickle_opcodes({"w": crafted_array(lambda d: (1, (32, 96), d, False, b"1234"))}),
                          "tensor w: shape [32, 96] of float32 takes 12288 bytes, the file holds 4"),
    }
    for case, (data, message) in cases.items():
        src = paddlenlp_dir(tmp_path / case.replace(" ", "-"), data)
        run = codegen_cli("convert", src, tmp_path / "out")
        assert_one_line_refusal(run, f"{src / 'model_state.pdparams'}: ", message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
