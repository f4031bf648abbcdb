"""HTTP errors: one JSON shape, ``{"error": {"type", "message", "param"}}``, and never a stack trace.

Runtime exceptions (:mod:`runtime.errors`) map to their status; pydantic
validation errors to 400 listing every problem (``details``: field and what is
wrong with it, in plain words: no pydantic phrasing or class names), with the
first one's field as ``param``; aiohttp's own errors (404 route, 405 with its
``Allow`` header, 413 body too large) keep their status with our shape.
Anything else is logged with a traceback and answered as a bare 500.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runtime.errors import InvalidRequest, UnsupportedMediaType, VivavoceError

log = logging.getLogger("vivavoce.api")

_HTTP_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    502: "upstream_failed",
}


def error_response(
    status: int,
    type: str,
    message: str,
    param: str | None = None,
    *,
    details: list[dict[str, str | None]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"type": type, "message": message, "param": param}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


# "Says something": at least one character outside JSON Schema's (ECMA-262's) \s, spelled out, since Python's,
# Rust's (pydantic-core's) and ECMA's \s disagree on a few characters (U+0085 is a space only to the first two).
SPACES = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"  # for [...] classes
NOT_BLANK = f"[^{SPACES}]"
EMAIL = f"^[^@{SPACES}]+@[^@{SPACES}]+$"
# An http(s) URL a browser can follow: a host name (letters, digits, dots, hyphens), an optional port that
# exists (0-65535), then a path, query or fragment without spaces or control characters. No credentials and no
# IP-literal brackets: a redirect to a panel or survey platform needs neither, and a pattern-valid URL must be one
# that every URL parser accepts ("https://[" is not).
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEB_URL = rf"^https?://[A-Za-z0-9_.-]+(:{_PORT})?([/?#][^{SPACES}\x00-\x1f\x7f]*)?$"
_PATTERN_WORDS = {
    NOT_BLANK: "must not be blank",
    EMAIL: "must be an email address (name@host)",
    WEB_URL: "must be an http:// or https:// URL with a host name (no spaces or credentials)",
}


def _plain(problem: Any) -> str:
    """What is wrong with one field, said plainly (pydantic's own messages name its classes and modes)."""
    kind, ctx = problem["type"], problem.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_WORDS:
        return _PATTERN_WORDS[ctx["pattern"]]
    if kind in _PLAIN:
        return _PLAIN[kind].format(**ctx)
    text = re.sub(r" or instance of \w+", "", str(problem["msg"]))
    text = re.sub(r"^(Value|Assertion) error, ", "", text)
    return re.sub(r"^Input should be", "must be", text)


_PLAIN = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "string_pattern_mismatch": "must match the pattern {pattern}",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "greater_than": "must be greater than {gt}",
    "less_than": "must be less than {lt}",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "enum": "must be one of {expected}",
    "literal_error": "must be {expected}",
    "url_parsing": "must be a URL",
    "url_scheme": "must be a URL with scheme {expected_schemes}",
    "datetime_parsing": "must be a date and time (ISO 8601)",
    "datetime_from_date_parsing": "must be a date and time (ISO 8601)",
    "timezone_aware": "must include a time zone (for example Z or +02:00)",
}


def validation_error(exc: ValidationError, *, prefix: str = "") -> InvalidRequest:
    """A 400 listing every problem: ``param`` is the first one's field, ``details`` has them all."""
    details: list[dict[str, str | None]] = []
    for problem in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in problem["loc"] if part != "[key]")
        param = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or None)
        entry = {"param": param, "message": _plain(problem)}
        if entry not in details:
            details.append(entry)
    said = [f"{d['param']}: {d['message']}" if d["param"] else str(d["message"]) for d in details]
    message = said[0] if len(said) == 1 else f"{len(said)} problems: " + "; ".join(said)
    return InvalidRequest(message, param=details[0]["param"], details=details)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except VivavoceError as exc:
        return error_response(exc.status, exc.type, exc.message, exc.param, details=exc.details)
    except ValidationError as exc:
        err = validation_error(exc)
        return error_response(400, err.type, err.message, err.param, details=err.details)
    except web.HTTPMethodNotAllowed as exc:  # RFC 9110: a 405 names the methods the resource has
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here; allowed: {allowed}",
            headers={"Allow": allowed},
        )
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


# Types a JSON body arrives under from clients that forgot to say so: curl's -d sends a form type, and
# fetch() with a string body sends text/plain. The body is read as JSON all the same.
LENIENT_TYPES = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})


def is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


UNSTORABLE = "text must not contain NUL (U+0000) or unpaired surrogates (\\ud800-\\udfff): no database stores them"


def unstorable_text(document: Any) -> str | None:
    """Where in a parsed JSON document (a JSON pointer) a string no store can keep: NUL, which PostgreSQL refuses in
    text, or a lone surrogate, which is not Unicode and cannot be encoded as UTF-8; None if there is none.

    Checked at every edge (bodies, chat frames, MCP calls, query strings) so that text a participant or a
    researcher sends is refused with a reason rather than failing the write that would store it.
    """
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        pointer, value = stack.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                return pointer or "/"
        elif isinstance(value, dict):
            for key, item in value.items():
                if _UNSTORABLE.search(key):
                    return f"{pointer}/{key!r}"
                stack.append((f"{pointer}/{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{pointer}/{i}", item) for i, item in enumerate(value))
    return None


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 400 (415 for a type that cannot carry JSON) that says what is wrong."""
    ctype = request.content_type
    raw = await request.read()
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    if not is_json_type(ctype) and ctype not in LENIENT_TYPES:
        raise UnsupportedMediaType(f"expected a JSON body (Content-Type: application/json), got {ctype!r}")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = "" if is_json_type(ctype) else f" (it was sent as {ctype or 'no content type'}; send JSON)"
        raise InvalidRequest(f"request body is not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    where = unstorable_text(document)
    if where is not None:
        raise InvalidRequest(f"{where}: {UNSTORABLE}", param=where.lstrip("/").split("/")[0] or None)
    return document
