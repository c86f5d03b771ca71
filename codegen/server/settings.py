"""Server settings from command-line flags, each with an environment variable.

A flag given on the command line wins over its variable, which wins over the
built-in default, so a service manager can configure the server through the
environment alone. The decoding defaults are those of PaddleNLP's codegen_server.py,
whose names work too: --model-name-or-path is --model and --max-length is
--max-tokens (CODEGEN_MODEL_NAME_OR_PATH, CODEGEN_MAX_LENGTH).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "CODEGEN_"
# PaddleNLP codegen_server.py's names for our settings
ALIASES = {"model": "model_name_or_path", "max_tokens": "max_length"}
DECODE_STRATEGIES = ("greedy_search", "sampling")


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8978
    api_key: tuple[str, ...] | str | None = None     # a str is one key
    api_key_file: str | None = None
    device: str | None = None
    quantize: str | None = None
    max_batch_size: int = 8
    max_queue: int = 64
    prompt_cache_entries: int = 64
    prompt_cache_mb: int = 1024
    request_timeout: float | None = None
    max_request_bytes: int = 4 * 1024 * 1024
    use_faster: bool = True
    use_fp16_decoding: bool = True
    tensor_parallel: int | None = None
    # defaults for what a request leaves out: PaddleNLP codegen_server.py's
    max_tokens: int = 16
    min_length: int = 0
    decode_strategy: str = "greedy_search"
    temperature: float = 0.5
    top_p: float = 1.0
    top_k: int = 10
    repetition_penalty: float = 1.0
    prompt_lookup: int = 0
    log_level: str = "info"

    def __post_init__(self):
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", (self.api_key,))
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be a positive number of seconds, got {self.request_timeout}")
        for name in ("max_batch_size", "max_queue", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be 'int8' or none, got {self.quantize!r}")
        if self.tensor_parallel is not None and self.tensor_parallel < 1:
            raise ValueError(f"tensor_parallel must be at least 1 (1: no split), got {self.tensor_parallel}")
        if self.prompt_cache_entries < 0:
            raise ValueError(f"prompt_cache_entries must be >= 0, got {self.prompt_cache_entries}")
        if self.prompt_cache_mb < 1:
            raise ValueError(f"prompt_cache_mb must be at least 1, got {self.prompt_cache_mb}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if self.decode_strategy not in DECODE_STRATEGIES:
            raise ValueError(f"decode_strategy must be greedy_search or sampling, got {self.decode_strategy!r}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        if self.prompt_lookup < 0:
            raise ValueError(f"prompt_lookup must be >= 0 (0 disables it), got {self.prompt_lookup}")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            raise ValueError(f"log_level must be critical, error, warning, info or debug, got {self.log_level!r}")


_HELP = {
    "model": "converted checkpoint directory or public name under $CODEGEN_HOME (default: the small model "
             "shipped in the package)",
    "host": "address to listen on",
    "port": "TCP port (0 picks a free one)",
    "api_key": "when set, /v1 routes require 'Authorization: Bearer KEY'; repeat for several keys",
    "api_key_file": "file of accepted keys, one per line, re-read on SIGHUP",
    "device": "cpu, gpu or gpu:N (default: gpu if available)",
    "quantize": "'int8' for int8 weights",
    "use_faster": "the fused CPU path when it builds (PaddleNLP's FasterGeneration switch)",
    "use_fp16_decoding": "fp16 weights (on CPU read at half the bytes, fp32 arithmetic)",
    "tensor_parallel": "under python -m paddle.distributed.launch, split the model over its N processes (default: "
                       "all of them): rank 0 serves HTTP, the others follow its batches",
    "max_batch_size": "most sequences decoded together; also the limit on prompts x n in one request",
    "max_queue": "requests allowed to wait for the model before new ones get 429",
    "prompt_cache_entries": "prompts whose KV cache is kept for reuse by the next similar prompt; one per "
                            "editor using the server (0 disables)",
    "prompt_cache_mb": "most memory the prompt cache holds, in MiB (the least recently used entries go first)",
    "request_timeout": "seconds after which a request ends with what it has (finish_reason 'length')",
    "max_request_bytes": "largest request body accepted; larger ones get 413",
    "max_tokens": "max_tokens of requests that leave it out",
    "min_length": "new tokens generated before end-of-text is allowed",
    "decode_strategy": "greedy_search or sampling, for requests without a temperature",
    "temperature": "temperature of sampling requests that leave it out (0 means greedy)",
    "top_p": "top_p of requests that leave it out",
    "top_k": "top_k of requests that leave it out (0 means no top-k filter)",
    "repetition_penalty": "for requests without presence_penalty or frequency_penalty (1 disables it)",
    "prompt_lookup": "prompt_lookup_num_tokens of requests that leave it out: draft up to K tokens per step "
                     "from the prompt and verify them in one pass (0 disables it)",
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
        names = [field.name] + ([ALIASES[field.name]] if field.name in ALIASES else [])
        if field.type == "bool":
            kind = dict(action=argparse.BooleanOptionalAction)
        else:
            # several keys for a team: the flag may be repeated
            kind = dict(metavar=field.name.upper(), action="append" if field.name == "api_key" else "store")
        parser.add_argument(*("--" + name.replace("_", "-") for name in names), dest=field.name, default=None,
                            help=f"{_HELP[field.name]} [${' or $'.join(map(env_variable, names))}{shown}]", **kind)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags, then the environment, then the defaults.

    Raises ValueError naming the flag or variable whose value is wrong.
    """
    values = {}
    for field in fields(Settings):
        convert = {"int": int, "float": float, "bool": boolean}.get(str(field.type).split(" ")[0], str)
        flag = getattr(args, field.name, None)
        source, raw = (f"--{field.name.replace('_', '-')}", flag) if flag is not None else \
            _from_environment(field.name)
        if raw is None:
            continue
        if isinstance(raw, list):    # a repeated flag
            values[field.name] = tuple(raw)
            continue
        try:
            values[field.name] = convert(raw)
        except ValueError:
            raise ValueError(f"{source}={raw!r} is not a valid {convert.__name__}") from None
    if values.get("quantize", "").lower() == "none":
        values["quantize"] = None
    return Settings(**values)


def _from_environment(name: str) -> tuple[str, str | None]:
    """(variable, value) of the first of the setting's variables that is set and not empty."""
    names = [env_variable(n) for n in (name, ALIASES.get(name)) if n]
    return next(((v, os.environ[v]) for v in names if os.environ.get(v)), (names[0], None))


def boolean(raw) -> bool:
    if isinstance(raw, bool):
        return raw
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not true or false")
