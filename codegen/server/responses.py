"""JSON out: response bodies and server-sent events that every JSON parser accepts.

JSON has no infinity and no NaN, yet log-probabilities can be -inf: the first
token after a healed prompt (one ending in whitespace) may only extend the text
taken off, so the other alternatives in `top_logprobs` are impossible. Every
float that is not finite is therefore replaced on the way out, in any field:
-inf by LOGPROB_FLOOR, the number OpenAI's API uses for "very unlikely", which
clients that type logprobs as numbers (the openai package included) read as
is; NaN and +inf, which no probability should be, by null.
"""
from __future__ import annotations

import json
import math

from fastapi.responses import JSONResponse as _JSONResponse

LOGPROB_FLOOR = -9999.0


def finite(value):
    """`value` with every non-finite float replaced (see the module's docstring)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return LOGPROB_FLOOR if value < 0 else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_text(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:   # a non-finite float somewhere: rare, so only then is the value walked
        return json.dumps(finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class JSONResponse(_JSONResponse):
    def render(self, content) -> bytes:
        return json_text(content).encode("utf-8")


def sse(data: dict | str) -> str:
    """One server-sent event: a single `data:` line (JSON never holds a raw newline) and a blank line."""
    if not isinstance(data, str):
        data = json_text(data)
    return f"data: {data}\n\n"
