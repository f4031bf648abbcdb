"""Reading what a request carries: JSON bodies into models, and query strings into checked values.

Unknown query parameters are a 400 rather than ignored, so that a typo such as
``?stauts=completed`` cannot silently return the unfiltered list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from api.errors import UNSTORABLE, read_json, unstorable_text, validation_error
from runtime.errors import InvalidRequest, NotFound
from runtime.ids import is_id

M = TypeVar("M", bound=BaseModel)

MAX_LIMIT = 100
DEFAULT_LIMIT = 10


async def parse_body(request: web.Request, model: type[M]) -> M:
    data = await read_json(request)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def check_query(request: web.Request, allowed: Iterable[str], *, prefixes: Iterable[str] = ()) -> None:
    allowed = set(allowed)
    prefixes = tuple(prefixes)
    for name in request.query:
        if name not in allowed and not name.startswith(prefixes):
            raise InvalidRequest(f"unknown query parameter {name!r}", param=name)


def single(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidRequest(f"{name} given more than once", param=name)
    if values and unstorable_text(values[0]) is not None:
        raise InvalidRequest(f"{name}: {UNSTORABLE}", param=name)
    return values[0] if values else None


def flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter: ``true`` or ``false`` (default false)."""
    value = single(request, name)
    if value is None:
        return False
    if value not in ("true", "false"):  # an empty value too: "?recordings=" says nothing either way
        raise InvalidRequest(f"{name} must be true or false", param=name)
    return value == "true"


def page(request: web.Request, kind: str) -> tuple[int, str | None]:
    """``limit`` (1..100, default 10) and the ``starting_after`` cursor (an id of ``kind``)."""
    return parse_limit(single(request, "limit")), parse_cursor(single(request, "starting_after"), kind)


def parse_limit(raw: object) -> int:
    """A page size, from a query string or a JSON value (MCP): 1..100, default 10."""
    if raw is None:
        return DEFAULT_LIMIT
    if isinstance(raw, str):
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
    elif isinstance(raw, int) and not isinstance(raw, bool):
        limit = raw
    else:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest("limit must be an integer between 1 and 100", param="limit")
    return limit


def parse_cursor(raw: object, kind: str) -> str | None:
    if raw is not None and not (isinstance(raw, str) and is_id(raw, kind)):
        raise InvalidRequest(f"starting_after must be a {kind} id", param="starting_after")
    return raw


def path_id(request: web.Request, kind: str, name: str = "id") -> str:
    """A path id; a malformed one cannot exist, so it is a 404 like any missing object."""
    value = request.match_info[name]
    if not is_id(value, kind):
        raise NotFound(f"No {kind} {value[:80]!r}", param=name)
    return value
