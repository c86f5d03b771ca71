"""The server as a team shares it: continuous batching, cancellation, deadlines, several keys, metrics."""
import contextlib
import json
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import READY_TIMEOUT, gated_server, running_server, wait_idle, wait_until

from codegen.server import engine as engine_module
from codegen.server import reload_keys_on_sighup
from codegen.server.keys import fingerprint
from codegen.server.settings import Settings

GREEDY = {"temperature": 0, "stop": None}


@pytest.fixture(scope="module")
def gated(server_model_dir):
    settings = Settings(model=str(server_model_dir), max_batch_size=4, max_queue=8, prompt_cache_entries=0,
                        request_timeout=30)
    with gated_server(settings) as served:
        yield served


def completion_text(http, base, body) -> str:
    response = http.post(base + "/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def event_texts(lines):
    return [json.loads(line[len("data: "):])["choices"][0]["text"] for line in lines if line.startswith("data: {")]


def test_a_request_joins_a_running_stream_and_both_get_their_solo_greedy_text(gated):
    base, engine, gate = gated
    wait_idle(engine)
    long_body = {"prompt": "def main():\n", "max_tokens": 150, **GREEDY}
    short_body = {"prompt": "import os\nimport sys\n", "max_tokens": 6, **GREEDY}
    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(1) as pool:
        solo_long, solo_short = completion_text(http, base, long_body), completion_text(http, base, short_body)
        calls_before = len(gate.calls)
        # the long stream holds at its first decode step until the short request waits, so the
        # short one joins with the long one's 149 steps ahead, however slow this machine is
        gate.hold_the_first_decode_step()
        try:
            with http.stream("POST", base + "/v1/completions", json={**long_body, "stream": True}) as streaming:
                lines = streaming.iter_lines()
                first = next(line for line in lines if line.startswith("data: {"))
                gate.wait_held()    # else the worker could admit the short request before it is seen waiting
                (long_job,) = engine.running
                short = pool.submit(completion_text, http, base, short_body)
                wait_until(lambda: engine._waiting, "the short request to wait for the worker")
                gate.release()
                assert short.result(READY_TIMEOUT) == solo_short
                short_done_while_long_ran = long_job in engine.running
                streamed = "".join(event_texts([first, *lines]))
        finally:
            gate.release()
    assert short_done_while_long_ran                   # the short request did not wait for the long one
    assert 2 in gate.calls[calls_before:]              # they shared decode steps
    assert streamed == solo_long


def test_a_long_prompt_is_prefilled_in_chunks_between_a_streams_decode_steps(gated, server_tokenizer):
    base, engine, gate = gated
    wait_idle(engine)
    long_prompt = "value = compute(alpha, beta)\n" * 120
    assert len(server_tokenizer.encode(long_prompt)) > 3 * 256
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", base + "/v1/completions",
                         json={"prompt": "x = 1\n", "max_tokens": 400, "stream": True, **GREEDY}) as streaming:
            lines = streaming.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            start = len(gate.shapes)
            assert http.post(base + "/v1/completions",
                             json={"prompt": long_prompt, "max_tokens": 2, **GREEDY}).status_code == 200
            shapes = gate.shapes[start:]
            running_tokens = len(event_texts(lines))   # the stream went on to its end meanwhile
    chunks = [i for i, shape in enumerate(shapes) if shape[1] > 1]
    assert len(chunks) >= 4 and all(shapes[i] == (1, 256) for i in chunks[:-1])
    # between two chunks of the long prompt, the running stream took a decode step
    assert all(shapes[i + 1] == (1, 1) for i in chunks[:-1])
    assert running_tokens > 0


@contextlib.contextmanager
def streamed_request(base, body):
    """A streamed request, open once its first token has arrived; leaving the block hangs up."""
    with httpx.Client(timeout=60) as http, \
            http.stream("POST", base + "/v1/completions", json={**body, "stream": True}) as response:
        lines = response.iter_lines()       # dropping it would close the connection at once
        next(line for line in lines if line.startswith("data: {"))
        yield


@contextlib.contextmanager
def non_streamed_request(base, body):
    """A request on a raw socket (a client library would wait for the whole response); leaving the block
    hangs up."""
    payload = json.dumps(body).encode()
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        yield


@pytest.mark.parametrize("request_that_leaves", [streamed_request, non_streamed_request])
def test_a_client_that_leaves_is_dropped_within_one_decode_step(gated, request_that_leaves):
    base, engine, gate = gated
    wait_idle(engine)
    gate.hold_the_first_decode_step()
    try:
        with request_that_leaves(base, {"prompt": "x = 0\n", "max_tokens": 400, **GREEDY}):
            gate.wait_held()
            (job,) = engine.running
        wait_until(lambda: job.cancelled, "the server to notice the disconnect")
        steps_at_cancel = engine.decode_steps
    finally:
        gate.release()
    wait_until(lambda: job not in engine.running and not engine._batch, "the row to leave")
    assert engine.decode_steps - steps_at_cancel <= 1     # only the step held when it left


def test_a_request_past_its_deadline_ends_with_what_it_has(gated):
    base, engine, gate = gated
    wait_idle(engine)
    engine_timeout = 1.0
    gate.hold_the_first_decode_step()
    sent = time.monotonic()
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", base + "/v1/completions",
                         json={"prompt": "x = 0\n", "max_tokens": 400, "stream": True, **GREEDY}) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: {"))
            gate.wait_held()
            (job,) = engine.running
            assert job.timeout == 30                # --request-timeout
            job.timeout = engine_timeout          # shorter than the server's 30 s, for this request only
            wait_until(lambda: time.monotonic() - sent > engine_timeout, "the deadline")
            gate.release()
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert len(events) < 400


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# the team's keys\nalice-key\n\nbob-key\n")
    return path


def test_the_worker_hands_freed_memory_back_every_few_finished_requests(gated, monkeypatch):
    base, engine, gate = gated
    wait_idle(engine)
    releases = []
    monkeypatch.setattr(engine_module, "RELEASE_MEMORY_EVERY", 3)
    monkeypatch.setattr(engine.predictor, "release_freed_memory", lambda: releases.append(engine.decode_steps))
    engine._finished_since_release = 0      # earlier tests' requests count too
    with httpx.Client(timeout=60) as http:
        for i in range(7):
            completion_text(http, base, {"prompt": f"x = {i}\n", "max_tokens": 2, **GREEDY})
            wait_idle(engine)
    assert len(releases) == 2


def test_several_keys_are_accepted_named_by_fingerprint_and_reloaded_on_sighup(server_model_dir, key_file, caplog):
    caplog.set_level(logging.INFO, logger="codegen.server")
    settings = Settings(model=str(server_model_dir), api_key=("flag-one", "flag-two"), api_key_file=str(key_file))
    with running_server(settings) as (base, app), httpx.Client(timeout=60) as http:
        def status(key):
            return http.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

        assert [status(k) for k in ("flag-one", "flag-two", "alice-key", "bob-key")] == [200] * 4
        assert status("mallory") == 401 and http.get(base + "/v1/models").status_code == 401
        log = caplog.text
        assert f"key {fingerprint('alice-key')}" in log and f"key {fingerprint('flag-two')}" in log
        assert "alice-key" not in log and "flag-one" not in log

        previous = signal.getsignal(signal.SIGHUP)
        try:
            reload_keys_on_sighup(app)
            key_file.write_text("carol-key\n")
            os.kill(os.getpid(), signal.SIGHUP)
            wait_until(lambda: status("carol-key") == 200, "the key file to be re-read")
        finally:
            signal.signal(signal.SIGHUP, previous)
        assert status("alice-key") == 401 and status("flag-one") == 200


def test_a_missing_key_file_is_named():
    from codegen.server.keys import APIKeys
    with pytest.raises(ValueError, match="--api-key-file /nonexistent/keys"):
        APIKeys((), "/nonexistent/keys")


def test_metrics_count_requests_tokens_latencies_and_prompt_cache_reuse(server_model_dir):
    settings = Settings(model=str(server_model_dir), prompt_cache_entries=2)
    body = {"prompt": "def fib(n):\n    if n < 2:\n        return n\n", "max_tokens": 5, **GREEDY}
    with running_server(settings) as (base, _), httpx.Client(timeout=60) as http:
        for _ in range(2):
            usage = http.post(base + "/v1/completions", json=body).json()["usage"]
        assert http.post(base + "/v1/completions", json={"prompt": "x", "max_tokens": -1}).status_code == 400
        # refused by the guards before routing: still counted under the route it was sent to
        assert http.post(base + "/v1/completions", content=b"{}", headers={"Content-Type": "text/plain"}
                         ).status_code == 415
        assert http.get(base + "/no/such/route").status_code == 404
        response = http.get(base + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
             for line in response.text.splitlines() if line and not line.startswith("#")}
    assert lines['codegen_requests_total{route="/v1/completions",status="200"}'] == 2
    assert lines['codegen_requests_total{route="/v1/completions",status="400"}'] == 1
    assert lines['codegen_requests_total{route="/v1/completions",status="415"}'] == 1
    assert lines['codegen_requests_total{route="unmatched",status="404"}'] == 1
    assert lines["codegen_prompt_tokens_total"] == 2 * usage["prompt_tokens"]
    assert lines["codegen_completion_tokens_total"] == 2 * usage["completion_tokens"]
    for histogram in ("time_to_first_token_seconds", "time_per_output_token_seconds", "queue_wait_seconds"):
        assert lines[f"codegen_{histogram}_count"] == 2
    for gauge in ("active_rows", "queued_requests", "batch_size"):
        assert lines[f"codegen_{gauge}"] == 0
    # the second request reused all of the first's prompt but its last token
    assert lines["codegen_prompt_cache_hits_total"] == 1
    assert lines["codegen_prompt_cache_reused_tokens_total"] == usage["prompt_tokens"] - 1
