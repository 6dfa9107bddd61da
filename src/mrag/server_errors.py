"""The HTTP server's errors as JSON responses: a request's mistake a 400 (422: FastAPI's), the index's or the
LLM server's state a 503 (507: a full disk; 502: the LLM server failed), anything else a 500 logged."""

from __future__ import annotations

import errno
import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mrag.errors import OBJECT_STORE_TROUBLE, STORAGE_ERRNOS, Busy, MadeAgain, Unwritable, lance_message, no_space
from mrag.locking import LockTimeout

log = logging.getLogger("mrag.server")  # the server's own logger


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)  # FastAPI's own 422, with text JSON can hold
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(ValueError)
    async def bad_input(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=400)

    @app.exception_handler(Busy)  # other writers, each time this search looked: a moment later it goes through
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(LockTimeout)  # another writer (a long `mrag index`) holds the index
    async def locked(request: Request, exc: LockTimeout) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(MadeAgain)  # another process made the index again with another model: restart
    @app.exception_handler(Unwritable)  # permissions, a read-only file system: the server's state, not the request
    async def unwritable(request: Request, exc: Unwritable) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=503)

    @app.exception_handler(ConnectionError)  # the LLM server: unreachable, or failing (`UpstreamError`)
    async def unreachable(request: Request, exc: ConnectionError) -> JSONResponse:
        if getattr(exc, "status", None) in (429, 503):  # the LLM server is busy or rate-limits: try again later
            wait = getattr(exc, "retry_after", None) or "5"
            return JSONResponse({"detail": for_client(exc)}, status_code=503, headers={"Retry-After": wait})
        return JSONResponse({"detail": for_client(exc)}, status_code=502)

    @app.exception_handler(RuntimeError)  # Lance's and faiss's storage errors
    @app.exception_handler(OSError)
    async def storage(request: Request, exc: Exception) -> JSONResponse:
        first, code = str(exc).splitlines()[0] if str(exc) else "", getattr(exc, "errno", None)
        full = no_space(first) or code in (errno.ENOSPC, errno.EDQUOT)  # 507: a full disk; else 503
        gone = "Not found" in first  # Lance's: a file of the index missing (its folder removed, to be made again?)
        gone = gone or re.search(OBJECT_STORE_TROUBLE, first, re.IGNORECASE) is not None  # the object store failed
        if not (full or gone or code in STORAGE_ERRNOS):
            return await failed(request, exc)
        log.warning("%s %s: %s", request.method, request.url.path, first, exc_info=exc)  # told as the CLI tells it
        return JSONResponse({"detail": lance_message(first)}, status_code=507 if full else 503)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:  # JSON, as every other error
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the server failed ({type(exc).__name__}); see its log"}, status_code=500)


def json_safe(value: Any) -> Any:
    """What a request's 422 echoes, as JSON can hold it: lone surrogates (its "\\ud800") as U+FFFD (the
    response is UTF-8), and NaN or an infinity (its NaN literal, which Python's JSON reads) as their text."""
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"  # as the request wrote it
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def for_client(error: Exception) -> str:
    """An error's one line for an HTTP client; an LLM server's failure told briefly, its answer logged."""
    brief = getattr(error, "brief", None)
    if brief is None:
        return one_line(error)
    log.warning("%s", error)
    return str(brief)
