"""What `/metrics` reports, in Prometheus' text format.

Each app has its own registry, so several servers in one process (the tests)
count separately. The prompt cache keeps its own totals; they are read when
scraped.
"""
from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.routing import Match

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, prompt_cache: Callable[[], object] = lambda: None):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("codegen_requests", "HTTP requests answered", ["route", "status"], registry=registry)
        self.prompt_tokens = Counter("codegen_prompt_tokens", "Prompt tokens of completion requests",
                                     registry=registry)
        self.completion_tokens = Counter("codegen_completion_tokens", "Tokens generated", registry=registry)
        self.time_to_first_token = Histogram("codegen_time_to_first_token_seconds",
                                             "From a request's arrival in the queue to its first generated token",
                                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.time_per_output_token = Histogram("codegen_time_per_output_token_seconds",
                                               "Per request: time after the first token / tokens after the first",
                                               buckets=_PER_TOKEN_BUCKETS, registry=registry)
        self.queue_wait = Histogram("codegen_queue_wait_seconds", "From a request's arrival in the queue to "
                                    "joining the batch", buckets=_LATENCY_BUCKETS, registry=registry)
        self.active_rows = Gauge("codegen_active_rows", "Sequences in the batch, decoding or being prefilled",
                                 registry=registry)
        self.queued_requests = Gauge("codegen_queued_requests", "Requests waiting to join the batch",
                                     registry=registry)
        self.batch_size = Gauge("codegen_batch_size", "Sequences in the last decode step", registry=registry)
        self.draft_tokens = Counter("codegen_speculative_draft_tokens", "Tokens drafted by prompt lookup",
                                    registry=registry)
        self.accepted_tokens = Counter("codegen_speculative_accepted_tokens",
                                       "Drafted tokens the model agreed with (generated without a step of their own)",
                                       registry=registry)
        registry.register(_PromptCacheCollector(prompt_cache))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PromptCacheCollector:
    def __init__(self, prompt_cache: Callable[[], object]):
        self._prompt_cache = prompt_cache

    def collect(self):
        cache = self._prompt_cache()
        totals = (cache.lookups, cache.hits, cache.reused_tokens) if cache is not None else (0, 0, 0)
        for (name, text), value in zip((("codegen_prompt_cache_lookups", "Prompts looked up in the prompt cache"),
                                        ("codegen_prompt_cache_hits", "Prompts that reused a cached prefix"),
                                        ("codegen_prompt_cache_reused_tokens",
                                         "Prompt tokens whose keys and values came from the cache")), totals):
            yield CounterMetricFamily(name, text, value=value)


class RequestLog:
    """ASGI middleware: counts each answered request by route and status, and logs it with the
    fingerprint of the key that made it (`scope["state"]["key"]`, set when the key was checked)."""

    def __init__(self, app, metrics: Metrics, routes: list):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route_of(self, scope):
        # a request the guards refused never reached the router, which names the route it takes
        return next((route for route in self.routes if route.matches(scope)[0] != Match.NONE), None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_and_note_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = getattr(scope.get("route") or self._route_of(scope), "path", "unmatched")
            self.metrics.requests.labels(route, str(status[0])).inc()
            key = scope.get("state", {}).get("key")
            logger.info("%s %s %d key %s", scope["method"], scope["path"], status[0], key or "-")
