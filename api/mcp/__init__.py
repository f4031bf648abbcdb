"""An MCP server at ``/mcp``: assistants create channels and runs, follow them and read their summaries.

The Model Context Protocol's Streamable HTTP transport (JSON-RPC 2.0 over POST),
implemented on the server's own aiohttp stack rather than by mounting the
official SDK's ASGI (Starlette) application: the SDK would need an ASGI bridge
inside aiohttp or a second listening server with its own auth, body limits and
error handling, and its sessions live in one process's memory. The transport is
small when every answer is a single JSON response (which the specification
allows): no server-initiated stream (``GET`` is 405), no session ids, so any
server of a cluster can take any request. ``initialize``, ``ping``, ``tools/list``
and ``tools/call`` are served; the tools (:mod:`api.mcp.tools`) call the same code
as the REST routes, authenticated with the same API keys, and their errors keep
the REST meanings and messages. The tests drive it with the official SDK's client.
"""

from api.mcp.transport import routes

__all__ = ["routes"]
