"""The Completions server against real clients: the openai package, raw HTTP as Copilot sends it.

Every server here is a real uvicorn on a free loopback port. Most run in this
process (started in a thread) so tests can hold the model's worker inside a
forward pass and make queueing, batching and cancellation deterministic.
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
from conftest import (OPENAI_0X_BODY, OPENAI_0X_HEADERS, OPENAI_0X_PATH, READY_TIMEOUT, REPO, SERVER_CONTEXT,
                      assert_paddlenlp_readme_response, free_socket, gated_server, health, parse_settings,
                      running_server, sse_payloads, wait_idle, wait_until)

from codegen.server.app import DROPPED_HEADER, MAX_TOKENS_HEADER, load_predictor
from codegen.tokenizer import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FIM_TOKENS
from codegen.server.settings import Settings


COPILOT_BODY = {"prompt": "# hello world\ndef hello():\n", "suffix": "", "max_tokens": 500, "temperature": 0,
                "top_p": 1, "n": 1, "stop": ["\n"], "nwo": "o/r", "stream": True,
                "extra": {"language": "python", "next_indent": 0, "trim_by_indentation": True,
                          "prompt_tokens": 18, "suffix_tokens": 0}}


# -- running servers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(server_model_dir):
    with running_server(Settings(model=str(server_model_dir), max_batch_size=8, max_queue=16)) as (base, _):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(server_model_dir, server_tokenizer):
    """log-softmax over the tokenizer's ids from a plain forward pass of the model, [len(ids), vocab]."""
    import paddle
    from codegen.checkpoints import load_model
    model = load_model(server_model_dir)

    def logprobs(ids: list[int]) -> np.ndarray:
        logits = model(paddle.to_tensor([ids], dtype="int64"))[0].numpy().astype(np.float64)
        logits = logits[:, :len(server_tokenizer)]
        logits -= logits.max(axis=-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return logprobs


# -- the openai package ---------------------------------------------------------------------

def test_openai_completion_has_the_openai_shape_and_real_usage(client, server_tokenizer):
    prompt = "def fibonacci(n):\n"
    before = int(time.time())
    result = client.completions.create(model="whatever-the-editor-says", prompt=prompt, max_tokens=7,
                                       temperature=0)
    assert result.id.startswith("cmpl-") and result.object == "text_completion"
    assert before <= result.created <= int(time.time())
    assert len(result.choices) == 1 and result.choices[0].index == 0
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens == len(server_tokenizer.encode(prompt))
    assert 1 <= result.usage.completion_tokens <= 7
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_streamed_text_equals_the_non_streamed_text_at_temperature_0(client):
    prompt = "import numpy as np\n"
    whole = client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=24, temperature=0, stream=True))
    assert len(chunks) > 2, "expected a stream of token deltas, not one blob"
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_n_3_streamed_matches_non_streamed_with_a_seed(client):
    args = dict(model="m", prompt="class Stack:\n", max_tokens=10, n=3, temperature=0.9, seed=7)
    whole = client.completions.create(**args)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts, finishes = ["", "", ""], [[], [], []]
    for chunk in client.completions.create(stream=True, **args):
        (choice,) = chunk.choices
        assert not finishes[choice.index], "a chunk after its index finished"
        texts[choice.index] += choice.text
        if choice.finish_reason is not None:
            finishes[choice.index].append(choice.finish_reason)
    assert texts == [c.text for c in whole.choices]
    assert finishes == [[c.finish_reason] for c in whole.choices]
    assert len(set(texts)) > 1, "three samples should differ"


def test_stop_string_spanning_tokens_never_reaches_the_stream(client):
    prompt = "def add(a, b):\n"
    free = client.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=0, logprobs=0)
    tokens, text = free.choices[0].logprobs.tokens, free.choices[0].text
    k = next(i for i in range(len(tokens) - 1)
             if tokens[i] and tokens[i + 1] and "\ufffd" not in tokens[i] + tokens[i + 1])
    stop = tokens[k][-1] + tokens[k + 1][:2]          # the end of one token, the start of the next
    expected = text[:text.index(stop)]
    for stream in (False, True):
        result = client.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=0,
                                           stop=[stop, "never appears \x00"], stream=stream)
        chunks = list(result) if stream else [result]
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_are_the_models_log_probabilities(client, reference, server_tokenizer):
    prompt = "for i in range(10):\n"
    result = client.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    choice = result.choices[0]
    lp = choice.logprobs
    ids = server_tokenizer.encode(prompt)
    for i in range(len(lp.tokens)):        # greedy decoding redone with a plain forward pass
        step = reference(ids)[-1]
        ids.append(int(np.argmax(step)))
        assert lp.tokens[i] == server_tokenizer.decode([ids[-1]])
        assert lp.token_logprobs[i] == pytest.approx(step[ids[-1]], abs=1e-4)
        assert len(lp.top_logprobs[i]) == 3
        assert max(lp.top_logprobs[i].values()) == pytest.approx(lp.token_logprobs[i], abs=1e-6)
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]


def test_echo_with_logprobs_scores_the_prompt(client, reference, server_tokenizer):
    prompt = "x = [1, 2, 3]\nprint(sum(x))\n"
    result = client.completions.create(model="m", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = result.choices[0]
    assert choice.text == prompt and choice.finish_reason == "length"
    ids = server_tokenizer.encode(prompt)
    assert "".join(choice.logprobs.tokens) == prompt
    assert choice.logprobs.token_logprobs[0] is None
    scores = reference(ids)
    expected = [scores[i - 1, ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(choice.logprobs.token_logprobs[1:], expected, atol=1e-4)
    assert result.usage.prompt_tokens == len(ids) and result.usage.completion_tokens == 0


def test_echo_streamed_starts_each_choice_with_the_prompt(client):
    prompt = "while True:\n"
    chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=3, echo=True, n=2,
                                            temperature=0.5, seed=3, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].text == prompt
        assert "".join(c.text for c in mine).startswith(prompt) and len(mine) > 1


def test_stream_options_include_usage_adds_a_usage_chunk(client, server_tokenizer):
    prompt = "print('hi')\n"
    chunks = list(client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(server_tokenizer.encode(prompt))
    assert chunks[-1].usage.completion_tokens >= 1


def test_list_of_prompts_orders_choices_prompt_by_prompt(client):
    result = client.completions.create(model="m", prompt=["a = 1\n", "def g():\n"], max_tokens=3, n=2,
                                       temperature=0)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model="m", prompt=p, max_tokens=3, temperature=0).choices[0].text
             for p in ("a = 1\n", "def g():\n")]
    assert [c.text for c in result.choices] == [alone[0], alone[0], alone[1], alone[1]]


def test_models_route_lists_the_model_and_says_it_cannot_infill(client, server_model_dir):
    (model,) = client.models.list().data
    assert model.id == server_model_dir.name and model.model_extra["infill"] is False
    assert model.model_extra["context_length"] == SERVER_CONTEXT


# -- raw HTTP: Copilot and errors ---------------------------------------------------------

def test_copilot_request_replayed_on_an_engine_route(server):
    for engine, body in (("copilot-codex", COPILOT_BODY), ("codegen", {**COPILOT_BODY, "max_tokens": 3}),
                         ("some-default", {**COPILOT_BODY, "max_tokens": 3})):
        with httpx.Client(timeout=60) as http:
            response = http.post(f"{server}/v1/engines/{engine}/completions", json=body)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_payloads(response)
        assert payloads[-1] == "[DONE]"
        chunks = payloads[:-1]
        assert chunks and all(c["object"] == "text_completion" and c["choices"][0]["index"] == 0 for c in chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks][-1] in ("stop", "length")
        assert "\n" not in "".join(c["choices"][0]["text"] for c in chunks)
        assert len({c["id"] for c in chunks}) == 1


def test_long_prompt_is_left_truncated_and_max_tokens_clamped(server, server_tokenizer):
    line = "value = compute(value)\n"
    prompt = line * (3000 // len(server_tokenizer.encode(line)) + 1)
    length = len(server_tokenizer.encode(prompt))
    assert length > SERVER_CONTEXT
    half = SERVER_CONTEXT // 2
    for max_tokens, kept, allowed in ((500, SERVER_CONTEXT - 500, 500), (2000, half, half)):
        with httpx.Client(timeout=60) as http, \
                http.stream("POST", server + "/v1/completions",
                            json={**COPILOT_BODY, "prompt": prompt, "max_tokens": max_tokens, "stop": []}) as r:
            assert r.status_code == 200
            assert r.headers[DROPPED_HEADER] == str(length - kept)
            assert r.headers[MAX_TOKENS_HEADER] == str(allowed)
            first = next(r.iter_lines())
            assert first.startswith("data: {")


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [[1, 2], "x"]}, "prompt"),
    ({"prompt": [10 ** 9]}, "prompt"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": SERVER_CONTEXT + 1}, "max_tokens"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 9}, "n"),
    ({"prompt": ["x"] * 3, "n": 3}, "n"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
])
def test_bad_requests_get_openai_400_errors(server, body, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server + "/v1/completions", content=content,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "detail" not in response.json()
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_unknown_routes_and_methods_get_error_objects(server):
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405)):
        response = httpx.request(method, server + path)
        assert response.status_code == status and "message" in response.json()["error"]


def test_unknown_fields_are_tolerated(server):
    body = {"prompt": "x = ", "max_tokens": 2, "model": "gpt-3.5-turbo-instruct", "user": "u", "logit_bias": {},
            "code_annotations": [], "nwo": "o/r", "extra": {"language": "python"}, "stream_options": None,
            "frequency_penalty": 0.5, "presence_penalty": -0.5, "suffix": "\n"}
    response = httpx.post(server + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")


# -- loading, auth, queueing, batching, cancellation ----------------------------------------

def test_health_is_503_while_loading_then_200(server_model_dir):
    release = threading.Event()
    settings = Settings(model=str(server_model_dir))

    def slow_load():
        release.wait(READY_TIMEOUT)
        return load_predictor(settings)

    with running_server(settings, load=slow_load, wait_ready=False) as (base, _):
        response = httpx.get(base + "/health")
        assert response.status_code == 503 and response.json()["status"] == "loading"
        response = httpx.post(base + "/v1/completions", json={"prompt": "x"})
        assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"
        release.set()
        wait_until(lambda: health(base) == 200, "the model to load")


def test_failed_load_is_reported_and_signalled(server_model_dir):
    failures = []

    def broken_load():
        raise FileNotFoundError("no weights here")

    with running_server(Settings(), load=broken_load, wait_ready=False,
                        on_load_failure=lambda: failures.append(1)) as (base, _):
        wait_until(lambda: failures, "the load failure callback")
        response = httpx.get(base + "/health")
        assert response.status_code == 503 and "no weights here" in response.json()["error"]
        assert "no weights here" in httpx.post(base + "/v1/completions", json={}).json()["error"]["message"]


def test_api_key_is_required_when_set(server_model_dir):
    with running_server(Settings(model=str(server_model_dir), api_key="sesame")) as (base, _):
        assert httpx.get(base + "/v1/models").status_code == 401
        wrong = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(base + "/v1/completions", json={"prompt": "x"}).status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).completions.create(
                model="m", prompt="x", max_tokens=1)
        good = openai.OpenAI(base_url=base + "/v1", api_key="sesame", max_retries=0)
        assert good.completions.create(model="m", prompt="x", max_tokens=1).choices
        # Copilot's token exchange hands out the key only to a caller that has it
        assert httpx.get(base + "/copilot_internal/v2/token", headers={"Authorization": "token x"}).status_code == 401
        token = httpx.get(base + "/copilot_internal/v2/token", headers={"Authorization": "token sesame"}).json()
        assert token["token"] == "sesame" and token["expires_at"] > time.time()


def test_copilot_token_stub_without_a_key(server):
    token = httpx.get(server + "/copilot_internal/v2/token", headers={"Authorization": "token ghu_x"})
    assert token.status_code == 200 and token.json()["token"] and token.json()["endpoints"]["proxy"] == server


@pytest.fixture(scope="module")
def gated(server_model_dir):
    settings = Settings(model=str(server_model_dir), max_batch_size=4, max_queue=3, prompt_cache_entries=0)
    with gated_server(settings) as served:
        yield served


def test_waiting_requests_share_one_batch_and_a_full_queue_gets_429(gated):
    base, _, gate = gated
    body = {"prompt": "def f():\n", "max_tokens": 3, "temperature": 0}
    gate.open.clear()
    gate.entered.clear()
    with httpx.Client(timeout=60) as http, httpx.Client(timeout=60) as other, contextlib.ExitStack() as streams:
        first = threading.Thread(target=other.post, args=(base + "/v1/completions",), kwargs={"json": body})
        first.start()
        assert gate.entered.wait(READY_TIMEOUT)            # the worker is inside the first job's forward
        calls_before = len(gate.calls)
        # response headers arrive once a job is queued; three fill the queue
        queued = [streams.enter_context(http.stream("POST", base + "/v1/completions",
                                                     json={**body, "prompt": p, "stream": True}))
                  for p in ("a = 1\n", "import os\n", "while x:\n")]
        assert all(r.status_code == 200 for r in queued)
        rejected = http.post(base + "/v1/completions", json=body)
        assert rejected.status_code == 429 and rejected.headers["retry-after"]
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        gate.open.set()
        first.join(READY_TIMEOUT)
        assert all(sse_payloads(r)[-1] == "[DONE]" for r in queued)
    # the three waiting requests were decoded together: batch-of-3 forward passes
    assert 3 in gate.calls[calls_before:]
    assert max(gate.calls) <= 4


def test_client_disconnect_stops_generation_within_one_step(gated):
    base, engine, gate = gated
    wait_idle(engine)
    gate.hold_the_first_decode_step()
    try:
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", base + "/v1/completions",
                             json={"prompt": "x = 0\n", "max_tokens": 400, "temperature": 0, "stream": True}) as r:
                lines = r.iter_lines()      # dropping it would close the connection now: leaving is below
                next(line for line in lines if line.startswith("data: {"))
                gate.wait_held()
                (job,) = engine.running
            wait_until(lambda: job.cancelled, "the server to notice the disconnect")
            calls_at_cancel = len(gate.calls)
    finally:
        gate.release()
    with httpx.Client(timeout=60) as http:
        after = http.post(base + "/v1/completions", json={"prompt": "y", "max_tokens": 1, "temperature": 0})
        assert after.status_code == 200
    # at most the step about to start when the client left runs, then `after`'s single pass
    assert len(gate.calls) - calls_at_cancel <= 2


def test_an_error_after_streaming_started_ends_the_stream_with_an_error_event(gated):
    base, engine, gate = gated
    body = {"prompt": "x = 0\n", "max_tokens": 400, "temperature": 0}
    wait_idle(engine)
    gate.hold_the_first_decode_step()      # until the failure is armed
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", base + "/v1/completions", json={**body, "stream": True}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            gate.fail.set()
            gate.release()
            rest = [line for line in lines if line]
        gate.fail.clear()
        assert "data: [DONE]" not in rest
        error = json.loads(rest[-1].removeprefix("data: "))["error"]
        assert error["type"] == "server_error" and "injected failure" in error["message"]
        gate.fail.set()
        response = http.post(base + "/v1/completions", json=body)
        gate.fail.clear()
        assert response.status_code == 500 and "injected failure" in response.json()["error"]["message"]
        assert http.post(base + "/v1/completions", json={**body, "max_tokens": 2}).status_code == 200


# -- fill in the middle ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fim_model_dir(server_model_dir, tmp_path_factory) -> Path:
    from codegen.tokenizer import load_tokenizer
    directory = tmp_path_factory.mktemp("fim") / "fim-model"
    shutil.copytree(server_model_dir, directory)
    tok = load_tokenizer(directory)
    tok.add_special_tokens(list(FIM_TOKENS))
    tok.save(directory)
    return directory


def fake_predictor(tokenizer, context):
    """A Predictor's prompt handling without a model."""
    from codegen.predictor import Predictor
    fake = Predictor.__new__(Predictor)
    fake.tokenizer, fake.context_length = tokenizer, context
    fake.model_config = SimpleNamespace(vocab_size=len(tokenizer))
    return fake


def test_suffix_builds_a_psm_prompt_when_the_tokenizer_has_fim_tokens(fim_model_dir):
    from codegen.tokenizer import load_tokenizer
    tok = load_tokenizer(fim_model_dir)
    pre, suf, mid = (tok.special_token_ids[t] for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    prepared = fake_predictor(tok, 2048).prepare("def f(x):\n    ", 16, "\n    return y\n")
    assert prepared.ids == [pre, *tok.encode("def f(x):\n    "), suf, *tok.encode("\n    return y\n"), mid]
    # too long: the prefix loses its start, the suffix its end, the sentinels stay
    prefix, suffix = "a = b + c\n" * 40, "d = e * f\n" * 40
    prepared = fake_predictor(tok, 64).prepare(prefix, 16, suffix)
    assert len(prepared.ids) == 64 - 16 and prepared.max_new_tokens == 16
    s, m = prepared.ids.index(suf), prepared.ids.index(mid)
    assert prepared.ids[0] == pre and m == len(prepared.ids) - 1
    assert tok.encode(prefix)[-(s - 1):] == prepared.ids[1:s]
    assert tok.encode(suffix)[:m - s - 1] == prepared.ids[s + 1:m] and m - s - 1 >= 1
    assert prepared.dropped == len(tok.encode(prefix)) + len(tok.encode(suffix)) + 3 - (64 - 16)


def test_suffix_is_ignored_without_fim_tokens(server_tokenizer):
    prepared = fake_predictor(server_tokenizer, 2048).prepare("def f(x):\n", 16, "    return x\n")
    assert prepared.ids == server_tokenizer.encode("def f(x):\n") and prepared.text == "def f(x):\n"


def test_infilling_server(fim_model_dir):
    from codegen.tokenizer import load_tokenizer
    tok = load_tokenizer(fim_model_dir)
    with running_server(Settings(model=str(fim_model_dir))) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        assert client.models.list().data[0].model_extra["infill"] is True
        result = client.completions.create(model="m", prompt="def f(", suffix="):\n    pass\n", max_tokens=3,
                                           temperature=0)
        assert result.usage.prompt_tokens == len(tok.encode("def f(")) + len(tok.encode("):\n    pass\n")) + 3
        response = httpx.post(base + "/v1/completions", json={"prompt": "a", "suffix": "b", "echo": True})
        assert response.status_code == 400 and response.json()["error"]["param"] == "echo"


# -- settings and the entry point ---------------------------------------------------------------

def test_flags_win_over_environment_which_wins_over_defaults():
    settings = parse_settings(["--port", "9001"], {"CODEGEN_PORT": "9100", "CODEGEN_MAX_BATCH_SIZE": "3",
                                          "CODEGEN_TEMPERATURE": "0"})
    assert (settings.port, settings.max_batch_size, settings.temperature) == (9001, 3, 0.0)
    assert settings.host == "127.0.0.1" and settings.max_queue == Settings().max_queue
    with pytest.raises(ValueError, match="CODEGEN_MAX_QUEUE"):
        parse_settings([], {"CODEGEN_MAX_QUEUE": "many"})
    with pytest.raises(ValueError, match="max_batch_size"):
        parse_settings(["--max-batch-size", "0"], {})


def test_entry_point_serves_from_environment_settings(server_model_dir):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "CODEGEN_MODEL": str(server_model_dir), "CODEGEN_PORT": str(port), "CODEGEN_API_KEY": "k",
           "CODEGEN_LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, str(REPO / "codegen_server.py")], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: health(base) == 200 or process.poll() is not None, "codegen_server.py")
        assert process.poll() is None, process.stdout.read().decode()
        assert httpx.get(base + "/v1/models").status_code == 401
        models = httpx.get(base + "/v1/models", headers={"Authorization": "Bearer k"}).json()
        assert models["data"][0]["id"] == server_model_dir.name
    finally:
        process.terminate()
        process.wait(30)


def test_entry_point_rejects_a_missing_model_before_listening(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "codegen_server.py"), "--model", str(tmp_path / "nope")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "nope" in result.stderr


# -- PaddleNLP codegen_server.py's settings ------------------------------------------------------

def test_settings_default_to_paddlenlp_codegen_servers_and_take_its_names():
    defaults = Settings()
    # the "配置参数说明" list of PaddleNLP's examples/code_generation/codegen README
    assert (defaults.temperature, defaults.top_k, defaults.top_p, defaults.repetition_penalty, defaults.min_length,
            defaults.max_tokens, defaults.decode_strategy, defaults.use_faster, defaults.use_fp16_decoding) == \
        (0.5, 10, 1.0, 1.0, 0, 16, "greedy_search", True, True)
    settings = parse_settings(["--model-name-or-path", "m1", "--max-length", "32", "--no-use-faster", "--top-k", "4"],
                     {"CODEGEN_USE_FP16_DECODING": "false", "CODEGEN_DECODE_STRATEGY": "sampling",
                      "CODEGEN_REPETITION_PENALTY": "1.2", "CODEGEN_MIN_LENGTH": "2", "CODEGEN_DEVICE": "cpu"})
    assert (settings.model, settings.max_tokens, settings.use_faster, settings.use_fp16_decoding, settings.top_k,
            settings.decode_strategy, settings.repetition_penalty, settings.min_length, settings.device) == \
        ("m1", 32, False, False, 4, "sampling", 1.2, 2, "cpu")
    by_env = parse_settings([], {"CODEGEN_MODEL_NAME_OR_PATH": "m2", "CODEGEN_MAX_LENGTH": "8"})
    assert (by_env.model, by_env.max_tokens) == ("m2", 8)
    with pytest.raises(ValueError, match="CODEGEN_USE_FASTER"):
        parse_settings([], {"CODEGEN_USE_FASTER": "maybe"})
    with pytest.raises(ValueError, match="decode_strategy"):
        parse_settings(["--decode-strategy", "beam_search"], {})


def test_request_fields_override_the_servers_decoding_defaults():
    from codegen.server.app import generation_config
    from codegen.server.protocol import Defaults, Limits, parse_completion
    limits = Limits(256, 1000, 8)
    greedy = Defaults(16, 0.5, 1.0, 10, "greedy_search", 1.3, 2)
    params = parse_completion({"prompt": "x"}, limits, greedy)
    config = generation_config(params, params.max_tokens)
    assert (config.decode_strategy, config.max_new_tokens, config.min_new_tokens, config.repetition_penalty) == \
        ("greedy_search", 16, 2, 1.3)
    asked = generation_config(parse_completion({"prompt": "x", "temperature": 0.1, "max_tokens": 4,
                                                "frequency_penalty": 0.0}, limits, greedy), 4)
    assert (asked.decode_strategy, asked.temperature, asked.top_k, asked.max_new_tokens, asked.repetition_penalty) == \
        ("sampling", 0.1, 10, 4, 1.0)
    sampling = generation_config(parse_completion({"prompt": "x"}, limits, Defaults(16, 0.5, 1.0, 10, "sampling")), 16)
    assert (sampling.decode_strategy, sampling.temperature, sampling.top_k) == ("sampling", 0.5, 10)


def test_use_faster_and_use_fp16_decoding_pick_the_weights(server_model_dir):
    import paddle
    from codegen.models.codegen import CodeGenForCausalLM
    from codegen.inference.fast import FastCodeGenForCausalLM
    plain = load_predictor(Settings(model=str(server_model_dir), use_faster=False, use_fp16_decoding=False))
    assert type(plain.model) is CodeGenForCausalLM and plain.model.lm_head.weight.dtype == paddle.float32
    fast = load_predictor(Settings(model=str(server_model_dir)))
    assert isinstance(fast.model, FastCodeGenForCausalLM)
    fp16 = load_predictor(Settings(model=str(server_model_dir), use_faster=False))
    assert "float16" in str(fp16.model.transformer.h[0].mlp.fc_in.weight.dtype).lower()


def test_openai_0x_request_of_the_paddlenlp_readme_is_served(server):
    response = httpx.post(server + OPENAI_0X_PATH, content=OPENAI_0X_BODY, headers=OPENAI_0X_HEADERS, timeout=60)
    assert_paddlenlp_readme_response(response)
    # Completion.create(model=...) instead of engine= posts to /completions
    response = httpx.post(server + "/completions", content=OPENAI_0X_BODY, headers=OPENAI_0X_HEADERS, timeout=60)
    assert_paddlenlp_readme_response(response)


def test_fauxpilot_setting_of_the_paddlenlp_readme_is_served(server):
    # "fauxpilot.server": "http://HOST:8978/v1/engines"; the extension appends /<engine>/completions
    setting = server + "/v1/engines"
    body = {"model": "codegen", "prompt": "def add(a, b):\n", "max_tokens": 16, "temperature": 0.1, "stop": ["\n\n"]}
    assert_paddlenlp_readme_response(httpx.post(setting + "/codegen/completions", json=body, timeout=60))


def test_a_request_without_temperature_is_greedy_by_default(server):
    prompt = {"prompt": "def add(a, b):\n"}
    first, second = (httpx.post(server + "/v1/completions", json=prompt, timeout=60).json() for _ in range(2))
    greedy = httpx.post(server + "/v1/completions", json={**prompt, "temperature": 0}, timeout=60).json()
    assert first["choices"][0]["text"] == second["choices"][0]["text"] == greedy["choices"][0]["text"]
    assert first["usage"]["completion_tokens"] == 16 or first["choices"][0]["finish_reason"] == "stop"
