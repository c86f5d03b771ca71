"""The HTTP application: OpenAI Completions routes, health, and Copilot's token stub."""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..predictor import PromptError
from .completions import CompletionRun
from .engine import Engine, Job, NotReady, QueueFull
from .guards import RequestGuards, is_loopback
from .keys import APIKeys
from .metrics import CONTENT_TYPE, Metrics, RequestLog
from .protocol import (APIError, COMPLETION_SCHEMA, CompletionParams, Defaults, Limits, bad_request, parse_completion,
                       parse_json)
from .responses import JSONResponse, sse
from .settings import Settings

logger = logging.getLogger(__name__)

# response headers telling a client its prompt was cut or its max_tokens lowered
# (comma-separated, one value per prompt)
DROPPED_HEADER = "X-Codegen-Prompt-Tokens-Dropped"
MAX_TOKENS_HEADER = "X-Codegen-Max-Tokens"


def load_predictor(settings: Settings):
    from ..predictor import Predictor
    return Predictor(settings.model, device=settings.device, quantize=settings.quantize,
                     use_fast=settings.use_faster, use_fp16_decoding=settings.use_fp16_decoding,
                     prompt_cache_entries=settings.prompt_cache_entries, prompt_cache_mb=settings.prompt_cache_mb,
                     tensor_parallel=settings.tensor_parallel)


def model_id(predictor) -> str:
    """The name clients see: a checkpoint directory's own name, or the public name."""
    path = Path(predictor.name)
    return path.name if path.is_dir() else predictor.name


def generation_config(params: CompletionParams, max_new_tokens: int):
    from ..generation import GenerationConfig

    if params.greedy:
        # temperature, top-k and top-p cannot change an argmax; the defaults leave them off
        strategy = dict(decode_strategy="greedy_search")
    else:
        strategy = dict(decode_strategy="sampling", temperature=params.temperature, top_k=params.top_k,
                        top_p=params.top_p)
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=min(params.min_tokens, max_new_tokens),
                              repetition_penalty=params.repetition_penalty,
                              num_return_sequences=params.n, stop=params.stop, seed=params.seed,
                              logprobs=params.logprobs,
                              prompt_lookup_num_tokens=params.prompt_lookup_num_tokens, **strategy)
    try:
        config.validate()
    except ValueError as e:
        raise bad_request(None, str(e)) from None
    return config


def create_app(settings: Settings, load=None, on_load_failure=None) -> FastAPI:
    """The app; `load()` returns a Predictor (default: from `settings`) and runs in the worker thread.

    `on_load_failure()` is called on the event loop if loading fails (the CLI uses it to exit).
    """
    metrics = Metrics(prompt_cache=lambda: engine.predictor.prompt_cache if engine.ready else None)
    engine = Engine(load or (lambda: load_predictor(settings)), settings.max_batch_size, settings.max_queue, metrics)
    api_keys = APIKeys(settings.api_key or (), settings.api_key_file)
    defaults = Defaults(settings.max_tokens, settings.temperature, settings.top_p, settings.top_k,
                        settings.decode_strategy, settings.repetition_penalty, settings.min_length,
                        settings.prompt_lookup)

    async def watch_loading():
        await asyncio.to_thread(engine.loaded.wait)
        if engine.ready:
            logger.info("model %s loaded; ready for requests", model_id(engine.predictor))
        elif on_load_failure is not None:
            on_load_failure()

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        watcher = asyncio.create_task(watch_loading())
        yield
        watcher.cancel()
        await asyncio.to_thread(engine.stop)

    # /openapi.json describes the routes and the Completions body for clients and fuzzers
    app = FastAPI(title="codegen", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.api_keys = api_keys
    app.add_middleware(RequestGuards, max_body=settings.max_request_bytes, loopback_only=is_loopback(settings.host))
    # added last, so outermost: requests the guards refuse are counted too
    app.add_middleware(RequestLog, metrics=metrics, routes=app.routes)

    # -- errors: always OpenAI's error object, never a framework's own shape ---------

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        error = APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}")
        return JSONResponse(error.body(), status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request, e: Exception):
        # Starlette logs the traceback after this answer is sent
        error = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    # -- helpers -------------------------------------------------------------------

    def authorize(request: Request, schemes=("bearer",)) -> str | None:
        if not api_keys.required:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        request.state.key = api_keys.match(key.strip()) if scheme.lower() in schemes else None
        if request.state.key is None:
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY' with the "
                                "server's --api-key", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        return key.strip()

    def require_ready():
        if engine.ready:
            return engine.predictor
        if engine.load_error is not None:
            raise APIError(503, f"the model failed to load: {engine.load_error}", type="server_error")
        raise APIError(503, "the model is still loading; retry shortly", type="server_error",
                       headers={"Retry-After": "1"})

    # -- routes ----------------------------------------------------------------------

    @app.get("/health")
    async def health():
        if engine.ready:
            return {"status": "ready", "model": model_id(engine.predictor)}
        if engine.load_error is not None:
            return JSONResponse({"status": "failed", "error": str(engine.load_error)}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        predictor = require_ready()
        return {"object": "list", "data": [{
            "id": model_id(predictor), "object": "model", "created": int(engine.loaded_at), "owned_by": "codegen",
            "context_length": predictor.context_length,
            "infill": predictor.tokenizer.fim_sentinels is not None,
        }]}

    @app.get("/copilot_internal/v2/token")
    async def copilot_token(request: Request):
        # Copilot sends its GitHub token as "token X"; a configured key is what it must then
        # send back as its Bearer token, so only a caller that knows it gets it
        key = authorize(request, schemes=("bearer", "token"))
        now = int(time.time())
        base = str(request.base_url).rstrip("/")
        return {"token": key or "codegen-local", "expires_at": now + 3600, "refresh_in": 1800,
                "endpoints": {"api": base, "proxy": base}, "chat_enabled": False}

    completion_body = {"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": COMPLETION_SCHEMA}}}}

    @app.post("/v1/completions", openapi_extra=completion_body)
    # without /v1: the openai 0.x package with PaddleNLP's api_base, and its Completion.create(engine=...)
    @app.post("/completions", openapi_extra=completion_body)
    async def completions(request: Request):
        return await complete(request)

    @app.post("/v1/engines/{engine_name}/completions", openapi_extra=completion_body)
    @app.post("/engines/{engine_name}/completions", openapi_extra=completion_body)
    async def engine_completions(engine_name: str, request: Request):
        # Copilot names an engine (codegen, copilot-codex, ...); there is one model, so any name serves
        return await complete(request)

    async def complete(request: Request):
        authorize(request)
        predictor = require_ready()
        limits = Limits(predictor.context_length, predictor.vocab_size, settings.max_batch_size)
        params = parse_completion(parse_json(await request.body()), limits, defaults)
        if params.echo and params.suffix is not None and predictor.tokenizer.fim_sentinels is not None:
            raise bad_request("echo", "echo cannot be combined with suffix: an infilling prompt is not the text sent")
        try:
            prompts = await asyncio.to_thread(
                lambda: [predictor.prepare(p, params.max_tokens, params.suffix,
                                           f"prompt[{i}]" if len(params.prompts) > 1 else "prompt")
                         for i, p in enumerate(params.prompts)])
        except PromptError as e:
            raise bad_request(e.param, str(e)) from None
        configs = [generation_config(params, p.max_new_tokens) if p.max_new_tokens else None for p in prompts]
        job = Job([p.ids for p in prompts], configs, params.n,
                  score_prompts=params.logprobs if params.echo and params.logprobs is not None else None,
                  loop=asyncio.get_running_loop(), timeout=settings.request_timeout)
        try:
            engine.submit(job)
        except QueueFull:
            raise APIError(429, f"the server is busy ({settings.max_queue} requests waiting); retry shortly",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except NotReady:
            require_ready()
        run = CompletionRun(params, prompts, predictor.tokenizer, model_id(predictor))
        headers = {DROPPED_HEADER: ",".join(str(p.dropped) for p in prompts),
                   MAX_TOKENS_HEADER: ",".join(str(p.max_new_tokens) for p in prompts)}
        if params.stream:
            return StreamingResponse(stream_events(run, job), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        return JSONResponse(await collect(run, job, request), headers=headers)

    return app


def generation_failed(e: Exception) -> APIError:
    return APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error")


async def stream_events(run: CompletionRun, job: Job):
    """SSE lines for a job; on client disconnect the generator is cancelled and so is the job."""
    try:
        if run.params.echo and run.params.logprobs is None:
            for chunk in run.echo_chunks():
                yield sse(chunk)
        async for item in job.items():
            for chunk in run.consume(item):
                yield sse(chunk)
        for chunk in run.finish():
            yield sse(chunk)
        if run.params.include_usage:
            yield sse(run.chunk([], usage=run.usage()))
        yield sse("[DONE]")
    except Exception as e:   # the worker has logged it; the headers are sent, so it goes in the stream
        yield sse(generation_failed(e).body())
    finally:
        job.cancel()


async def collect(run: CompletionRun, job: Job, request: Request) -> dict:
    """The whole response; a client that hangs up meanwhile cancels the job."""
    async def cancel_on_disconnect():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel()

    watcher = asyncio.create_task(cancel_on_disconnect())
    try:
        if run.params.echo and run.params.logprobs is None:
            run.echo_chunks()
        async for item in job.items():
            run.consume(item)
    except Exception as e:   # the worker has logged it
        raise generation_failed(e) from None
    finally:
        watcher.cancel()
        job.cancel()
    run.finish()
    return run.response()
