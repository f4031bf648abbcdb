"""API-key authentication for ``/v1``: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.

Every ``/v1`` handler runs with ``request[ORG_ID]`` set; storage queries are
scoped by it, so another organization's object is indistinguishable from a
missing one (404).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.errors import error_response
from api.state import ORG_ID, STATE


def presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)  # type: ignore[no-any-return]
    key = presented_key(request)
    if key is None:
        return error_response(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    org_id = await request.app[STATE].store.catalog.org_for_key(key)
    if org_id is None:
        return error_response(401, "unauthorized", "unknown API key")
    request[ORG_ID] = org_id
    return await handler(request)  # type: ignore[no-any-return]
