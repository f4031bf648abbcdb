"""HTTP errors: one JSON shape, ``{"error": {"type", "message", "param"}}``, and never a stack trace.

Runtime exceptions (:mod:`runtime.errors`) map to their status; pydantic
validation errors to 400 naming the first offending field; aiohttp's own
errors (404 route, 405, 413 body too large) keep their status with our shape.
Anything else is logged with a traceback and answered as a bare 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runtime.errors import InvalidRequest, VivavoceError

log = logging.getLogger("vivavoce.api")

_HTTP_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, type: str, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"type": type, "message": message, "param": param}}
    return web.json_response(body, status=status)


def validation_error(exc: ValidationError, *, prefix: str = "") -> InvalidRequest:
    first: Any = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in first["loc"])
    param = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or None)
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except VivavoceError as exc:
        return error_response(exc.status, exc.type, exc.message, exc.param)
    except ValidationError as exc:
        err = validation_error(exc)
        return error_response(400, err.type, err.message, err.param)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type != "text/plain":
            raise
        reason = exc.text or exc.reason
        if exc.status == 413:
            reason = "request body is too large"
        return error_response(exc.status, _HTTP_TYPES.get(exc.status, "http_error"), reason or exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 400 that says what is wrong with it."""
    if request.content_type not in ("application/json", "") and not request.content_type.endswith("+json"):
        raise InvalidRequest(f"expected a JSON body, got content type {request.content_type!r}")
    raw = await request.read()
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
