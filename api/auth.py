"""API-key authentication for ``/v1`` and ``/mcp``: ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.

Every ``/v1`` handler runs with ``request[ORG_ID]`` set; storage queries are
scoped by it, so another organization's object is indistinguishable from a
missing one (404).

The researcher console (:mod:`api.console`) signs in by storing the key in an
HttpOnly, SameSite=Strict cookie, and its pages call the same ``/v1`` API with
that cookie. A key in a header always wins over the cookie. Because browsers
attach cookies on their own, a cookie-authenticated request with a method that
changes state must also carry the ``X-Requested-With`` header: a page on another
site can only add a custom header through a CORS preflight, which this server
never grants, so a forged form or ``fetch`` is refused with 403.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.errors import error_response
from api.state import KEY_ID, ORG_ID, STATE

CONSOLE_COOKIE = "vivavoce_console"
CSRF_HEADER = "X-Requested-With"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


def cookie_key(request: web.Request) -> str | None:
    """The key the console stored in its sign-in cookie, if any."""
    return request.cookies.get(CONSOLE_COOKIE, "").strip() or None


MCP_PATH = "/mcp"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vivavoce"'}
MCP_UNAUTHORIZED = -32001  # JSON-RPC's range for server-defined errors


def _unauthorized(message: str, *, mcp: bool) -> web.Response:
    """401; to an MCP client as a JSON-RPC error (its SDK shows that message), to others in the API's shape."""
    if mcp:
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": MCP_UNAUTHORIZED, "message": message}}
        return web.json_response(body, status=401, headers=_CHALLENGE)
    return error_response(401, "unauthorized", message, headers=_CHALLENGE)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    mcp = request.path == MCP_PATH
    if not request.path.startswith("/v1/") and not mcp:
        return await handler(request)  # type: ignore[no-any-return]
    key = presented_key(request)
    from_cookie = False
    if key is None and not mcp:  # MCP clients are programs: a key in a header, never the console's cookie
        key = cookie_key(request)
        from_cookie = key is not None
    if key is None:
        return _unauthorized("missing API key: send 'Authorization: Bearer <key>'", mcp=mcp)
    found = await request.app[STATE].store.catalog.key_for(key)
    if found is None:
        return _unauthorized("unknown API key", mcp=mcp)
    org_id, key_id = found
    if from_cookie and request.method not in SAFE_METHODS and not request.headers.get(CSRF_HEADER, "").strip():
        return error_response(
            403, "forbidden", f"requests authenticated by the console cookie must send the {CSRF_HEADER} header"
        )
    request[ORG_ID] = org_id
    request[KEY_ID] = key_id
    return await handler(request)  # type: ignore[no-any-return]
