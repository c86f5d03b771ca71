"""Load test of codegen_server.py: N concurrent clients on loopback for a bounded time or count.

    .venv/bin/python bench/bench_server_load.py --clients 16 --duration 30
    .venv/bin/python bench/bench_server_load.py --url http://127.0.0.1:8978 --requests 200

Without --url it starts `codegen_server.py` on a free loopback port, serving --model or, by
default, a small randomly initialised CodeGen (gibberish text, real token counts). Each client
sends Copilot-like requests (its own prompt, streamed, temperature 0) one after another until the
time or request budget runs out. Reports requests/s, generated tokens/s, p50/p95 latency and time
to first token, and errors (any non-200 answer, error event or missing `[DONE]`) as one JSON line.
"""
import argparse
import datetime
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def make_random_codegen(directory: Path, n_positions: int = 2048, n_embd: int = 64, n_layer: int = 2,
                        n_head: int = 4, rotary_dim: int = 8, seed: int = 0) -> Path:
    """A randomly initialised CodeGen with the real tokenizer, saved in codegen's format."""
    sys.path.insert(0, str(REPO))
    import paddle
    from codegen.checkpoints import save_model
    from codegen.models.codegen import CodeGenConfig, CodeGenForCausalLM
    from codegen.tokenizer import codegen_tokenizer

    paddle.seed(seed)
    config = CodeGenConfig(vocab_size=51200, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                           n_head=n_head, rotary_dim=rotary_dim)
    return save_model(CodeGenForCausalLM(config), directory, codegen_tokenizer())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """codegen_server.py in a child process, ready (GET /health is 200) on entering."""

    def __init__(self, model: Path, *flags: str, timeout: float = 300):
        self.base = f"http://127.0.0.1:{free_port()}"
        port = self.base.rsplit(":", 1)[1]
        self.command = [sys.executable, str(REPO / "codegen_server.py"), "--model", str(model), "--host",
                        "127.0.0.1", "--port", port, "--log-level", "warning", *flags]
        self.timeout = timeout

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, cwd=REPO)
        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}")
            try:
                if httpx.get(self.base + "/health", timeout=5).status_code == 200:
                    return self.base
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not become ready")
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(60)


def client_prompt(client: int) -> str:
    return (f"# file {client}: utilities\nimport os\nimport sys\n\n\ndef helper_{client}(path):\n"
            f"    \"\"\"Return the size of `path` in bytes.\"\"\"\n    return os.path.getsize(path)\n\n\n"
            f"def main_{client}():\n    ")


def one_request(http: httpx.Client, base: str, body: dict) -> dict:
    """Send one streamed completion; its latency, time to first token and whether it failed."""
    start = time.perf_counter()
    first = None
    tokens = 0
    done = False
    with http.stream("POST", base + "/v1/engines/codegen/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return {"error": f"HTTP {response.status_code}: {response.text[:200]}"}
        for line in response.iter_lines():
            if not line:
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                return {"error": event["error"]["message"]}
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif first is None:
                first = time.perf_counter() - start
    latency = time.perf_counter() - start
    if not done:
        return {"error": "stream ended without [DONE]"}
    return {"latency": latency, "first": first, "tokens": tokens}


def run_load(base: str, clients: int, duration: float, requests: int | None, max_tokens: int) -> dict:
    deadline = time.monotonic() + duration
    results: list[dict] = []
    lock = threading.Lock()
    issued = [0]

    def take_ticket() -> bool:
        with lock:
            if time.monotonic() > deadline or (requests is not None and issued[0] >= requests):
                return False
            issued[0] += 1
            return True

    def client(index: int):
        body = {"prompt": client_prompt(index), "suffix": "", "max_tokens": max_tokens, "temperature": 0,
                "top_p": 1, "n": 1, "stop": ["\n\n\n"], "stream": True, "nwo": "bench/load",
                "stream_options": {"include_usage": True},
                "extra": {"language": "python"}}
        with httpx.Client(timeout=120) as http:
            while take_ticket():
                try:
                    result = one_request(http, base, body)
                except httpx.HTTPError as e:
                    result = {"error": f"{type(e).__name__}: {e}"}
                with lock:
                    results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    latencies = sorted(r["latency"] for r in ok)
    firsts = sorted(r["first"] for r in ok if r["first"] is not None)

    def percentile(values, q):
        return round(statistics.quantiles(values, n=100)[q - 1], 3) if len(values) > 1 else None

    return {"clients": clients, "requests": len(results), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(ok) / elapsed, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1), "errors": len(errors),
            "error_examples": sorted(set(errors))[:3],
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "first_event_p50_s": percentile(firsts, 50), "first_event_p95_s": percentile(firsts, 95)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--model", help="checkpoint for the started server (default: a small random CodeGen)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to keep issuing requests")
    parser.add_argument("--requests", type=int, help="stop after this many requests (whichever comes first)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=8, help="for the started server")
    parser.add_argument("--max-queue", type=int, default=64, help="for the started server")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)   # Paddle's import turns on INFO logging

    info = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "python": platform.python_version(), "max_tokens": args.max_tokens}
    if args.url:
        result = run_load(args.url, args.clients, args.duration, args.requests, args.max_tokens)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(args.model) if args.model else make_random_codegen(Path(tmp) / "random-codegen")
            info.update(model=model.name, max_batch_size=args.max_batch_size, max_queue=args.max_queue)
            with ServerProcess(model, "--max-batch-size", str(args.max_batch_size),
                               "--max-queue", str(args.max_queue)) as base:
                # one request first so that one-time costs do not land on the measured clients
                with httpx.Client(timeout=120) as http:
                    one_request(http, base, {"prompt": "x", "max_tokens": 2, "stream": True})
                result = run_load(base, args.clients, args.duration, args.requests, args.max_tokens)
    print(json.dumps({**info, **result}))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
