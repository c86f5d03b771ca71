"""An OpenAI Completions server that editor plug-ins (Copilot included) and the openai package can use.

Routes: POST /v1/completions and /v1/engines/{any name}/completions (Copilot's form; both also without
/v1, where the openai 0.x package posts with PaddleNLP's api_base), GET /v1/models,
GET /health (503 while the model loads, 200 once ready), GET /metrics (Prometheus),
GET /copilot_internal/v2/token (a stub for Copilot's token exchange). Every flag has an environment variable (`--max-batch-size` is
CODEGEN_MAX_BATCH_SIZE); see `codegen serve --help`. A prompt that does not fit the model's context
is left-truncated and max_tokens lowered; the response headers X-Codegen-Prompt-Tokens-Dropped and
X-Codegen-Max-Tokens say by how much (one value per prompt). How presence/frequency penalties map to
the model's repetition penalty is in `protocol`; what is refused before any route runs (web pages,
foreign `Host`s, bodies over --max-request-bytes) in `guards`.

`codegen serve` and `codegen_server.py` both end up in `run(args)`; FastAPI and Paddle are imported
only there, so adding the flags to a parser stays cheap. Under `python -m paddle.distributed.launch`
the model is split over the launch's processes: rank 0 serves, the others follow (see `ranks`).
"""
from __future__ import annotations

import argparse
import logging
import signal

from .settings import Settings, add_arguments, settings_from_args

__all__ = ["Settings", "add_arguments", "main", "run", "serve"]

logger = logging.getLogger(__name__)


def reload_keys_on_sighup(app) -> None:
    """Re-read `--api-key-file` when the process gets SIGHUP (call from the main thread)."""
    signal.signal(signal.SIGHUP, lambda *_: app.state.api_keys.reload())


def serve(settings: Settings) -> int:
    """Run the server until interrupted; 1 if the model failed to load, else 0."""
    import uvicorn

    from ..checkpoints import resolve_model_dir
    from ..inference.parallel import launch_rank, launch_world
    from .app import create_app, load_predictor
    from .guards import is_loopback
    from .ranks import LeadingPredictor, follow

    if settings.model is not None:
        resolve_model_dir(settings.model)   # a missing model fails now, not after the socket is up
    # Paddle installs C-level SIGTERM/SIGINT handlers when imported; imported later by the loading
    # thread it would replace uvicorn's and turn a graceful stop into an abort
    import paddle  # noqa: F401

    leading = launch_world() > 1
    if leading and settings.tensor_parallel == 1:
        raise ValueError(f"--tensor-parallel 1 under a launch of {launch_world()} processes would start that many "
                         f"servers on port {settings.port}: run codegen_server.py without the launcher")
    if leading and launch_rank() != 0:
        return follow(load_predictor(settings))
    if not settings.api_key and settings.api_key_file is None and not is_loopback(settings.host):
        logger.warning("listening on %s without --api-key: anyone who can reach it can use the model",
                       settings.host)
    failed = []

    def on_load_failure():
        failed.append(True)
        server.should_exit = True

    load = (lambda: LeadingPredictor(load_predictor(settings))) if leading else None
    app = create_app(settings, load, on_load_failure=on_load_failure)
    reload_keys_on_sighup(app)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port,
                                           log_level=settings.log_level, timeout_graceful_shutdown=5))
    server.run()
    if leading and app.state.engine.ready:
        app.state.engine.predictor.stop_followers()
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """Serve with settings from parsed `add_arguments` flags and the environment; the exit status."""
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(settings)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="codegen_server.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
