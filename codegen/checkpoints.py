"""Checkpoints: our on-disk format, reading it, and converting others into it.

Our format is a directory with `config.json` (the model config plus
`model_type`), `model.safetensors` (Paddle layout: Linear weights [in, out])
and the tokenizer files. Conversion reads Hugging Face and PaddleNLP CodeGen
directories and THUDM's CodeGeeX `.pt` files, one tensor at a time, so peak
memory stays near one copy of the weights.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .paddle_pickle import load_paddle_state
from .restricted_pickle import CheckpointError
from .torch_pickle import LazyTensor, load_torch_file, named_tensors
from .weight_formats import bfloat16_to_float32, cast_rows, format_name, pack_linear

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# written into config.json: Hugging Face configs also say model_type "codegen"
FORMAT = "codegen-paddle/1"
# config.json key: what `codegen convert --quantize/--dtype` made of the weights (absent: float, as converted)
WEIGHT_FORMAT = "weight_format"


# Models inside the package, by name: the small default model lives here (examples/train_default_model.md).
PACKAGED_MODELS = Path(__file__).parent / "assets" / "models"


def codegen_home() -> Path:
    return Path(os.environ.get("CODEGEN_HOME", Path.home() / ".cache" / "codegen"))


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint directory from a path, the name of a model shipped in the package, or a public name
    under $CODEGEN_HOME, looked up in that order.

    Never downloads: a missing name says where we looked and how to convert a download.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    packaged = PACKAGED_MODELS / str(name_or_path)
    if path.name == str(name_or_path) and (packaged / CONFIG_FILE).is_file():
        return packaged
    home_path = codegen_home() / str(name_or_path)
    if home_path.is_dir():
        return home_path
    raise FileNotFoundError(
        f"no model '{name_or_path}': looked for the directory {path.resolve()} and {home_path}. "
        f"To use a public checkpoint, download it on a machine with internet "
        f"(e.g. `huggingface-cli download {name_or_path} --local-dir DOWNLOAD`), then run "
        f"`codegen convert DOWNLOAD {home_path}` (set CODEGEN_HOME to store models elsewhere).")


# ---- safetensors, written one tensor at a time ---------------------------------

_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
              np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}
# numpy has no bfloat16: an entry of this dtype holds its bits as uint16 and is written as BF16
BF16 = "bfloat16"


def _storage(dtype) -> tuple[str, np.dtype]:
    """(safetensors dtype, numpy dtype of the bytes) of an entry's dtype."""
    if isinstance(dtype, str) and dtype == BF16:
        return "BF16", np.dtype(np.uint16)
    return _ST_DTYPES[np.dtype(dtype)], np.dtype(dtype)


def write_safetensors(path: Path, tensors: Iterable[tuple[str, tuple, np.dtype, Callable[[], np.ndarray]]]):
    """Write (name, shape, dtype, load) entries, calling each `load` only when its bytes are due.

    The header needs every shape and offset up front, which the entries give without
    their data; the data then streams, so peak memory is one tensor. The file appears
    under its final name only when complete.
    """
    entries = list(tensors)
    header, offset = {}, 0
    for name, shape, dtype, _ in entries:
        st_dtype, dtype = _storage(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = Path(str(path) + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype, load in entries:
            array = np.ascontiguousarray(load(), dtype=_storage(dtype)[1])
            if tuple(array.shape) != tuple(shape):
                raise ValueError(f"tensor {name}: shape {array.shape}, header says {tuple(shape)}")
            f.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)


# ---- loading our format ---------------------------------------------------------

def read_json(path: Path) -> dict:
    """The JSON object in a checkpoint's file, or a CheckpointError naming the file."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def open_safetensors(path: Path):
    """`safe_open(path)`, which checks the header and that every tensor lies inside the file;
    a truncated or malformed file is a CheckpointError."""
    from safetensors import safe_open
    try:
        return safe_open(str(path), framework="np")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: corrupt safetensors file ({e})") from e


class SafetensorsFile:
    """A safetensors file read tensor by tensor, or a block of rows at a time, with plain file reads.

    Not memory-mapped: mapped pages count in the process's RSS while the file is open,
    which would double the peak of a load. Opening checks the header, and that every
    tensor lies inside the file, before anything is read.
    """

    _NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I8": np.int8, "I32": np.int32,
              "I64": np.int64, "U8": np.uint8}

    def __init__(self, path: Path):
        self.path = Path(path)
        with open_safetensors(self.path):
            pass
        with open(self.path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        for name, info in header.items():
            if info["dtype"] not in self._NUMPY:
                raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        self.header, self.data_start = header, 8 + size

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        """The safetensors dtype: F32, F16, BF16, I8, ..."""
        return self.header[name]["dtype"]

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the first axis (all of them by default), as stored (BF16 as uint16 bits)."""
        info = self.header[name]
        shape = info["shape"] or [1]
        stop = shape[0] if stop is None else stop
        dtype = np.dtype(self._NUMPY[info["dtype"]])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.data_start + info["data_offsets"][0] + start * row_bytes)
            array = np.fromfile(f, dtype=dtype, count=(stop - start) * row_bytes // dtype.itemsize)
        return array.reshape([stop - start, *shape[1:]] if info["shape"] else [])

    def float_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """`rows` as float32."""
        array = self.rows(name, start, stop)
        return bfloat16_to_float32(array) if self.dtype(name) == "BF16" else array.astype(np.float32, copy=False)


def read_config(model_dir: Path) -> dict:
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {model_dir} is not a converted codegen checkpoint "
                                f"(run `codegen convert SRC {model_dir}` first)")
    config = read_json(config_path)
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path} is not in codegen's format "
                              f"(convert it with `codegen convert {model_dir} DST`)")
    if config.get("model_type") not in ("codegen", "codegeex"):
        raise CheckpointError(f"{config_path}: model_type must be 'codegen' or 'codegeex', "
                              f"got {config.get('model_type')!r}")
    if config.get(WEIGHT_FORMAT, "float32") not in ("float32", "float16", "bfloat16", "int8"):
        raise CheckpointError(f"{config_path}: {WEIGHT_FORMAT} must be float32, float16, bfloat16 or int8, "
                              f"got {config[WEIGHT_FORMAT]!r}")
    checked_config(config, config_path)
    return config


def weight_format(config: dict) -> str:
    """The format a checkpoint's weights were converted to (float32: as the source stored them)."""
    return config.get(WEIGHT_FORMAT, "float32")


def int8_linear_names(model) -> list[str]:
    """The Linears an int8 checkpoint stores as int8 rows: all but the LM head, which keeps its float
    dtype for the plain path (the fast CPU path quantizes it at load; CodeGeeX's head is its tied
    embedding)."""
    import paddle.nn as nn
    return [name for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear) and name != "lm_head"]


def expected_tensors(model, fmt: str) -> dict:
    """Name -> shape of the tensors a checkpoint of `model` in format `fmt` holds: the state dict, with
    each int8 Linear as `NAME.weight` [out, in] int8 and `NAME.weight_scale` [out] float32."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if fmt == "int8":
        for name in int8_linear_names(model):
            fan_in, fan_out = expected[f"{name}.weight"]
            expected[f"{name}.weight"] = (fan_out, fan_in)
            expected[f"{name}.weight_scale"] = (fan_out,)
    return expected


def check_tensors(weights: "SafetensorsFile", expected: dict, where: str) -> None:
    """Every expected tensor, with its shape, and no other: before any data is read."""
    names = set(weights.names)
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights.path} does not match {where}: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, shape in expected.items():
        if weights.shape(name) != tuple(shape):
            raise ValueError(f"{weights.path}: {name} has shape {list(weights.shape(name))}, "
                             f"{where} expects {list(shape)}")


def checked_config(raw: dict, where: Path):
    """The config object for a config dict, whose sizes its class checks (a CheckpointError naming `where`)."""
    from .models import MODEL_TYPES
    try:
        return MODEL_TYPES[raw["model_type"]][0].from_dict(raw)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from e


def build_model(config: dict, parallel=None):
    """An uninitialised-weights model of the config's architecture; with `parallel` (a
    `models.parallel.TensorParallel`), this rank's share of it."""
    from .models import MODEL_TYPES
    from .models.parallel import UNSPLIT
    config_cls, model_cls = MODEL_TYPES[config["model_type"]]
    return model_cls(config_cls.from_dict(config), parallel or UNSPLIT)


def load_model(name_or_path, dtype: str = "float32"):
    """Load a converted checkpoint as a float model (for training and as the reference of the
    inference paths); weights are read into the model one tensor at a time."""
    import paddle

    model_dir = resolve_model_dir(name_or_path)
    config = read_config(model_dir)
    if weight_format(config) == "int8":
        raise ValueError(f"{model_dir} holds int8 weights (codegen convert --quantize int8): it is for "
                         f"inference (Predictor, Taskflow, codegen generate); train from the float checkpoint")
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found: the checkpoint in {model_dir} is incomplete")
    weights = SafetensorsFile(weights_path)
    with paddle.LazyGuard():
        model = build_model(config)
    state = model.state_dict()
    check_tensors(weights, expected_tensors(model, "float32"),
                  f"the {config['model_type']} config in {model_dir / CONFIG_FILE}")
    for name, param in state.items():
        param.initialize()
        param.set_value(cast_rows(lambda a, b, n=name: weights.float_rows(n, a, b), param.shape, "float32"))
    if dtype != "float32":
        model.to(dtype=dtype)
    model.eval()
    return model


def read_tensors_into(path: Path, state: dict, hint: str) -> None:
    """Set every tensor of `state` from the safetensors file `path`, which must hold
    exactly those names and shapes; `hint` ends the mismatch error (what to check)."""
    with open_safetensors(path) as f:
        names = set(f.keys())
        if names != set(state):
            raise ValueError(f"{path} does not match: missing {sorted(set(state) - names)[:5]}, "
                             f"unexpected {sorted(names - set(state))[:5]} ({hint})")
        for name, tensor in state.items():
            array = f.get_tensor(name)
            if list(array.shape) != list(tensor.shape):
                raise ValueError(f"{path}: {name} has shape {list(array.shape)}, expected {list(tensor.shape)}")
            tensor.set_value(array)


def save_model(model, model_dir, tokenizer=None) -> Path:
    """Write a model (and tokenizer) in our format."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    write_safetensors(model_dir / WEIGHTS_FILE,
                      [(name, tuple(t.shape), _numpy_dtype(t), (lambda t=t: t.numpy())) for name, t in state.items()])
    _write_config(model_dir, model.config.to_dict())
    if tokenizer is not None:
        tokenizer.save(model_dir)
    return model_dir


def init_random_codegen(model_dir, seed: int = 0, tokenizer=None, **config) -> Path:
    """A randomly initialised CodeGen in our format: the starting point for training from scratch, and a
    stand-in model for demos and tests. With a tokenizer other than CodeGen's (the default), the vocabulary
    size and end-of-text id follow it (the vocabulary rounded up to a multiple of 64, as CodeGen's is)."""
    import paddle
    from .models.codegen import CodeGenConfig, CodeGenForCausalLM
    from .tokenizer import codegen_tokenizer
    if tokenizer is None:
        tokenizer = codegen_tokenizer()
    else:
        config.update(vocab_size=-(-len(tokenizer) // 64) * 64,
                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    paddle.seed(seed)
    return save_model(CodeGenForCausalLM(CodeGenConfig(**config)), model_dir, tokenizer)


def _write_config(model_dir: Path, config: dict):
    (model_dir / CONFIG_FILE).write_text(json.dumps({**config, "format": FORMAT}, indent=1) + "\n")


def _numpy_dtype(tensor) -> np.dtype:
    return np.dtype(str(tensor.dtype).replace("paddle.", ""))


# ---- converting other formats ---------------------------------------------------

def detect_format(src: Path) -> str:
    if src.is_file() and src.suffix == ".pt":
        return "codegeex"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such checkpoint file or directory")
    if (src / CONFIG_FILE).is_file() and read_json(src / CONFIG_FILE).get("format") == FORMAT:
        return "ours"
    if (src / "model_state.pdparams").is_file():
        return "paddlenlp"
    if any(src.glob("*.safetensors")) or any(src.glob("pytorch_model*.bin")):
        return "huggingface"
    if any(src.glob("mp_rank_*_model_states.pt")) or any(src.glob("*.pt")):
        return "codegeex"
    raise ValueError(f"{src}: not a recognised checkpoint (expected Hugging Face config.json + model.safetensors "
                     f"or pytorch_model.bin, PaddleNLP model_state.pdparams, or CodeGeeX .pt files)")


def convert(src, dst, config_path=None, quantize: str | None = None, dtype: str | None = None) -> Path:
    """Convert a checkpoint at `src` into our format at `dst`; returns `dst`.

    `quantize="int8"` stores the Linears as int8 rows with their scales; `dtype` ("fp16" or
    "bf16") stores every weight in that format. `src` may be one of our own (float) checkpoints.
    """
    src, dst = Path(src), Path(dst)
    if quantize not in (None, "int8"):
        raise ValueError(f"--quantize must be int8, got {quantize!r}")
    if quantize and dtype:
        raise ValueError("give --quantize int8 or --dtype, not both: a checkpoint holds one weight format")
    fmt = "int8" if quantize else format_name(dtype) if dtype else None
    kind = detect_format(src)
    if kind == "huggingface":
        config, tensors = _huggingface_codegen(src)
    elif kind == "paddlenlp":
        config, tensors = _paddlenlp_codegen(src)
    elif kind == "codegeex":
        config, tensors = _codegeex(src, config_path)
    else:
        config, tensors = _ours(src, fmt)
    _write_converted(config, tensors, src if src.is_dir() else src.parent, dst, fmt)
    return dst


def _ours(src: Path, fmt: str | None):
    config = read_config(src)
    stored = weight_format(config)
    if fmt is None:
        raise ValueError(f"{src} is already in codegen's format (give --quantize int8 or --dtype to change "
                         f"the format of its weights)")
    if stored == "int8":
        raise ValueError(f"{src} already holds int8 weights; convert from the float checkpoint it was made from")
    weights = SafetensorsFile(src / WEIGHTS_FILE)
    config = {k: v for k, v in config.items() if k not in ("format", WEIGHT_FORMAT)}
    # float32 whatever they are stored as (BF16 has no numpy dtype)
    tensors = [(name, weights.shape(name), np.float16 if weights.dtype(name) == "F16" else np.float32,
                (lambda n=name: weights.float_rows(n) if weights.dtype(n) == "BF16" else weights.rows(n)))
               for name in weights.names]
    return config, tensors


def _in_format(model, tensors: list, fmt: str) -> list:
    """Conversion entries with the weights in `fmt`; each entry still loads its source tensor when due."""
    if fmt != "int8":
        dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": BF16}[fmt]
        return [(name, shape, dtype, (lambda load=load, shape=shape: cast_rows(_float_rows(load()), shape, fmt)))
                for name, shape, _, load in tensors]
    int8 = {f"{name}.weight" for name in int8_linear_names(model)}
    entries = []
    for name, shape, dtype, load in tensors:
        if name not in int8:
            entries.append((name, shape, dtype, load))
            continue
        packed = _Int8Linear(load, shape)
        entries.append((name, shape[::-1], np.int8, packed.weight))
        entries.append((f"{name}_scale", shape[1:], np.float32, packed.scale))
    return entries


def _float_rows(array: np.ndarray):
    return lambda start, stop: array[start:stop].astype(np.float32)


class _Int8Linear:
    """One Linear weight quantized when its int8 rows are due; its scales, written right after, come along."""

    def __init__(self, load, shape):
        self.load, self.shape, self._scale = load, shape, None

    def weight(self) -> np.ndarray:
        packed, self._scale = pack_linear(_float_rows(self.load()), self.shape, "int8")
        return packed

    def scale(self) -> np.ndarray:
        if self._scale is None:
            self.weight()
        scale, self._scale = self._scale, None
        return scale


def _write_converted(config: dict, tensors: list, src_dir: Path, dst: Path, fmt: str | None = None):
    from .tokenizer import load_tokenizer
    import paddle
    with paddle.LazyGuard():
        lazy_model = build_model(config)
    expected = {name: tuple(p.shape) for name, p in lazy_model.state_dict().items()}
    got = {name: tuple(shape) for name, shape, _, _ in tensors}
    if set(expected) != set(got):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise ValueError(f"checkpoint does not match a {config['model_type']} model: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if got[name] != shape:
            raise ValueError(f"checkpoint tensor {name} has shape {list(got[name])}, "
                             f"the config implies {list(shape)}")
    if fmt is not None:
        tensors = _in_format(lazy_model, tensors, fmt)
        config = {**config, WEIGHT_FORMAT: fmt}
    dst.mkdir(parents=True, exist_ok=True)
    write_safetensors(dst / WEIGHTS_FILE, tensors)
    _write_config(dst, config)
    has_own_tokenizer = (src_dir / "tokenizer_config.json").is_file() and \
        "family" in read_json(src_dir / "tokenizer_config.json")
    load_tokenizer(src_dir if has_own_tokenizer else config["model_type"]).save(dst)


def _codegen_config_from(raw: dict, where: Path) -> dict:
    if "init_args" in raw:  # PaddleNLP < 2.5 wrapped the config in its constructor arguments
        args = raw["init_args"] if isinstance(raw["init_args"], list) else []
        raw = next((a for a in args if isinstance(a, dict)), {})
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in raw]
    if missing:
        raise CheckpointError(f"{where}: not a CodeGen config (missing {', '.join(missing)})")
    return checked_config({**raw, "model_type": "codegen"}, where).to_dict()


_HF_IGNORED = ("attn.causal_mask", "attn.masked_bias", "attn.bias")


def _huggingface_codegen(src: Path):
    config = _codegen_config_from(read_json(src / CONFIG_FILE), src / CONFIG_FILE)
    tensors = []
    for name, shape, dtype, load in _hf_tensors(src):
        if name.endswith(_HF_IGNORED):
            continue
        if len(shape) == 2 and not name.endswith("wte.weight"):
            # torch Linear is [out, in]; Paddle's is [in, out]
            tensors.append((name, shape[::-1], dtype, (lambda load=load: load().T)))
        else:
            tensors.append((name, shape, dtype, load))
    return config, tensors


def _hf_tensors(src: Path) -> Iterator[tuple]:
    st_files = sorted(src.glob("*.safetensors"))
    _check_shards(src, st_files)
    if st_files:
        for path in st_files:
            with open_safetensors(path) as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    dtype = {"F32": np.float32, "F16": np.float16}.get(sl.get_dtype())
                    if dtype is None:
                        raise ValueError(f"{path}: tensor {name} is {sl.get_dtype()}; only F32 and F16 "
                                         f"safetensors are supported (re-save in float16 or float32)")
                    yield name, tuple(sl.get_shape()), dtype, (lambda p=path, n=name: _read_st(p, n))
        return
    for path in sorted(src.glob("pytorch_model*.bin")):
        state = load_torch_file(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
        for name, t in state.items():
            if not (isinstance(name, str) and isinstance(t, LazyTensor)):
                continue
            dtype = np.float32 if t.dtype == "bfloat16" else np.dtype(t.dtype)
            yield name, t.shape, dtype, t.numpy


def _check_shards(src: Path, st_files: list[Path]) -> None:
    """A sharded download (model-0000X-of-0000N.safetensors) must hold every shard its index names:
    a missing one would otherwise surface as a list of missing tensors."""
    index_path = src / "model.safetensors.index.json"
    if not index_path.is_file():
        return
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no weight_map object")
    missing = sorted(set(map(str, weight_map.values())) - {path.name for path in st_files})
    if missing:
        raise FileNotFoundError(f"{src}: shards {', '.join(missing)} named in {index_path.name} are missing "
                                f"(an interrupted download?)")


def _read_st(path: Path, name: str) -> np.ndarray:
    with open_safetensors(path) as f:
        return f.get_tensor(name)


def _paddlenlp_codegen(src: Path):
    config_path = src / "model_config.json" if (src / "model_config.json").is_file() else src / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{src}: PaddleNLP checkpoint without model_config.json or config.json")
    config = _codegen_config_from(read_json(config_path), config_path)
    weights = src / "model_state.pdparams"
    tensors = []
    for name, array in load_paddle_state(weights).items():
        if name.endswith(_HF_IGNORED):
            continue
        dtype = array.dtype.newbyteorder("=")  # the writer converts a big-endian file's bytes
        if dtype not in (np.float32, np.float16):
            # Paddle pickles bfloat16 as uint16, which cannot be told from real integers
            raise CheckpointError(f"{weights}: tensor {name} is {dtype.name}; only float32 and float16 "
                                  f"weights are supported (re-save in one of them)")
        tensors.append((name, tuple(array.shape), dtype, array.numpy))
    return config, tensors


def _codegeex(src: Path, config_path):
    """THUDM's CodeGeeX `.pt`: one file, or `mp_rank_XX_model_states.pt` shards in a directory."""
    shards = [_codegeex_flat_state(path) for path in _codegeex_shard_files(src)]
    pieces = _codegeex_pieces(shards, src)
    hyperparameters = _codegeex_hyperparameters(pieces, src, config_path)
    config = checked_config({**hyperparameters, "model_type": "codegeex"}, config_path or src).to_dict()
    tensors = [(name, piece.shape, piece.dtype, piece.load) for name, piece in pieces.items()]
    return config, tensors


_CODEGEEX_CONFIG_KEYS = ("hidden_size", "num_layers", "num_attention_heads", "padded_vocab_size",
                         "max_position_embeddings")


def _codegeex_shard_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    shards = sorted(src.glob("mp_rank_*_model_states.pt"))
    if shards:
        expected = [src / f"mp_rank_{rank:02d}_model_states.pt" for rank in range(len(shards))]
        if shards != expected:
            missing = sorted(set(expected) - set(shards))
            raise ValueError(f"{src}: model-parallel shards must be mp_rank_00 .. mp_rank_{len(shards) - 1:02d}; "
                             f"missing {', '.join(p.name for p in missing) or 'a rank'}, found "
                             f"{', '.join(p.name for p in shards)}")
        return shards
    files = sorted(src.glob("*.pt"))
    if len(files) != 1:
        raise ValueError(f"{src}: expected one CodeGeeX .pt file or mp_rank_XX_model_states.pt shards, "
                         f"found {', '.join(p.name for p in files) or 'none'}")
    return files


def _codegeex_flat_state(path: Path) -> dict:
    """`module -> language_model -> ...` flattened to dotted names of LazyTensors."""
    obj = load_torch_file(path)
    model = obj.get("module", obj) if isinstance(obj, dict) else None
    language_model = model.get("language_model") if isinstance(model, dict) else None
    if not isinstance(language_model, dict):
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a CodeGeeX checkpoint (expected module -> language_model -> "
                              f"embedding / topQueryEmbedding / transformer, found {found})")
    return dict(named_tensors(language_model))


class _CodeGeeXPiece:
    """One of our tensors, assembled from the shards' tensors when `load` is called.

    `axis` is where model parallelism split it (None: every shard holds a copy);
    `part` picks (index, count) out of a fused projection, which each shard fuses
    over its own heads; `transpose` turns torch's [out, in] into Paddle's [in, out].
    """

    def __init__(self, src: Path, name: str, tensors: list, axis, part=None, transpose=False):
        shapes = {t.shape for t in tensors}
        if len(shapes) != 1:
            raise CheckpointError(f"{src}: CodeGeeX tensor {name} has different shapes in the shards: "
                                  f"{sorted(shapes)}")
        self.tensors = tensors if axis is not None else tensors[:1]
        self.axis, self.part, self.transpose = axis, part, transpose
        shape = list(tensors[0].shape)
        rank = max(0 if axis is None else axis + 1, 0 if part is None else 1)
        if len(shape) < rank:
            raise CheckpointError(f"{src}: CodeGeeX tensor {name} has shape {shape}; it is split or fused "
                                  f"along a dimension it does not have")
        if part is not None:
            if shape[0] % part[1]:
                raise CheckpointError(f"{src}: CodeGeeX tensor {name}: {shape[0]} rows do not split into "
                                      f"{part[1]} fused projections")
            shape[0] //= part[1]
        if axis is not None:
            shape[axis] *= len(tensors)
        self.shape = tuple(shape[::-1] if transpose else shape)
        dtype = tensors[0].dtype
        self.dtype = np.dtype(np.float32 if dtype == "bfloat16" else dtype)

    def load(self) -> np.ndarray:
        arrays = []
        for tensor in self.tensors:
            array = tensor.numpy()
            if self.part is not None:
                index, count = self.part
                array = np.split(array, count, axis=0)[index]
            arrays.append(array)
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=self.axis)
        return array.T if self.transpose else array


_CODEGEEX_EMBEDDINGS = {
    # THUDM name -> (our name, shard axis): word and top-query embeddings are vocab-parallel
    "embedding.word_embeddings.weight": ("word_embeddings.weight", 0),
    "embedding.position_embeddings.weight": ("position_embeddings.weight", None),
    "topQueryEmbedding.top_query_embeddings.weight": ("top_query_embeddings.weight", 0),
}
_CODEGEEX_FUSED = {"query_key_value": ("query", "key", "value"), "key_value": ("key", "value")}


def _codegeex_pieces(shards: list[dict], src: Path) -> dict:
    names = list(shards[0])
    for path_index, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            diff = sorted(set(shard) ^ set(names))
            raise ValueError(f"{src}: mp_rank_{path_index:02d} holds different tensors from mp_rank_00 "
                             f"({', '.join(diff[:5])})")
    pieces = {}
    for name in names:
        tensors = [shard[name] for shard in shards]
        if name in _CODEGEEX_EMBEDDINGS:
            ours, axis = _CODEGEEX_EMBEDDINGS[name]
            pieces[ours] = _CodeGeeXPiece(src, name, tensors, axis)
            continue
        if not name.startswith("transformer."):
            raise ValueError(f"{src}: unexpected tensor {name} in a CodeGeeX checkpoint")
        ours = name[len("transformer."):].replace("topQueryLayer.", "top_query_layer.")
        module, _, kind = ours.rpartition(".")       # kind: weight or bias
        prefix, _, linear = module.rpartition(".")
        is_linear = linear in ("query", "key", "value", "dense", "dense_h_to_4h", "dense_4h_to_h",
                               *_CODEGEEX_FUSED)
        if not is_linear:                             # LayerNorms: copies on every shard
            pieces[ours] = _CodeGeeXPiece(src, name, tensors, None)
            continue
        # Megatron splits column-parallel Linears along their output and row-parallel
        # ones (attention.dense, dense_4h_to_h) along their input, whose bias every shard copies
        row_parallel = linear in ("dense", "dense_4h_to_h")
        axis = (1 if kind == "weight" else None) if row_parallel else 0
        transpose = kind == "weight"
        if linear in _CODEGEEX_FUSED:
            parts = _CODEGEEX_FUSED[linear]
            for index, part in enumerate(parts):
                pieces[f"{prefix}.{part}.{kind}"] = _CodeGeeXPiece(src, name, tensors, axis, (index, len(parts)),
                                                                   transpose)
        else:
            pieces[ours] = _CodeGeeXPiece(src, name, tensors, axis, transpose=transpose)
    return pieces


def _codegeex_hyperparameters(pieces: dict, src: Path, config_path) -> dict:
    from .models.codegeex import CodeGeeXConfig
    for name in ("word_embeddings.weight", "position_embeddings.weight"):
        if name not in pieces:
            raise CheckpointError(f"{src}: CodeGeeX checkpoint without {name}")
        if len(pieces[name].shape) != 2:
            raise CheckpointError(f"{src}: CodeGeeX {name} has shape {list(pieces[name].shape)}, not a matrix")
    vocab, hidden = pieces["word_embeddings.weight"].shape
    positions = pieces["position_embeddings.weight"].shape[0]
    standard_layers = len({name.split(".")[1] for name in pieces if name.startswith("layers.")})
    inferred = dict(hidden_size=hidden, num_layers=standard_layers + 1, padded_vocab_size=vocab,
                    max_position_embeddings=positions)
    if config_path is None:
        thirteen_b = CodeGeeXConfig()
        if any(getattr(thirteen_b, key) != value for key, value in inferred.items()):
            raise ValueError(f"{src}: shapes ({', '.join(f'{k} {v}' for k, v in inferred.items())}) are not "
                             f"CodeGeeX-13B's; give --config FILE.json with {', '.join(_CODEGEEX_CONFIG_KEYS)}")
        return {**inferred, "num_attention_heads": thirteen_b.num_attention_heads}
    config_path = Path(config_path)
    try:
        given = read_json(config_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {config_path}: no such file") from None
    missing = [key for key in _CODEGEEX_CONFIG_KEYS if key not in given]
    if missing:
        raise ValueError(f"{config_path}: missing {', '.join(missing)}")
    for key in _CODEGEEX_CONFIG_KEYS:
        if not isinstance(given[key], int) or isinstance(given[key], bool) or given[key] < 1:
            raise ValueError(f"{config_path}: {key} must be a positive integer, got {given[key]!r}")
    for key, value in inferred.items():
        # THUDM's own --num-layers (39 for 13B) leaves out the top-query layer, which
        # ours counts (40); a JSON in either convention is fine, the checkpoint decides
        allowed = (value, value - 1) if key == "num_layers" else (value,)
        if given[key] not in allowed:
            raise ValueError(f"{config_path}: {key} is {given[key]} but the checkpoint {src} has {value}"
                             + (" (counting the top-query layer)" if key == "num_layers" else ""))
    return {**inferred, "num_attention_heads": given["num_attention_heads"],
            "layernorm_epsilon": given.get("layernorm_epsilon", given.get("layer_norm_eps", 1e-5))}
