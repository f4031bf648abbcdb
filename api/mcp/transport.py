"""Streamable HTTP for MCP, answered with JSON: one POSTed JSON-RPC message, one JSON answer.

What the specification asks of a server, as done here:

* ``POST /mcp`` carries one JSON-RPC message. A request is answered with
  ``application/json`` holding its response (the client must accept it); a
  notification or a response is answered ``202 Accepted`` with no body.
* ``GET /mcp`` is ``405`` (``Allow: POST``): this server opens no stream of its own
  (it sends no requests or notifications to clients). With no sessions, ``DELETE``
  is ``405`` too.
* The ``MCP-Protocol-Version`` header, when sent, must name a version this server
  speaks (``400`` otherwise); ``initialize`` agrees on one.
* A browser's ``Origin`` must be this server's, against DNS rebinding (``403``).

JSON-RPC errors use the standard codes: parse error, invalid request, method not
found, invalid params (an unknown tool). Failures of a tool itself are tool
results with ``isError`` (what a model can read and correct), not protocol errors.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, Field, RootModel, WithJsonSchema

from api.mcp.tools import TOOLS, ToolError, call_tool
from api.openapi import RouteTable
from api.routes_meta import VERSION
from api.state import ORG_ID

log = logging.getLogger("vivavoce.mcp")

routes = RouteTable()

PATH = "/mcp"
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")  # newest first; the first is offered
ASSUMED_VERSION = "2025-03-26"  # a client that sends no version header (the specification's rule)
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
INSTRUCTIONS = (
    "vivavoce runs AI-moderated interviews. Create a blueprint (the interview guide) and publish it, create a "
    "channel (chat or webrtc_voice), then create an interview run per participant and send them its join_url. "
    "Follow a run with get_interview_run and read what it yielded with get_interview_summary."
)


def _error(code: int, message: str, id: Any = None, *, status: int = 200) -> web.Response:
    body = {"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}
    return web.json_response(body, status=status)


def _result(id: Any, result: dict[str, Any]) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": id, "result": result})


def _origin_ok(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def _accepts_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    if not accept:
        return True
    kinds = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*"})


_MESSAGE_SCHEMA = {
    "description": "One JSON-RPC 2.0 message: a request (with an id), a notification (without), or a response",
    "anyOf": [
        {
            "type": "object",
            "required": ["jsonrpc", "method"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"type": ["string", "integer"]},
                "method": {"type": "string", "description": "initialize, ping, tools/list, tools/call, ..."},
                "params": {"type": "object"},
            },
        },
        {
            "type": "object",
            "required": ["jsonrpc", "id"],
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {"type": ["string", "integer", "null"]},
                "error": {"type": "object"},
            },
            "anyOf": [{"required": ["result"]}, {"required": ["error"]}],
        },
    ],
}


class JsonRpcMessage(RootModel[Annotated[dict[str, Any], WithJsonSchema(_MESSAGE_SCHEMA)]]):
    """What a POST to /mcp carries (read by hand below; this model only describes it)."""


class JsonRpcAnswer(BaseModel):
    jsonrpc: Literal["2.0"]
    id: str | int | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = Field(None, description="{code, message}: the JSON-RPC error codes")


@routes.route("POST", PATH, summary="MCP (Streamable HTTP, JSON-RPC 2.0): initialize, ping, tools/list, tools/call",
              tag="mcp", body=JsonRpcMessage, response=JsonRpcAnswer, also=(202,), errors=(403, 406, 415),
              error_model=JsonRpcAnswer)  # fmt: skip
async def mcp_post(request: web.Request) -> web.StreamResponse:
    if not _origin_ok(request):
        return _error(INVALID_REQUEST, "Forbidden: this Origin may not use this server's MCP endpoint", status=403)
    if not _accepts_json(request):
        return _error(INVALID_REQUEST, "Not Acceptable: the client must accept application/json", status=406)
    if request.content_type != "application/json":
        return _error(INVALID_REQUEST, "Content-Type must be application/json", status=415)
    version = request.headers.get("MCP-Protocol-Version")
    if version is not None and version not in PROTOCOL_VERSIONS:
        supported = ", ".join(PROTOCOL_VERSIONS)
        return _error(INVALID_REQUEST, f"Unsupported MCP-Protocol-Version {version[:40]!r}; supported: {supported}",
                      status=400)  # fmt: skip
    try:
        message = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return _error(PARSE_ERROR, f"Parse error: {exc}", status=400)
    if isinstance(message, list):
        return _error(INVALID_REQUEST, "JSON-RPC batches are not supported: send one message per request", status=400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _error(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object", status=400)
    if "method" not in message:
        return _response_accepted(message)
    method = message["method"]
    if not isinstance(method, str):
        return _error(INVALID_REQUEST, "Invalid Request: method must be a string", status=400)
    params = message.get("params", {})
    if not isinstance(params, dict):
        return _error(INVALID_REQUEST, "Invalid Request: params must be an object", status=400)
    if "id" not in message:
        return web.Response(status=202)  # a notification (initialized, cancelled, ...): accepted, no answer
    request_id = message["id"]
    if not _valid_id(request_id, null=False):
        return _error(INVALID_REQUEST, "Invalid Request: id must be a string or an integer", status=400)
    return await _dispatch(request, request_id, method, params)


def _valid_id(value: Any, *, null: bool) -> bool:
    if value is None:
        return null
    if isinstance(value, bool):
        return False
    return isinstance(value, str | int) or (isinstance(value, float) and value.is_integer())


def _response_accepted(message: dict[str, Any]) -> web.Response:
    """A client's response to a request of ours (we send none): well formed, it is accepted and dropped."""
    if "id" not in message or not _valid_id(message["id"], null=True):
        return _error(INVALID_REQUEST, "Invalid Request: no method, and not a response (id, result or error)",
                      status=400)  # fmt: skip
    if "result" not in message and not isinstance(message.get("error"), dict):
        return _error(INVALID_REQUEST, "Invalid Request: a response has a result or an error object", status=400)
    return web.Response(status=202)


async def _dispatch(request: web.Request, request_id: Any, method: str, params: dict[str, Any]) -> web.Response:
    if method == "initialize":
        wanted = params.get("protocolVersion")
        agreed = wanted if wanted in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        return _result(
            request_id,
            {
                "protocolVersion": agreed,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "vivavoce", "title": "vivavoce interviews", "version": VERSION},
                "instructions": INSTRUCTIONS,
            },
        )
    if method == "ping":
        return _result(request_id, {})
    if method == "tools/list":
        return _result(request_id, {"tools": [tool.description() for tool in TOOLS.values()]})
    if method == "tools/call":
        name = params.get("name")
        if not isinstance(name, str) or name not in TOOLS:
            return _error(INVALID_PARAMS, f"Unknown tool: {str(name)[:80]!r}", request_id)
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            return _error(INVALID_PARAMS, "arguments must be an object", request_id)
        try:
            output = await call_tool(request, request[ORG_ID], TOOLS[name], arguments)
        except ToolError as exc:
            return _result(request_id, {"content": [{"type": "text", "text": exc.text}], "isError": True})
        text = json.dumps(output, separators=(",", ":"))
        return _result(request_id, {"content": [{"type": "text", "text": text}], "structuredContent": output})
    return _error(METHOD_NOT_FOUND, f"Method not found: {method[:80]}", request_id)
