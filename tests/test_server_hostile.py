"""The server against hostile requests (issue 14): each gets a 4xx naming the problem, never a 500.

One test per row of the issue's table that concerns the server, then a property-based fuzz of the
Completions body. Servers are real uvicorns on loopback ports, as in test_server.
"""
import http.client
import json
import math
import socket
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from conftest import make_tiny_codegen, parse_settings, running_server, sse_payloads
from hypothesis import event, given, settings, strategies as st

from codegen.checkpoints import init_random_codegen
from codegen.server.app import DROPPED_HEADER, MAX_TOKENS_HEADER, load_predictor
from codegen.server.guards import is_loopback
from codegen.server.responses import LOGPROB_FLOOR, JSONResponse, json_text
from codegen.server.settings import Settings

CONTEXT = 256
FUZZ_CONTEXT = 32
MiB = 1024 * 1024


def strict_json(text: str):
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are not numbers."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def events(response: httpx.Response) -> list:
    """The JSON payloads of a server-sent event stream, read strictly, checking the framing."""
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]", payloads[-1]
    return [strict_json(block.removeprefix("data: ")) for block in response.text.split("\n\n")[:-2]]


def post(base: str, body, content_type="application/json", **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(base + "/v1/completions", content=content, headers={"content-type": content_type, **kwargs},
                      timeout=60)


def assert_error(response: httpx.Response, status: int, param=None, *words):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_codegen(tmp_path_factory.mktemp("hostile"), n_positions=CONTEXT)


@pytest.fixture(scope="module")
def server(model_dir):
    with running_server(Settings(model=str(model_dir))) as (base, app):
        yield base


# -- logprobs of a healed prompt: -inf -------------------------------------------------------------

@pytest.fixture(scope="module")
def healing_server():
    """The shipped model: its "bpe" tokenizer heals a prompt ending in whitespace, so the first token's
    alternatives that do not extend the healed text have log-probability -inf."""
    with running_server(Settings(max_batch_size=4)) as (base, _):
        yield base


def test_minus_infinity_logprobs_are_sent_as_the_floor_number(healing_server):
    body = {"prompt": "class A:\n\t", "logprobs": 5, "max_tokens": 2, "temperature": 0}
    response = post(healing_server, body)
    assert response.status_code == 200, response.text
    first = strict_json(response.text)["choices"][0]["logprobs"]["top_logprobs"][0]
    assert LOGPROB_FLOOR in first.values()
    assert all(isinstance(v, float) and math.isfinite(v) for v in first.values())
    streamed = events(post(healing_server, {**body, "stream": True}))
    assert LOGPROB_FLOOR in streamed[0]["choices"][0]["logprobs"]["top_logprobs"][0].values()
    client = openai.OpenAI(base_url=healing_server + "/v1", api_key="x", max_retries=0)
    result = client.completions.create(model="m", **body)
    assert min(result.choices[0].logprobs.top_logprobs[0].values()) == LOGPROB_FLOOR


def test_no_response_ever_holds_a_non_finite_number():
    body = {"logprobs": [0.5, float("-inf"), float("nan")], "nested": {"scores": (float("inf"),)}, "text": "NaN"}
    rendered = JSONResponse(body).body.decode()
    assert strict_json(rendered) == {"logprobs": [0.5, LOGPROB_FLOOR, None], "nested": {"scores": [None]},
                                     "text": "NaN"}
    assert strict_json(json_text([1.0, "x"])) == [1.0, "x"]


# -- text that is not Unicode --------------------------------------------------------------------

@pytest.mark.parametrize("field, value, param, named", [
    ("prompt", "def f():\ud800", "prompt", "prompt"),
    ("prompt", ["ok", "\udfff"], "prompt", "prompt[1]"),
    ("stop", ["\n", "x\ud800"], "stop", "stop[1]"),
    ("suffix", "\ud800", "suffix", "suffix"),
])
def test_lone_surrogates_get_400_naming_the_field(server, field, value, param, named):
    body = {"prompt": "x", "max_tokens": 1, field: value}
    assert_error(post(server, json.dumps(body).encode()), 400, param, named, "U+D")   # ensure_ascii: \ud800


# -- nesting and size --------------------------------------------------------------------------------

def test_deep_nesting_gets_400_and_the_connection_stays_usable(server):
    connection = http.client.HTTPConnection(urlsplit(server).hostname, urlsplit(server).port, timeout=60)
    try:
        deep = b'{"prompt": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        connection.request("POST", "/v1/completions", body=deep, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        error = strict_json(response.read())["error"]
        assert response.status == 400 and "64 deep" in error["message"]
        sock = connection.sock
        assert sock is not None, "the server closed the connection"
        connection.request("POST", "/v1/completions", body=json.dumps({"prompt": "x", "max_tokens": 1}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and strict_json(response.read())["choices"]
        assert connection.sock is sock
    finally:
        connection.close()


def raw_exchange(base: str, data_parts) -> tuple[int, dict]:
    """Send raw bytes on a fresh connection, then read one response: (status, JSON body)."""
    with socket.create_connection((urlsplit(base).hostname, urlsplit(base).port), timeout=60) as sock:
        for part in data_parts:
            sock.sendall(part)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, strict_json(response.read())


def test_a_60_mb_body_gets_413_from_its_content_length(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000000\r\n\r\n")
    status, body = raw_exchange(server, [head, b'{"prompt": "'])
    assert status == 413 and "--max-request-bytes" in body["error"]["message"]


def test_a_chunked_body_is_counted_as_it_arrives(model_dir):
    limit = 256 * 1024
    with running_server(Settings(model=str(model_dir), max_request_bytes=limit)) as (base, _):
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (64 * 1024)
        chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 1)
        status, body = raw_exchange(base, [head, *chunks])
        assert status == 413 and str(limit) in body["error"]["message"]
        under = b'{"prompt": "x", "max_tokens": 1}'
        status, body = raw_exchange(base, [head, b"%x\r\n%s\r\n0\r\n\r\n" % (len(under), under)])
        assert status == 200 and body["choices"]


def test_max_request_bytes_has_a_flag_and_an_environment_variable():
    assert Settings().max_request_bytes == 4 * MiB
    assert parse_settings([], {"CODEGEN_MAX_REQUEST_BYTES": "1000"}).max_request_bytes == 1000
    assert parse_settings(["--max-request-bytes", "7"], {"CODEGEN_MAX_REQUEST_BYTES": "1000"}).max_request_bytes == 7
    with pytest.raises(ValueError, match="max_request_bytes"):
        Settings(max_request_bytes=0)


# -- a prompt far longer than the context ----------------------------------------------------------

class EncodeSpy:
    """A loader whose predictor records the length of every text its tokenizer encodes."""

    def __init__(self, settings):
        self.settings = settings
        self.lengths = []
        self.predictor = None

    def __call__(self):
        predictor = load_predictor(self.settings)
        encode = predictor.tokenizer.encode

        def spied(text):
            self.lengths.append(len(text))
            return encode(text)

        predictor.tokenizer.encode = spied
        self.predictor = predictor
        return predictor


def test_a_5_mb_prompt_is_cut_to_its_tail_before_tokenizing(model_dir):
    spy = EncodeSpy(Settings(model=str(model_dir), max_request_bytes=8 * MiB))
    line = "value = compute(value)\n"
    with running_server(spy.settings, load=spy) as (base, _):
        tokenizer = spy.predictor.tokenizer
        per_line = len(tokenizer.encode(line))
        assert tokenizer.encode(line * 3) == tokenizer.encode(line) * 3    # so the whole prompt's count is known
        repeats = 5 * MiB // len(line)
        spy.lengths.clear()
        response = post(base, {"prompt": line * repeats, "max_tokens": 0, "echo": True})
        assert response.status_code == 200, response.text
        bound = spy.predictor.max_prompt_chars
        assert spy.lengths and max(spy.lengths) <= bound < len(line) * repeats / 100
        kept = CONTEXT
        assert response.headers[MAX_TOKENS_HEADER] == "0"
        # an estimate from the kept text's characters per token: exact here, the text being regular
        assert int(response.headers[DROPPED_HEADER]) == pytest.approx(per_line * repeats - kept, rel=1e-3)
        # the model sees the whole prompt's last tokens
        tail_lines = kept // per_line + 2
        expected = tokenizer.decode(tokenizer.encode(line * tail_lines)[-kept:])
        assert response.json()["choices"][0]["text"] == expected


def test_prompts_under_the_bound_are_tokenized_whole_as_before(model_dir):
    spy = EncodeSpy(Settings(model=str(model_dir)))
    spy()
    predictor, bound = spy.predictor, spy.predictor.max_prompt_chars
    text = ("for i in range(10):\n    print(i)\n" * (bound // 30))[:bound]
    spy.lengths.clear()
    prepared = predictor.prepare(text, 16)
    assert spy.lengths == [bound]
    whole = predictor.tokenizer.encode(text)
    assert prepared.ids == whole[-(CONTEXT - 16):] and prepared.dropped == len(whole) - (CONTEXT - 16)
    spy.lengths.clear()
    predictor.prepare("x" + text, 16)
    assert spy.lengths == [bound]


# -- token ids outside the model's vocabulary ------------------------------------------------------

@pytest.fixture(scope="module")
def small_vocab_server(tmp_path_factory):
    """A model whose embedding (50,000 rows) is smaller than its tokenizer (50,295 tokens)."""
    directory = init_random_codegen(tmp_path_factory.mktemp("small-vocab") / "model", vocab_size=50_000,
                                    n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=4, rotary_dim=4)
    with running_server(Settings(model=str(directory))) as (base, app):
        yield base, app.state.engine


@pytest.mark.parametrize("prompt, bad_id, named", [
    ([1, 2, 50_100], 50_100, "prompt"),
    ([[1], [3, 50_000]], 50_000, "prompt[1]"),
    ("x = 1\n<|endoftext|>", 50_256, "prompt"),
    (["ok", "<|endoftext|>"], 50_256, "prompt[1]"),
])
def test_out_of_vocabulary_ids_get_400_naming_the_id(small_vocab_server, prompt, bad_id, named):
    base, _ = small_vocab_server
    assert_error(post(base, {"prompt": prompt, "max_tokens": 2}), 400, "prompt", named, str(bad_id))
    assert post(base, {"prompt": "x = 1\n", "max_tokens": 2}).status_code == 200


def test_the_predictor_checks_ids_for_every_caller(small_vocab_server):
    _, engine = small_vocab_server
    with pytest.raises(ValueError, match="50256"):
        engine.predictor.encode("a<|endoftext|>", 4)
    with pytest.raises(ValueError, match="50100"):
        engine.predictor.encode([1, 50_100], 4)


# -- cross-site requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", None,
])
def test_posts_a_web_page_can_send_without_a_preflight_get_415(server, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    response = httpx.post(server + "/v1/engines/codegen/completions", headers=headers, timeout=60,
                          content=json.dumps({"prompt": "x", "max_tokens": 1}).encode())
    assert_error(response, 415, None, "application/json")


def test_json_with_a_charset_is_json(server):
    assert post(server, {"prompt": "x", "max_tokens": 1}, "Application/JSON; charset=utf-8").status_code == 200


def test_foreign_host_is_refused_when_listening_on_loopback(server):
    body = {"prompt": "x", "max_tokens": 1}
    for host in ("evil.example", "evil.example:8978", "127.0.0.1.evil.example", "10.0.0.1"):
        assert_error(post(server, body, host=host), 403, None, "DNS rebinding")
        assert httpx.get(server + "/v1/models", headers={"host": host}).status_code == 403
    for host in ("localhost", "LOCALHOST:8978", "127.0.0.1", "127.1.2.3:80", "[::1]:8978"):
        assert post(server, body, host=host).status_code == 200, host


def test_listening_on_all_interfaces_skips_the_host_check(model_dir):
    # bound to loopback for the test, configured as if listening everywhere
    with running_server(Settings(model=str(model_dir), host="0.0.0.0")) as (base, _):
        assert post(base, {"prompt": "x", "max_tokens": 1}, host="codegen.lan:8978").status_code == 200
        assert post(base, {"prompt": "x"}, "text/plain").status_code == 415


def test_loopback_names():
    assert all(map(is_loopback, ["localhost", "127.0.0.1", "127.255.0.9", "::1", "[::1]", "LocalHost"]))
    assert not any(map(is_loopback, ["evil.example", "localhost.evil.example", "0.0.0.0", "10.1.1.1", "[::2]",
                                     "", "[", "::ffff:8.8.8.8"]))


# -- the schema and a property-based fuzz of the body ---------------------------------------------

def test_openapi_schema_describes_the_completions_body(server):
    schema = httpx.get(server + "/openapi.json").json()
    for path in ("/v1/completions", "/v1/engines/{engine_name}/completions"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"prompt", "max_tokens", "logprobs", "stop", "suffix"} <= set(body["properties"])


FIELDS = ("prompt", "suffix", "max_tokens", "temperature", "top_p", "top_k", "n", "best_of", "stop", "stream",
          "stream_options", "echo", "logprobs", "presence_penalty", "frequency_penalty", "seed")

texts = st.text(max_size=40) | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                                       max_size=3) | st.sampled_from(["", "\n", "\t", "class A:\n\t", "<|endoftext|>"])
token_ids = st.integers(-3, 50_300) | st.sampled_from([2 ** 63, -(2 ** 63), 51_199])
any_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | texts,
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                        max_leaves=8)
numbers = st.floats(-3, 3) | st.sampled_from([0, 1e-300, 5e-324, -0.0, 2, 1e308])
plausible = {
    "prompt": texts | st.lists(texts, min_size=1, max_size=3) | st.lists(token_ids, max_size=6)
    | st.lists(st.lists(token_ids, max_size=4), max_size=3),
    "suffix": texts,
    "max_tokens": st.integers(-1, 4) | st.sampled_from([FUZZ_CONTEXT, FUZZ_CONTEXT + 1, 10 ** 30]),
    "temperature": numbers, "top_p": numbers, "presence_penalty": numbers, "frequency_penalty": numbers,
    "top_k": st.integers(-1, 60_000) | st.just(10 ** 30),
    "n": st.integers(-1, 10), "best_of": st.integers(-1, 10),
    "stop": texts | st.lists(texts, max_size=18),
    "stream": st.booleans(), "echo": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | any_json}),
    "logprobs": st.integers(-1, 7),
    "seed": st.integers(-1, 2 ** 70),
}
# mostly plausible values, so that many requests reach generation; then anything JSON can hold; then junk
bodies = st.fixed_dictionaries({}, optional=plausible) | st.fixed_dictionaries(
    {}, optional={field: plausible[field] | any_json for field in FIELDS})
raw_bodies = st.one_of(bodies.map(lambda body: json.dumps(body).encode()), st.binary(max_size=64),
                       any_json.map(lambda value: json.dumps(value).encode()))


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    # a short context and default max_tokens bound the work of valid requests
    model_dir = make_tiny_codegen(tmp_path_factory.mktemp("fuzz"), n_positions=FUZZ_CONTEXT)
    with running_server(Settings(model=str(model_dir), max_batch_size=8, max_tokens=2)) as (base, _), \
            httpx.Client(base_url=base, timeout=120) as http:
        yield http


@settings(max_examples=200, deadline=None, database=None)
@given(body=raw_bodies)
def test_fuzzed_bodies_never_get_a_5xx(fuzz_client, body):
    response = fuzz_client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    event(f"status {response.status_code}")   # shown by --hypothesis-show-statistics
    if response.headers["content-type"].startswith("text/event-stream"):
        assert all("error" not in payload for payload in events(response))
    else:
        strict_json(response.text)
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
