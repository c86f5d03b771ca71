"""Server settings from command-line flags, each with an environment variable.

A flag given on the command line wins over its variable, which wins over the
built-in default, so a service manager can configure the server through the
environment alone.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "CODEGEN_"


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8978
    api_key: str | None = None
    device: str | None = None
    quantize: str | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    prompt_cache_entries: int = 4
    max_request_bytes: int = 4 * 1024 * 1024
    # defaults for fields a request leaves out (OpenAI's own defaults)
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    log_level: str = "info"

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be 'int8' or none, got {self.quantize!r}")
        if self.prompt_cache_entries < 0:
            raise ValueError(f"prompt_cache_entries must be >= 0, got {self.prompt_cache_entries}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level must be critical, error, warning, info or debug, got {self.log_level!r}")


_HELP = {
    "model": "converted checkpoint directory or public name under $CODEGEN_HOME (default: the small model "
             "shipped in the package)",
    "host": "address to listen on",
    "port": "TCP port (0 picks a free one)",
    "api_key": "when set, /v1 routes require 'Authorization: Bearer KEY'",
    "device": "cpu, gpu or gpu:N (default: gpu if available)",
    "quantize": "'int8' for int8 weights",
    "max_batch_size": "most sequences decoded together; also the limit on prompts x n in one request",
    "max_queue": "requests allowed to wait for the model before new ones get 429",
    "prompt_cache_entries": "prompts whose KV cache is kept for reuse by the next similar prompt (0 disables)",
    "max_request_bytes": "largest request body accepted; larger ones get 413",
    "max_tokens": "max_tokens of requests that leave it out",
    "temperature": "temperature of requests that leave it out (0 means greedy)",
    "top_p": "top_p of requests that leave it out",
    "top_k": "top_k of requests that leave it out (0 means no top-k filter)",
    "log_level": "critical, error, warning, info or debug",
}


def env_variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's flags to `parser` (used by `codegen serve` and codegen_server.py).

    Flags default to None so that `settings_from_args` can tell "not given" from
    a value and fall back to the environment.
    """
    defaults = Settings()
    for field in fields(Settings):
        default = getattr(defaults, field.name)
        shown = "" if default is None else f"; default {default}"
        parser.add_argument("--" + field.name.replace("_", "-"), default=None, metavar=field.name.upper(),
                            help=f"{_HELP[field.name]} [${env_variable(field.name)}{shown}]")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags, then the environment, then the defaults.

    Raises ValueError naming the flag or variable whose value is wrong.
    """
    values = {}
    for field in fields(Settings):
        convert = {"int": int, "float": float}.get(str(field.type).split(" ")[0], str)
        flag = getattr(args, field.name, None)
        source, raw = (f"--{field.name.replace('_', '-')}", flag) if flag is not None else \
            (env_variable(field.name), os.environ.get(env_variable(field.name)) or None)
        if raw is None:
            continue
        try:
            values[field.name] = convert(raw)
        except ValueError:
            raise ValueError(f"{source}={raw!r} is not a valid {convert.__name__}") from None
    if values.get("quantize", "").lower() == "none":
        values["quantize"] = None
    return Settings(**values)
