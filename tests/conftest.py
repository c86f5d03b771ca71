"""Shared fixtures: small models saved in codegen's format, made at test time, torch files written by
hand, the 2-rank training launch, servers run in the test process, and the decode loop's fakes
(tokenizer, scripted model, tiny random models, one-prompt loops)."""
import contextlib
import dataclasses
import importlib.util
import json
import math
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def tool_module(name: str):
    """tools/NAME.py imported as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_codegen(directory: Path, seed: int = 0, n_positions: int = 256) -> Path:
    """A randomly initialised CodeGen with the real tokenizer, in our checkpoint format."""
    from codegen.checkpoints import init_random_codegen
    return init_random_codegen(directory, seed=seed, vocab_size=51200, n_positions=n_positions, n_embd=32,
                               n_layer=2, n_head=4, rotary_dim=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Read-only for tests: copy it before changing anything inside."""
    return make_tiny_codegen(tmp_path_factory.mktemp("tiny-codegen"))


@pytest.fixture(scope="session")
def golden_codegeex_dir(tmp_path_factory) -> Path:
    """THUDM's tiny reference CodeGeeX converted to our format. Read-only for tests."""
    from codegen.checkpoints import convert
    golden = FIXTURES / "codegeex"
    return convert(golden / "codegeex-tiny-a.pt", tmp_path_factory.mktemp("golden-codegeex") / "tiny",
                   config_path=golden / "codegeex-tiny-a.json")


@pytest.fixture(scope="session")
def golden_codegeex(golden_codegeex_dir):
    """The golden CodeGeeX on the plain Paddle path. Read-only."""
    from codegen.checkpoints import load_model
    return load_model(golden_codegeex_dir)


@pytest.fixture(scope="session")
def fused_golden_codegeex(golden_codegeex_dir):
    """The golden CodeGeeX as the loader serves it: fp32 on the fused CPU kernels. Read-only."""
    from codegen.inference import load_for_inference
    from codegen.inference.fast_codegeex import FastCodeGeeXForCausalLM
    model = load_for_inference(golden_codegeex_dir)
    assert isinstance(model, FastCodeGeeXForCausalLM)
    return model


needs_kernels = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                   reason="no C++ compiler: the kernels cannot be built here")


def codegeex_logits(model, ids, mask=None, cache=None):
    """A CodeGeeX's logits as numpy for token ids (and an attention mask, a cache) given as lists or arrays."""
    import paddle
    with paddle.no_grad():
        mask = None if mask is None else paddle.to_tensor(mask, dtype="int64")
        return model(paddle.to_tensor(ids, dtype="int64"), mask, cache).numpy()


def codegeex_greedy(model, prompt, new_tokens: int, cache=None) -> list[int]:
    """`new_tokens` greedy tokens after `prompt` ([[ids]]), decoded a token a step from `cache` (a new one
    by default); the last token is not fed."""
    cache = model.new_cache(batch_size=1) if cache is None else cache
    ids, out = prompt, []
    for _ in range(new_tokens):
        out.append(int(codegeex_logits(model, ids, cache=cache)[0, -1].argmax()))
        ids = [[out[-1]]]
    return out


def train_tiny_codegeex():
    """The golden CodeGeeX's config trained briefly on real code: its predictions are peaked like a trained
    model's, where the random golden model's near-ties let any rounding flip the top-1.

    Tokens are the CodeGeeX tokenizer's, renumbered into the tiny model's 1,024-row vocabulary
    (0: not seen in training). Returns the model and 8 held-out windows of 64 tokens (512 predictions).
    """
    import numpy as np
    import paddle
    from codegen.models.codegeex import CodeGeeXConfig, CodeGeeXForCausalLM
    from codegen.tokenizer import codegeex_tokenizer
    tokenizer = codegeex_tokenizer()
    # frozen copies of two of our model files: editing the code must not move the measured agreement
    train = tokenizer.encode((FIXTURES / "codegeex" / "agreement_train.py.txt").read_text())
    held_out = tokenizer.encode((FIXTURES / "codegeex" / "agreement_held_out.py.txt").read_text())
    vocab = {token: i + 1 for i, token in enumerate(dict.fromkeys(train))}
    assert len(vocab) < 1024
    paddle.seed(0)
    model = CodeGeeXForCausalLM(CodeGeeXConfig(hidden_size=64, num_layers=4, num_attention_heads=4,
                                               padded_vocab_size=1024, max_position_embeddings=64))
    windows = [[vocab[t] for t in train[i:i + 64]] for i in range(0, len(train) - 64, 64)]
    ids = paddle.to_tensor(windows, dtype="int64")
    optimizer = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    model.train()
    for _ in range(60):
        step_logits = model(ids[:, :-1])
        loss = paddle.nn.functional.cross_entropy(step_logits.reshape([-1, 1024]), ids[:, 1:].reshape([-1]))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    return model, np.array([[vocab.get(t, 0) for t in held_out[i * 64:(i + 1) * 64]] for i in range(8)])


@pytest.fixture(scope="session")
def trained_codegeex():
    """(model, held-out windows) of `train_tiny_codegeex`. Read-only: convert a `copy_model` of it."""
    return train_tiny_codegeex()


def copy_model(model):
    """A fresh model of `model`'s class and config with its weights (converting one to int8 etc. is in place)."""
    clone = type(model)(model.config)
    clone.set_state_dict({name: tensor.clone() for name, tensor in model.state_dict().items()})
    clone.eval()
    return clone


def random_codegen(seed: int = 0, **config):
    """A CodeGenForCausalLM of `config` (CodeGenConfig fields), initialised from `seed`, in eval mode."""
    import paddle
    from codegen.models.codegen import CodeGenConfig, CodeGenForCausalLM
    paddle.seed(seed)
    return CodeGenForCausalLM(CodeGenConfig(**config)).eval()


def two_rank_launch(script: Path, model_dir: Path, directory: Path, *flags: str) -> list[str]:
    """`paddle.distributed.launch` of `script` (run_clm.py or a wrapper of its main) on 2 CPU ranks.

    Trains on the first 40 example files in 32-token blocks; logs go to directory/logs,
    the run's output to directory/out. `flags` add to or override the run_clm flags.
    """
    train = directory / "train.jsonl"
    lines = (REPO / "examples" / "data" / "train.json").read_text().splitlines(keepends=True)[:40]
    train.write_text("".join(lines))
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
            "--log_dir", str(directory / "logs"), str(script),
            "--model_name_or_path", str(model_dir), "--train_file", str(train),
            "--data_cache_dir", str(directory / "cache"), "--output_dir", str(directory / "out"),
            "--block_size", "32", "--per_device_train_batch_size", "2", "--learning_rate", "5e-3", *flags]


# ---- torch.save files written by hand: the tests never import torch --------------

class Global(NamedTuple):
    """A global the pickle names (GLOBAL): what `module.name` would be if it were imported."""
    module: str
    name: str


class Call(NamedTuple):
    """`function(*args)` when unpickled (REDUCE)."""
    function: object
    args: tuple


class Build(NamedTuple):
    """`target`, then its state set to `state` (BUILD)."""
    target: object
    state: object


class PersistentId(NamedTuple):
    """A reference the unpickler resolves itself (BINPERSID): torch's storages."""
    pid: tuple


class Raw(NamedTuple):
    """Opcodes inserted as they are, e.g. `pickle.dumps(x, protocol=2)[2:-1]`."""
    opcodes: bytes


def pickle_opcodes(obj) -> bytes:
    """A protocol-2 pickle (torch.save's protocol) of dicts, lists, tuples, plain values and the nodes above."""
    out = bytearray(b"\x80\x02")

    def emit(o):
        if isinstance(o, Global):
            out.extend(f"c{o.module}\n{o.name}\n".encode())
        elif isinstance(o, Call):
            emit(o.function), emit(tuple(o.args)), out.extend(b"R")
        elif isinstance(o, Build):
            emit(o.target), emit(o.state), out.extend(b"b")
        elif isinstance(o, PersistentId):
            emit(o.pid), out.extend(b"Q")
        elif isinstance(o, Raw):
            out.extend(o.opcodes)
        elif isinstance(o, dict):
            out.extend(b"}")
            for key, value in o.items():
                emit(key), emit(value), out.extend(b"s")
        elif isinstance(o, (tuple, list)):
            out.extend(b"(")
            for item in o:
                emit(item)
            out.extend(b"t" if isinstance(o, tuple) else b"l")
        else:  # None, bools, numbers, strings
            out.extend(pickle.dumps(o, protocol=2)[2:-1])

    emit(obj)
    return bytes(out + b".")


def torch_tensor(key: str, shape, stride=None, offset=0, storage="FloatStorage", numel=None) -> Call:
    """A tensor as torch.save pickles it: `_rebuild_tensor_v2` over storage `key` (contiguous by default)."""
    shape = tuple(shape)
    if stride is None:
        stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
    numel = math.prod(shape) + offset if numel is None else numel
    ref = PersistentId(("storage", Global("torch", storage), key, "cpu", numel))
    return Call(Global("torch._utils", "_rebuild_tensor_v2"),
                (ref, offset, shape, tuple(stride), False, Call(Global("collections", "OrderedDict"), ())))


def write_torch_file(path: Path, graph, storages: dict | None = None, compress: bool = False) -> Path:
    """A torch.save-style zip: `graph` pickled as data.pkl, `storages` (key -> bytes) beside it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_opcodes(graph))
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data,
                             compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
    return path


# ---- peak memory of a step, in its own interpreter ------------------------------------

# Each step imports what it needs first, so the figures are the step's own growth.
# A thread samples anonymous RSS: ru_maxrss would also count the pages of the
# memory-mapped safetensors file that loading reads, which are page cache.
MEASURE_RSS = """
import json, resource, sys, threading
def anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
peak = [0]
def sample(stop=threading.Event()):
    while not stop.wait(0.005):
        peak[0] = max(peak[0], anon())
{imports}
before = anon()
threading.Thread(target=sample, daemon=True).start()
{step}
peak[0] = max(peak[0], anon())
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"before": before, "peak": peak[0], "maxrss": maxrss, **figures}}))
"""


def run_measured(script: str, *args) -> dict:
    """Run `script` (a MEASURE_RSS) in a fresh interpreter; the figures it prints."""
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- servers in this process ------------------------------------------------------------
# A real uvicorn on a free loopback port, started in a thread, so tests can hold the model's
# worker inside a forward pass and make queueing, batching and cancellation deterministic.

SERVER_CONTEXT = 2048     # Copilot asks for 500 tokens, more than a 256-position model holds
READY_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def server_model_dir(tmp_path_factory) -> Path:
    """The served tiny CodeGen (one for the session: its directory name is the model id). Read-only."""
    return make_tiny_codegen(tmp_path_factory.mktemp("server-model"), n_positions=SERVER_CONTEXT)


@pytest.fixture(scope="session")
def server_tokenizer(server_model_dir):
    from codegen.tokenizer import load_tokenizer
    return load_tokenizer(server_model_dir)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_until(condition, what: str, timeout: float = READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def health(base: str) -> int | None:
    import httpx
    try:
        return httpx.get(base + "/health", timeout=5).status_code
    except httpx.TransportError:
        return None


@contextlib.contextmanager
def running_server(settings, load=None, wait_ready=True, on_load_failure=None):
    """A uvicorn server in a thread serving `create_app(settings, ...)`; yields (base url, app)."""
    import uvicorn
    from codegen.server.app import create_app
    sock = free_socket()
    app = create_app(settings, load=load, on_load_failure=on_load_failure)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: health(base) == 200 if wait_ready else health(base) is not None, "the server")
        yield base, app
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def gated_server(settings):
    """`running_server` whose model forward goes through a `Gate`; yields (base url, engine, gate)."""
    gate = Gate()
    with running_server(settings, load=gate.loader(settings)) as (base, app):
        try:
            yield base, app.state.engine, gate
        finally:
            gate.release()      # a worker held at the gate would keep the server from stopping


def wait_idle(engine):
    """Earlier tests' requests may still be decoding; counting forward calls needs them gone."""
    wait_until(lambda: not engine.running and not engine._waiting, "the engine to go idle")


def sse_payloads(response) -> list:
    """The data of each event of an httpx response, checking the framing: one `data: ` line, then a blank line."""
    raw = response.read().decode("utf-8")
    assert raw.endswith("\n\n")
    payloads = []
    for block in raw[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, repr(block)
        data = block[len("data: "):]
        assert not data.startswith("data:"), repr(block)
        payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def parse_settings(argv, env):
    """Server settings from command-line flags and CODEGEN_* variables (the test process's own set aside)."""
    import argparse
    import os
    from codegen.server.settings import add_arguments, settings_from_args
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    old = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CODEGEN_") and k != "CODEGEN_HOME"}
    os.environ.update(env)
    try:
        return settings_from_args(parser.parse_args(argv))
    finally:
        for k in env:
            del os.environ[k]
        os.environ.update(old)


class Gate:
    """Wraps the model's forward: records each call's batch size, can hold the worker inside one or fail."""

    def __init__(self):
        self.calls: list[int] = []
        self.shapes: list[tuple[int, int]] = []     # each call's (rows, positions)
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.fail = threading.Event()
        # the worker closes the gate on itself at this call, so a test can hold a generation
        # mid-stream however fast decoding is
        self.close_at_call: int | None = None
        # set by the worker as it stops at the gate it closed: its batch cannot change until released
        self.held = threading.Event()
        self._lock = threading.Lock()

    def hold_the_first_decode_step(self):
        """Close the gate on the worker at the next job's first decode step: its prefill runs (the
        first streamed token), the step after holds."""
        with self._lock:
            self.held.clear()
            self.close_at_call = len(self.calls) + 2

    def wait_held(self):
        """Until the worker stops at the gate it closed: what a stream has sent so far does not say
        where the worker is, since it goes on between delivering a token and the next step."""
        assert self.held.wait(READY_TIMEOUT), "the worker never reached the held decode step"

    def release(self):
        """Open the gate for good, also if the worker has not reached `close_at_call` yet (on a busy
        machine it may get there after the test has moved on: it must not close the gate then)."""
        with self._lock:
            self.close_at_call = None
            self.open.set()

    def loader(self, settings):
        def load():
            from codegen.server.app import load_predictor
            predictor = load_predictor(settings)
            forward = predictor.model.forward

            def gated(input_ids, *args, **kwargs):
                with self._lock:
                    self.calls.append(input_ids.shape[0])
                    self.shapes.append(tuple(input_ids.shape))
                    if self.close_at_call is not None and len(self.calls) >= self.close_at_call:
                        self.close_at_call = None
                        self.open.clear()
                        self.held.set()
                self.entered.set()
                self.open.wait()
                if self.fail.is_set():
                    raise RuntimeError("injected failure")
                return forward(input_ids, *args, **kwargs)

            predictor.model.forward = gated
            return predictor
        return load

# -- decoding: fakes, tiny models and loops the generation, lookup and kernel tests share -----------

VOCAB = 1000


class ByteTokenizer:
    """Ids below `byte_ids` are single bytes (so characters split across tokens), the rest `<id>`."""

    def __init__(self, vocab=VOCAB, eos_token_id=None, pieces=None, byte_ids=256):
        self.vocab = vocab
        self.byte_ids = byte_ids
        self.eos_token_id = eos_token_id
        self.pad_token_id = None
        self.pieces = pieces or {}

    def __len__(self):
        return self.vocab

    def piece(self, i):
        i = int(i)
        if i in self.pieces:
            return self.pieces[i]
        return bytes([i]) if i < self.byte_ids else f"<{i}>".encode()

    def decode_bytes(self, ids):
        return b"".join(self.piece(i) for i in ids if i != self.eos_token_id)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", "replace")


def tiny_model(seed=0, vocab=VOCAB, n_positions=128):
    return random_codegen(seed, vocab_size=vocab, n_positions=n_positions, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)


class Recording:
    """Passes calls through to `model`, remembering each call's input shape."""

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.shapes = []

    def new_cache(self, *args, **kwargs):
        return self.model.new_cache(*args, **kwargs)

    def __call__(self, input_ids, attention_mask=None, cache=None, last_only=False):
        self.shapes.append(tuple(input_ids.shape))
        return self.model(input_ids, attention_mask=attention_mask, cache=cache, last_only=last_only)


class ScriptedModel:
    """Always predicts `successor[last token]` (token 0 when unlisted), whatever else it sees."""

    def __init__(self, successor, vocab=64, n_positions=64):
        self.successor = successor
        self.config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=n_positions)

    def new_cache(self, batch_size, max_length=None, dtype=None):
        from codegen.models.cache import KVCache
        return KVCache(1, batch_size, 1, max_length or self.config.max_position_embeddings, 1)

    def __call__(self, input_ids, attention_mask=None, cache=None, last_only=False):
        import paddle
        ids = input_ids.numpy()[:, -1:] if last_only else input_ids.numpy()
        logits = np.full(ids.shape + (self.config.vocab_size,), -10.0, dtype=np.float32)
        for index in np.ndindex(*ids.shape):
            logits[index + (self.successor.get(int(ids[index]), 0),)] = 10.0
        cache.advance(input_ids.shape[1])
        return paddle.to_tensor(logits)


def full_logits(model, ids):
    """Logits of an uncached forward over `ids` [seq] -> float64 [seq, vocab]."""
    import paddle
    with paddle.no_grad():
        return model(paddle.to_tensor(np.array([ids], dtype=np.int64))).numpy()[0].astype(np.float64)


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def full_logprobs(model, ids):
    return log_softmax(full_logits(model, ids))


def collect(events):
    """Per row: (text, token_ids, logprobs, finish reasons seen, events after finishing)."""
    rows = {}
    for e in events:
        row = rows.setdefault(e.index, dict(text="", token_ids=[], logprobs=[], finishes=[], after_finish=0))
        if row["finishes"]:
            row["after_finish"] += 1
        row["text"] += e.text
        row["token_ids"] += e.token_ids
        row["logprobs"] += e.logprobs
        if e.finish_reason is not None:
            row["finishes"].append(e.finish_reason)
    return rows


# token prompts of the decode-loop tests: different lengths, so batches pad
TOKEN_PROMPTS = [[5, 17, 300, 42, 9, 700, 13, 2, 88], [400, 12, 7, 999], [3, 3, 600, 45, 46, 47]]


SMALL = dict(vocab_size=512, n_positions=256, n_embd=128, n_layer=2, n_head=8, rotary_dim=8)


def small_model(seed=0, **overrides):
    return random_codegen(seed, **{**SMALL, **overrides})


_RNG = np.random.default_rng(11)
_BLOCK = _RNG.integers(0, VOCAB, 10).tolist()
# prompt lookup's: random text; the same block twice (as code being rewritten); a run of one token
LOOKUP_PROMPTS = [_RNG.integers(0, VOCAB, 9).tolist(), _BLOCK + _RNG.integers(0, VOCAB, 5).tolist() + _BLOCK[:3],
                  [7, 7, 7, 7, 7, 7], _RNG.integers(0, VOCAB, 40).tolist()]


# a model that writes a, b, c, d, a, ... and a prompt holding that cycle: every draft is right
CYCLE = {ord("a"): ord("b"), ord("b"): ord("c"), ord("c"): ord("d"), ord("d"): ord("a")}
CYCLE_PROMPT = list(b"xabcdabc")


def run(model, prompt, config, tokenizer=None, **batch_options):
    """(sequence, events, batch) of one prompt decoded in its own Batch."""
    from codegen.generation import Batch
    batch = Batch(model, tokenizer or ByteTokenizer(), **batch_options)
    (row,) = batch.add(prompt, config)
    events = []
    while batch:
        events += batch.step()
    return row.sequence(), events, batch


def plain(model, prompt, config, tokenizer=None):
    """The one sequence plain decoding (no prompt lookup) gives."""
    from codegen.generation import generate
    config = dataclasses.replace(config, prompt_lookup_num_tokens=0)
    return generate(model, tokenizer or ByteTokenizer(), [prompt], config)[0][0]


# -- the PaddleNLP README's clients --------------------------------------------------------------

# What openai 0.28.1 sends for the PaddleNLP README's client: `openai.api_base = 'http://127.0.0.1:8978'`
# (no /v1) then `openai.Completion.create(engine='codegen', prompt='def hello', max_tokens=16,
# temperature=0.1)`: read from its api_requestor (`requests` adds the Accept* and Connection headers)
OPENAI_0X_PATH = "/engines/codegen/completions"
OPENAI_0X_HEADERS = {"Content-Type": "application/json", "User-Agent": "OpenAI/v1 PythonBindings/0.28.1",
                     "X-OpenAI-Client-User-Agent": json.dumps({
                         "bindings_version": "0.28.1", "httplib": "requests", "lang": "python",
                         "lang_version": "3.11.7", "platform": "Linux-x86_64", "publisher": "openai",
                         "uname": "Linux"}),
                     "Authorization": "Bearer dummy", "Accept": "*/*", "Accept-Encoding": "gzip, deflate",
                     "Connection": "keep-alive"}
OPENAI_0X_BODY = json.dumps({"prompt": "def hello", "max_tokens": 16, "temperature": 0.1}).encode()


def assert_paddlenlp_readme_response(response):
    """The fields the README's printed result shows, in an httpx response."""
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"].startswith("cmpl-") and result["object"] == "text_completion"
    [choice] = result["choices"]
    assert isinstance(choice["text"], str) and choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    assert 1 <= result["usage"]["completion_tokens"] <= 16
    return result
