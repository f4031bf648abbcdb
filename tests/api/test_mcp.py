"""The MCP server at /mcp, driven by the official MCP Python SDK's client over HTTP (a client we did not write)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.api.test_chat import complete_interview
from tests.conftest import BLUEPRINT, Server, eventually

TOOL_NAMES = {
    "create_channel",
    "create_interview_run",
    "get_interview_run",
    "list_interview_runs",
    "cancel_interview_run",
    "create_blueprint",
    "publish_blueprint",
    "get_interview_summary",
}


@asynccontextmanager
async def mcp_client(server: Server, key: str | None = None) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key or server.api_key}"})
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must succeed: its structured output (the client checked it against the output schema)."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool call that must fail as a tool error: the REST error body it carries."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    return dict(json.loads(result.content[0].text))  # type: ignore[union-attr]


async def test_the_tools_are_listed_named_and_shaped_as_documented(server: Server) -> None:
    async with mcp_client(server) as client:
        assert client.server_info is not None and client.server_info.name == "vivavoce"
        assert client.protocol_version == "2025-11-25"  # the initialize handshake: this server speaks no newer one
        assert client.instructions and "blueprint" in client.instructions
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    channel = tools["create_channel"].input_schema
    assert set(channel["properties"]) == {"type", "name", "settings", "metadata"} and channel["required"] == [
        "type",
        "name",
    ]
    settings = channel["$defs"]["ChannelSettingsArgs"]["properties"]
    assert set(settings) == {"recording", "max_duration_s", "idle_timeout_s"}
    run = tools["create_interview_run"].input_schema
    assert set(run["properties"]) == {"blueprint_id", "channel_id", "connector_id", "participant", "metadata"}
    assert set(run["$defs"]["ParticipantIn"]["properties"]) == {"external_id", "name", "email", "phone", "metadata"}
    assert set(tools["get_interview_run"].input_schema["properties"]) == {"run_id", "expand"}
    listing = tools["list_interview_runs"].input_schema["properties"]
    assert set(listing) == {"limit", "starting_after", "blueprint_id"}
    assert (listing["limit"]["minimum"], listing["limit"]["maximum"]) == (1, 100)
    assert set(tools["cancel_interview_run"].input_schema["properties"]) == {"run_id"}
    assert tools["get_interview_run"].annotations is not None and tools["get_interview_run"].annotations.read_only_hint
    assert all(t.output_schema and t.output_schema["type"] == "object" for t in tools.values())


async def test_an_assistant_sets_up_a_study_and_reads_its_interview(server: Server) -> None:
    """create_blueprint, publish, create_channel, create_interview_run; a participant answers; then the results."""
    async with mcp_client(server) as client:
        bp = await call(client, "create_blueprint", **BLUEPRINT)
        assert bp["status"] == "draft"
        published = await call(client, "publish_blueprint", blueprint_id=bp["id"])
        assert published["status"] == "published" and published["published_version"] == 1
        channel = await call(
            client, "create_channel", type="chat", name="via MCP", settings={"idle_timeout_s": 300}, metadata={"a": "b"}
        )
        assert channel["settings"]["idle_timeout_s"] == 300 and channel["metadata"] == {"a": "b"}
        run = await call(
            client,
            "create_interview_run",
            blueprint_id=bp["id"],
            channel_id=channel["id"],
            participant={"external_id": "P-1", "name": "Ada", "email": "ada@example.org", "metadata": {"cohort": "3"}},
            metadata={"wave": "1"},
        )
        assert run["status"] == "pending" and run["join_url"].startswith(server.url + "/join/")
        assert run["participant"]["external_id"] == "P-1" and run["metadata"] == {"wave": "1"}

        said = await complete_interview(server, run)  # a participant on the chat websocket

        got = await call(client, "get_interview_run", run_id=run["id"], expand=["transcript", "responses"])
        assert got["status"] == "completed" and got["end_reason"] == "completed"
        assert [m["content"] for m in got["transcript"] if m["role"] == "user"] == said
        page = await call(client, "list_interview_runs", limit=1, blueprint_id=bp["id"])
        assert [r["id"] for r in page["data"]] == [run["id"]] and page["has_more"] is False

        async def analysed() -> dict[str, Any] | None:
            summary = await call(client, "get_interview_summary", run_id=run["id"])
            return summary if summary["result"]["status"] == "ready" else None

        summary = await eventually(analysed, timeout=20)
    assert summary["status"] == "completed"
    assert [r["question_id"] for r in summary["responses"]] == ["q1", "q2", "q3"]
    assert summary["responses"][1]["answer"] == said[2]
    assert summary["result"]["summary"] is not None


async def test_pages_of_runs_through_the_cursor(server: Server) -> None:
    ids = [(await server.create_run())["id"] for _ in range(3)]
    async with mcp_client(server) as client:
        first = await call(client, "list_interview_runs", limit=2)
        second = await call(client, "list_interview_runs", limit=2, starting_after=first["data"][-1]["id"])
    seen = [r["id"] for r in first["data"] + second["data"]]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen)) and first["has_more"] is True


async def test_errors_keep_the_rest_meanings_and_messages(server: Server) -> None:
    bp = await server.create_blueprint()
    draft = await server.create_blueprint(publish=False)
    ended = await server.create_run(blueprint_id=bp)
    assert (await server.request("POST", f"/v1/runs/{ended['id']}/cancel"))[0] == 200
    run = await server.create_run(blueprint_id=bp)
    chn = server.chat_channel_id
    cases: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
        # tool, arguments, the same request over REST (method, path, body)
        ("create_interview_run", {"blueprint_id": bp, "channel_id": chn, "connector_id": "con_x"},
         "POST", "/v1/runs", {"json": {"blueprint_id": bp, "channel_id": chn, "connector_id": "con_x"}}),
        ("create_interview_run", {"blueprint_id": draft, "channel_id": chn},
         "POST", "/v1/runs", {"json": {"blueprint_id": draft, "channel_id": chn}}),
        ("create_interview_run", {"blueprint_id": bp, "channel_id": chn, "participant": {"email": "nope"}},
         "POST", "/v1/runs", {"json": {"blueprint_id": bp, "channel_id": chn, "participant": {"email": "nope"}}}),
        ("get_interview_run", {"run_id": run["id"], "expand": ["everything"]},
         "GET", f"/v1/runs/{run['id']}?expand=everything", {}),
        ("list_interview_runs", {"limit": 0}, "GET", "/v1/runs?limit=0", {}),
        ("list_interview_runs", {"limit": 101}, "GET", "/v1/runs?limit=101", {}),
        ("list_interview_runs", {"limit": "ten"}, "GET", "/v1/runs?limit=ten", {}),
        ("list_interview_runs", {"starting_after": "run_123"}, "GET", "/v1/runs?starting_after=run_123", {}),
        ("list_interview_runs", {"starting_after": bp}, "GET", f"/v1/runs?starting_after={bp}", {}),
        ("cancel_interview_run", {"run_id": ended["id"]}, "POST", f"/v1/runs/{ended['id']}/cancel", {}),
        ("create_blueprint", {**BLUEPRINT, "questions": []}, "POST", "/v1/blueprints",
         {"json": {**BLUEPRINT, "questions": []}}),
        ("create_channel", {"type": "fax", "name": "n"}, "POST", "/v1/channels",
         {"json": {"type": "fax", "name": "n"}}),
        ("create_interview_run", {"blueprint_id": bp, "channel_id": chn, "metadata": {"k": "a\u0000b"}},
         "POST", "/v1/runs", {"json": {"blueprint_id": bp, "channel_id": chn, "metadata": {"k": "a\u0000b"}}}),
    ]  # fmt: skip
    async with mcp_client(server) as client:
        for tool, arguments, method, path, kwargs in cases:
            via_mcp = await refused(client, tool, **arguments)
            status, via_rest = await server.request(method, path, **kwargs)
            assert status in (400, 404, 409), via_rest
            assert via_mcp == via_rest, (tool, arguments)
        # ids in arguments: unknown and malformed ones are not found, as in a path
        for tool in ("get_interview_run", "cancel_interview_run", "get_interview_summary"):
            for run_id in ("run_01m8ssnmzs0001fehhw3q0gzkx", "nope"):
                error = (await refused(client, tool, run_id=run_id))["error"]
                assert error["type"] == "not_found" and error["param"] == "run_id"
                assert error["message"] == f"No run {run_id!r}"
        error = (await refused(client, "publish_blueprint", blueprint_id="bp_nope"))["error"]
        assert error["type"] == "not_found" and error["param"] == "blueprint_id"
        extra = (await refused(client, "cancel_interview_run", run_id=run["id"], force=True))["error"]
        assert extra["param"] == "force" and extra["message"] == "force: unknown field"
    assert (await server.get_run(run["id"]))["status"] == "pending"  # a refused call changed nothing


async def test_an_organization_sees_only_its_own_runs(server: Server) -> None:
    run = await server.create_run()
    catalog = server.state.store.catalog
    other_key = await catalog.create_api_key(await catalog.create_organization("other"))
    async with mcp_client(server, key=other_key) as client:
        error = (await refused(client, "get_interview_run", run_id=run["id"]))["error"]
        assert error["type"] == "not_found"
        assert (await call(client, "list_interview_runs"))["data"] == []
        assert (await refused(client, "cancel_interview_run", run_id=run["id"]))["error"]["type"] == "not_found"
    assert (await server.get_run(run["id"]))["status"] == "pending"


async def test_the_sdk_client_cannot_connect_without_a_valid_key(server: Server) -> None:
    with pytest.raises(Exception) as failed:  # the SDK's task groups wrap its MCPError
        async with mcp_client(server, key="vv_wrong") as client:
            await client.list_tools()
    assert "MCPError(-32001, 'unknown API key'" in repr(failed.value)


# --- the transport, at the HTTP level -------------------------------------------------------------------------


async def post(server: Server, body: Any, *, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    sent = {**server.auth, "Accept": "application/json, text/event-stream", **(headers or {})}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    sent.setdefault("Content-Type", "application/json")
    async with server.http.post(f"{server.url}/mcp", data=data, headers=sent) as resp:
        text = await resp.text()
        return resp.status, resp.headers, json.loads(text) if text else None


CLIENT = {"name": "t", "version": "1"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": CLIENT}}  # fmt: skip


async def test_initialize_agrees_on_a_version_and_notifications_are_accepted(server: Server) -> None:
    status, _, body = await post(server, INIT)
    assert status == 200 and body["id"] == 1 and body["result"]["protocolVersion"] == "2025-06-18"
    assert body["result"]["capabilities"] == {"tools": {"listChanged": False}}
    unknown = {**INIT, "params": {**INIT["params"], "protocolVersion": "1999-01-01"}}
    assert (await post(server, unknown))[2]["result"]["protocolVersion"] == "2025-11-25"  # our newest, offered
    status, _, body = await post(server, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert status == 202 and body is None
    status, _, body = await post(server, {"jsonrpc": "2.0", "id": "p", "method": "ping"})
    assert status == 200 and body == {"jsonrpc": "2.0", "id": "p", "result": {}}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ("{not json", {}, 400, -32700),
        ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], {}, 400, -32600),
        ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, {}, 400, -32600),
        ({"jsonrpc": "2.0", "id": True, "method": "ping"}, {}, 400, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}, {}, 200, -32601),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "rm_rf"}}, {}, 200, -32602),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"MCP-Protocol-Version": "2099-01-01"}, 400, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"Accept": "text/html"}, 406, -32600),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"Content-Type": "text/plain"}, 415, -32600),
    ],
)
async def test_protocol_errors_use_json_rpc_codes(
    server: Server, body: Any, headers: dict[str, str], status: int, code: int
) -> None:
    got, _, answer = await post(server, body, headers=headers)
    assert got == status and answer["jsonrpc"] == "2.0" and answer["error"]["code"] == code, answer


async def test_a_foreign_origin_is_refused_and_get_opens_no_stream(server: Server) -> None:
    status, _, _ = await post(server, INIT, headers={"Origin": "http://evil.example"})
    assert status == 403
    assert (await post(server, INIT, headers={"Origin": server.url}))[0] == 200
    for method in ("GET", "DELETE"):
        async with server.http.request(method, f"{server.url}/mcp", headers=server.auth) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"


async def test_mcp_needs_a_key_in_a_header_never_the_console_cookie(server: Server) -> None:
    cookie = {"Cookie": f"vivavoce_console={server.api_key}", "X-Requested-With": "x"}
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer vv_wrong"}, cookie):
            async with http.post(f"{server.url}/mcp", json=INIT, headers=headers) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await resp.json())["error"]["code"] == -32001
