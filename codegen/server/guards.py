"""What the server refuses before any route sees a request: web pages, foreign hosts, huge bodies.

A page in the user's browser may send a "simple" request to any address, the
local server included, without asking first (no CORS preflight): a POST whose
Content-Type is text/plain or a form encoding. So a POST must say it carries
JSON (415 otherwise); a JSON POST from a page needs a preflight, which this
server never grants. Through DNS rebinding a page can even read the answers:
its own host name is made to resolve to 127.0.0.1, and the browser sends that
name as `Host`. So a server listening on a loopback address answers only
requests addressed to a loopback name (403 otherwise: a final refusal, where
421 would invite the client to retry). Listening on any other address, the
server is meant to be reached by names we cannot know, and `--api-key` is
what protects it.

The body is read here, up to `max_body` bytes (413 past that, as declared by
Content-Length or as counted while it streams in), and replayed to the app.
"""
from __future__ import annotations

import ipaddress

from .protocol import APIError
from .responses import JSONResponse

JSON_TYPE = "application/json"


def is_loopback(host: str) -> bool:
    """Whether a host name or address (as in a `Host` header, without its port) is this machine's loopback."""
    host = host.lower()
    if host == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host of a `Host` header value: `name`, `name:port`, `1.2.3.4:port` or `[v6]:port`."""
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.rpartition(":")[0] if ":" in header else header


class RequestGuards:
    """ASGI middleware refusing what the module's docstring describes with an OpenAI error object."""

    def __init__(self, app, max_body: int, loopback_only: bool):
        self.app = app
        self.max_body = max_body
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        try:
            self._check_headers(scope["method"], headers)
            body = await self._read_body(receive)
        except APIError as e:
            response = JSONResponse(e.body(), status_code=e.status, headers=e.headers)
            return await response(scope, receive, send)
        if body is None:   # the client left before sending its body
            return None
        sent = False

        async def replay():
            nonlocal sent
            if sent:   # the app watching for the client to leave
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    def _check_headers(self, method: str, headers: dict) -> None:
        # a request without Host is HTTP/1.0, which no browser sends
        foreign = [host for host in headers.get("host", []) if not is_loopback(_host_name(host))]
        if self.loopback_only and foreign:
            raise APIError(403, f"Host {foreign[0]!r} is not a loopback name: this server listens on a loopback "
                                "address and answers only requests addressed to localhost, 127.0.0.1 or [::1] (a web "
                                "page could otherwise reach it through DNS rebinding); serve with --host to listen "
                                "elsewhere", code="forbidden_host")
        if method == "POST":
            media_type = headers.get("content-type", [""])[0].partition(";")[0].strip().lower()
            if media_type != JSON_TYPE:
                raise APIError(415, f"the request body must be JSON sent with 'Content-Type: {JSON_TYPE}', got "
                                    f"{media_type or 'no Content-Type'} (refused so that web pages cannot post to "
                                    f"this server; with curl use --json)", code="unsupported_media_type")
        declared = headers.get("content-length", [""])[0]
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large(f"declares {declared} bytes")

    async def _read_body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large(f"is over {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, what: str) -> APIError:
        return APIError(413, f"the request body {what}; the server accepts at most {self.max_body} "
                             "(--max-request-bytes)", code="request_too_large")
