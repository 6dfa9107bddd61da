"""The HTTP server's guard, an ASGI middleware run before routing and body parsing: the write token
(under any path prefix the app runs at), then the request body's size."""

from __future__ import annotations

import hmac
import json
from typing import Any

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def _writes(scope: dict[str, Any]) -> bool:
    """Whether a request goes to the write routes, under whatever prefix the app runs (`--root-path`, a mount:
    Starlette routes on the path less `root_path`; a prefix left in the path skipped the token before)."""
    path, root = scope["path"], scope.get("root_path", "")
    route = path[len(root):] if root and path.startswith(root) else path
    return route.startswith("/documents") or "/documents" in path


class Guard:
    """ASGI middleware run before routing and body parsing: the write token, then the body size."""

    def __init__(self, app: Any, token: str | None, max_bytes: int) -> None:
        # a token read from a secrets file ends in a newline, which no header can carry: compared stripped
        self.app, self.token, self.max_bytes = app, token.strip().encode() if token else None, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token and scope["method"] in WRITE_METHODS and _writes(scope):
            given = dict(scope["headers"]).get(b"authorization", b"")  # the bytes sent: a UTF-8 token too
            if not given.lower().startswith(b"bearer "):
                return await _reply(send, 401, "a bearer token is needed to change the index",
                                    [(b"www-authenticate", b"Bearer")])
            if not hmac.compare_digest(given[7:].strip(), self.token):
                return await _reply(send, 403, "wrong token")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _reply(send, 400, "bad Content-Length")
            if int(length) > self.max_bytes:
                return await _reply(send, 413, f"request body over {self.max_bytes} bytes")
            return await self.app(scope, receive, send)
        if "chunked" not in headers.get("transfer-encoding", ""):
            return await self.app(scope, receive, send)
        body, more = b"", True  # no length given: read it all here, counting
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _reply(send, 413, f"request body over {self.max_bytes} bytes")
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _reply(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
