"""Load test of codegen_server.py: N concurrent clients on loopback for a bounded time or count.

    .venv/bin/python bench/bench_server_load.py --clients 16 --duration 30
    .venv/bin/python bench/bench_server_load.py --url http://127.0.0.1:8978 --requests 200

Without --url it starts `codegen_server.py` on a free loopback port, serving --model or, by
default, a small randomly initialised CodeGen (gibberish text, real token counts). Each client
sends Copilot-like requests (its own prompt, streamed, temperature 0) one after another until the
time or request budget runs out. Reports requests/s, generated tokens/s, p50/p95 latency and time
to first token, and errors (any non-200 answer, error event or missing `[DONE]`) as one JSON line.

    .venv/bin/python bench/bench_server_load.py --copilot --clients 64 --requests 2000 --before /tmp/srv-before

--copilot makes the prompts Copilot-shaped: each client edits its own 1,000-1,500-token window of a
real source file, a few characters more on each request, with `stop: ["\n\n"]`. --before DIR first
runs the server of another checkout (e.g. an older commit in a git worktree) on the same model,
for a before/after pair in one run. Each server's line then adds p99s, errors by kind and the
server's RSS after the warm-up (with --copilot, one uncounted request per client, which fills
the prompt cache) and after the load.
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

    def __init__(self, model: Path, *flags: str, timeout: float = 300, checkout: Path = REPO):
        self.base = f"http://127.0.0.1:{free_port()}"
        port = self.base.rsplit(":", 1)[1]
        self.command = [sys.executable, str(checkout / "codegen_server.py"), "--model", str(model), "--host",
                        "127.0.0.1", "--port", port, "--log-level", "warning", *flags]
        self.checkout = checkout
        self.timeout = timeout

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return round(kb / 1024, 1)

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(self.checkout)}
        self.process = subprocess.Popen(self.command, cwd=self.checkout, env=env)
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


class CopilotPrompts:
    """Per client, a window of 1,000-1,450 tokens of a real source file that grows by a few
    characters on each request, as an editor's prefix does while its user types."""

    def __init__(self, clients: int, seed: int = 0):
        import argparse as source_module
        import random
        sys.path.insert(0, str(REPO))
        from codegen.tokenizer import codegen_tokenizer

        tokenizer = codegen_tokenizer()
        self.text = Path(source_module.__file__).read_text()
        ids = tokenizer.encode(self.text)
        rng = random.Random(seed)
        self.windows = []
        for _ in range(clients):
            length = rng.randint(1000, 1450)          # leaves room for the characters typed later
            start = rng.randint(0, len(ids) - length - 1)
            self.windows.append(tokenizer.decode(ids[start:start + length]))
        self.typed = [0] * clients

    def next(self, client: int) -> str:
        """The client's prompt with 3 more characters typed (starting over after 150)."""
        self.typed[client] = (self.typed[client] + 3) % 150
        return self.windows[client] + self.text[client * 97:client * 97 + self.typed[client]]


def one_request(http: httpx.Client, base: str, body: dict) -> dict:
    """Send one streamed completion; its latency, time to first token and whether it failed."""
    start = time.perf_counter()
    first = None
    tokens = 0
    done = False
    with http.stream("POST", base + "/v1/engines/codegen/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return {"error": f"HTTP {response.status_code}", "detail": response.text[:200]}
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


def run_load(base: str, clients: int, duration: float, requests: int | None, max_tokens: int,
             copilot: CopilotPrompts | None = None) -> dict:
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
        if copilot is not None:
            body["stop"] = ["\n\n"]
        with httpx.Client(timeout=300) as http:
            while take_ticket():
                if copilot is not None:
                    body["prompt"] = copilot.next(index)
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
    by_kind = {kind: errors.count(kind) for kind in sorted(set(errors))}
    latencies = sorted(r["latency"] for r in ok)
    firsts = sorted(r["first"] for r in ok if r["first"] is not None)

    def percentile(values, q):
        return round(statistics.quantiles(values, n=100)[q - 1], 3) if len(values) > 1 else None

    return {"clients": clients, "requests": len(results), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(ok) / elapsed, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / elapsed, 1), "errors": len(errors),
            "errors_by_kind": by_kind,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "latency_p99_s": percentile(latencies, 99),
            "first_event_p50_s": percentile(firsts, 50), "first_event_p95_s": percentile(firsts, 95),
            "first_event_p99_s": percentile(firsts, 99)}


def measure(model: Path, args, checkout: Path) -> dict:
    """The load run against the server of `checkout`, with its RSS before and after.

    With --copilot, a warm-up round (one request per client, not counted) comes first: it fills
    the prompt cache with each client's prefix, as a team's editors do within seconds, so the RSS
    at the start already includes the cache's memory and growth after it is a leak.
    """
    copilot = CopilotPrompts(args.clients) if args.copilot else None     # each server sees the same prompts
    server = ServerProcess(model, "--max-batch-size", str(args.max_batch_size), "--max-queue", str(args.max_queue),
                           checkout=checkout)
    with server as base:
        # one request first so that one-time costs do not land on the measured clients
        with httpx.Client(timeout=300) as http:
            one_request(http, base, {"prompt": "x", "max_tokens": 2, "stream": True})
        if copilot is not None:
            run_load(base, args.clients, args.duration, args.clients, args.max_tokens, copilot)
        rss_start = server.rss_mb()
        result = run_load(base, args.clients, args.duration, args.requests, args.max_tokens, copilot)
        return {"server": str(checkout), **result, "rss_start_mb": rss_start, "rss_end_mb": server.rss_mb()}


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
    parser.add_argument("--copilot", action="store_true", help="Copilot-shaped prompts of 1,000-1,500 tokens")
    parser.add_argument("--before", type=Path, help="first run the server of this checkout on the same model")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)   # Paddle's import turns on INFO logging

    info = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "python": platform.python_version(), "max_tokens": args.max_tokens,
            "load_average": os.getloadavg()[0]}
    if args.url:
        copilot = CopilotPrompts(args.clients) if args.copilot else None
        results = [run_load(args.url, args.clients, args.duration, args.requests, args.max_tokens, copilot)]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(args.model) if args.model else make_random_codegen(Path(tmp) / "random-codegen")
            info.update(model=model.name, max_batch_size=args.max_batch_size, max_queue=args.max_queue)
            checkouts = ([args.before] if args.before else []) + [REPO]
            results = [measure(model, args, checkout) for checkout in checkouts]
    for result in results:
        print(json.dumps({**info, **result}), flush=True)
    sys.exit(1 if any(result["errors"] for result in results) else 0)


if __name__ == "__main__":
    main()
