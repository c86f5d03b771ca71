"""The OpenAI Completions request: reading and checking a JSON body.

Bodies come from many clients (the openai package, editor plug-ins, Copilot),
so every field is checked by hand to answer with an OpenAI error object that
names the field, instead of a framework's validation dump. Fields we do not
know (Copilot's `nwo`, `extra`, `code_annotations`, ...) are ignored.

`presence_penalty` and `frequency_penalty` have no exact counterpart here: the
model applies a CTRL-style repetition penalty (logits of tokens already seen are
divided by it when positive, multiplied when negative). Their sum s, in
[-4, 4], maps to repetition_penalty = exp(s / 4): 0 leaves logits alone, 1 gives
1.28, 2 + 2 gives e; negative sums favour repetition. Counts are not tracked,
so the frequency penalty acts like the presence penalty.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate

MAX_LOGPROBS = 5      # OpenAI's limit on `logprobs`
MAX_STOP = 16         # OpenAI allows 4; editors sometimes send a few more
# Drafts a request may ask for per step: what one exact verifying pass takes (the decode loop's
# MAX_DRAFT_TOKENS, codegen/generation/lookup.py; not imported: parsing requests needs no Paddle)
MAX_PROMPT_LOOKUP = 15
MAX_NESTING = 64      # a Completions body nests 3 deep; deeper is refused before parsing

# JSON strings (whose brackets are text) and the bytes that are not brackets, removed to measure nesting
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_DEPTH = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


@dataclass(frozen=True)
class Limits:
    """What the loaded model and the server's settings allow."""
    context_length: int
    vocab_size: int
    max_rows: int          # prompts x n in one request


@dataclass(frozen=True)
class Defaults:
    """The server's settings for what a request leaves out."""
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    decode_strategy: str = "sampling"     # for requests without a temperature
    repetition_penalty: float = 1.0       # for requests without presence/frequency penalties
    min_tokens: int = 0
    prompt_lookup: int = 0                # prompt_lookup_num_tokens for requests without it


@dataclass(frozen=True)
class CompletionParams:
    prompts: list           # each a string or a list of token ids
    suffix: str | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: list[str]
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None
    repetition_penalty: float
    seed: int | None
    min_tokens: int = 0
    prompt_lookup_num_tokens: int = 0

    @property
    def greedy(self) -> bool:
        # nucleus sampling with p -> 0 keeps only the most likely token
        return self.temperature == 0 or self.top_p == 0


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}}

# The body as a JSON schema, published in /openapi.json for clients and fuzzers; parse_completion
# is what enforces it (and the loaded model's limits: vocabulary, context, batch size)
COMPLETION_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": _nullable({"anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            {**_TOKEN_IDS, "minItems": 1},
            {"type": "array", "items": _TOKEN_IDS, "minItems": 1}]}),
        "suffix": _nullable({"type": "string"}),
        "max_tokens": _nullable({"type": "integer", "minimum": 0}),
        "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "top_k": _nullable({"type": "integer", "minimum": 0}),
        "n": _nullable({"type": "integer", "minimum": 1}),
        "best_of": _nullable({"type": "integer", "minimum": 1}),
        "stop": _nullable({"anyOf": [{"type": "string"},
                                     {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}]}),
        "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
        "echo": _nullable({"type": "boolean"}),
        "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_LOGPROBS}),
        "presence_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
        "frequency_penalty": _nullable({"type": "number", "minimum": -2, "maximum": 2}),
        "seed": _nullable({"type": "integer", "minimum": 0}),
        "prompt_lookup_num_tokens": _nullable({"type": "integer", "minimum": 0, "maximum": MAX_PROMPT_LOOKUP}),
    },
}


def parse_json(raw: bytes) -> dict:
    _check_nesting(raw)
    try:
        body = json.loads(raw)
    except ValueError as e:   # also a UnicodeDecodeError, or an integer of more than 4300 digits
        raise bad_request(None, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise bad_request(None, f"the request body must be a JSON object, got {_json_type(body)}")
    return body


def _check_nesting(raw: bytes) -> None:
    """400 for arrays and objects nested deeper than MAX_NESTING, found without parsing (which would
    recurse once per level)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) > MAX_NESTING and \
            max(accumulate(map(_BRACKET_DEPTH.__getitem__, brackets))) > MAX_NESTING:
        raise bad_request(None, f"the request body nests arrays or objects more than {MAX_NESTING} deep")


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


# In every reader below a null field counts as absent, as some clients send them.

def _integer(body, name, default, low=None, high=None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(name, f"{name} must be an integer, got {_json_type(value)} {json.dumps(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise bad_request(name, f"{name} must be in [{low}, {high}], got {value}" if high is not None
                          else f"{name} must be at least {low}, got {value}")
    return value


def _number(body, name, default, low, high):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(name, f"{name} must be a number, got {_json_type(value)} {json.dumps(value)}")
    if not low <= value <= high:
        raise bad_request(name, f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _boolean(body, name, default=False):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(name, f"{name} must be true or false, got {_json_type(value)} {json.dumps(value)}")
    return value


def _prompts(body: dict, vocab_size: int) -> list:
    """`prompt` as a list of prompts: strings, or token-id lists as OpenAI also accepts."""
    value = body.get("prompt")
    if value is None:
        # OpenAI: a missing prompt generates as if from the start of a document
        return [""]
    if isinstance(value, str):
        return [_text(value, "prompt")]
    if not isinstance(value, list) or not value:
        raise bad_request("prompt", "prompt must be a string, a non-empty array of strings, "
                                    f"or token ids; got {_json_type(value)}")
    if all(isinstance(p, str) for p in value):
        return [_text(p, f"prompt[{i}]", "prompt") for i, p in enumerate(value)]
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        value = [value]
    for i, ids in enumerate(value):
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise bad_request("prompt", f"prompt[{i}] must be a string or an array of token ids "
                                        "(all prompts of one request of the same kind)")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise bad_request("prompt", f"prompt[{i}] has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return [list(ids) for ids in value]


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad_request("stop", f"stop must be a string or an array of strings, got {_json_type(value)}")
    if len(value) > MAX_STOP:
        raise bad_request("stop", f"stop has {len(value)} strings; at most {MAX_STOP} are allowed")
    # an empty stop string would end every completion before it starts
    return [_text(s, f"stop[{i}]", "stop") for i, s in enumerate(value) if s]


def _text(value: str, name: str, param: str | None = None) -> str:
    """`value` if it is valid Unicode: JSON's \\u escapes can spell a lone surrogate, which no text holds."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(param or name, f"{name} is not valid Unicode: it holds the lone surrogate "
                                         f"U+{ord(value[e.start]):04X} at character {e.start}") from None
    return value


def _repetition_penalty(body: dict, default: float) -> float:
    if body.get("presence_penalty") is None and body.get("frequency_penalty") is None:
        return default
    presence = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
    frequency = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
    return math.exp((presence + frequency) / 4)


def parse_completion(body: dict, limits: Limits, defaults: Defaults) -> CompletionParams:
    """Check a Completions body; raise APIError(400) naming the first bad field."""
    prompts = _prompts(body, limits.vocab_size)
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad_request("suffix", f"suffix must be a string, got {_json_type(suffix)}")
    suffix = suffix and _text(suffix, "suffix")
    n = _integer(body, "n", 1, low=1)
    if len(prompts) * n > limits.max_rows:
        raise bad_request("n", f"this request asks for {len(prompts)} prompt(s) x n={n} = {len(prompts) * n} "
                               f"completions; the server allows at most {limits.max_rows} per request "
                               f"(--max-batch-size)")
    best_of = _integer(body, "best_of", None, low=1)
    if best_of is not None and best_of != n:
        raise bad_request("best_of", "best_of other than n is not supported")
    logprobs = _integer(body, "logprobs", None, low=0, high=MAX_LOGPROBS)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise bad_request("stream_options", f"stream_options must be an object, got {_json_type(stream_options)}")
    stream = _boolean(body, "stream")
    include_usage = _boolean(stream_options or {}, "include_usage") if stream else False
    seed = _integer(body, "seed", None, low=0)
    # a request that names no temperature decodes the server's way: greedy is temperature 0
    default_temperature = 0.0 if defaults.decode_strategy == "greedy_search" else defaults.temperature
    return CompletionParams(
        prompts=prompts,
        suffix=suffix or None,
        max_tokens=_integer(body, "max_tokens", defaults.max_tokens, low=0, high=limits.context_length),
        temperature=_number(body, "temperature", default_temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0),
        top_k=_integer(body, "top_k", defaults.top_k, low=0),
        n=n,
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
        echo=_boolean(body, "echo"),
        logprobs=logprobs,
        repetition_penalty=_repetition_penalty(body, defaults.repetition_penalty),
        seed=seed,
        min_tokens=defaults.min_tokens,
        prompt_lookup_num_tokens=_integer(body, "prompt_lookup_num_tokens", defaults.prompt_lookup,
                                          low=0, high=MAX_PROMPT_LOOKUP),
    )
