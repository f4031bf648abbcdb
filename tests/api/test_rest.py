"""The REST API under /v1: auth, the error shape, org isolation, versioning, pagination and the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from api.app import all_routes
from api.schemas import BlueprintOut, ChannelOut, ErrorOut, HealthOut, RunOut
from runtime.ids import new_id
from runtime.types import EndReason
from tests.conftest import BLUEPRINT, UNIT, Server

JSON_ACCEPT = {"Accept": "application/json"}


def assert_error(status: int, body: Any, want_status: int, want_type: str, param: str | None = "") -> None:
    """The one error shape, the expected status and type (and param, unless ``param`` is left out)."""
    assert status == want_status, body
    assert "Traceback" not in str(body)
    ErrorOut.model_validate(body)
    assert body["error"]["type"] == want_type and body["error"]["message"]
    if param != "":
        assert body["error"]["param"] == param, body


def bp_with(**changes: Any) -> dict[str, Any]:
    return {**BLUEPRINT, **changes}


def channel_body(**settings: int) -> dict[str, Any]:
    return {"json": {"type": "chat", "name": "n", "settings": settings}}


async def raw(server: Server, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A request with exactly these headers (no default Authorization)."""
    async with server.http.request(method, server.url + path, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def ids(server: Server) -> dict[str, str]:
    """Objects of the server's first organization: a published and a draft blueprint, a channel, a pending run."""
    bp = await server.create_blueprint()
    draft = await server.create_blueprint(publish=False)
    chn = await server.create_channel()
    run = await server.create_run(blueprint_id=bp, channel_id=chn)
    return {"bp": bp, "draft": draft, "chn": chn, "run": run["id"]}


async def listed(server: Server, path: str, key: str | None = None) -> list[str]:
    status, page = await server.request("GET", path, key=key)
    assert status == 200 and page["object"] == "list", page
    return [o["id"] for o in page["data"]]


async def second_org(server: Server) -> str:
    org2 = await server.state.store.catalog.create_organization("other")
    return await server.state.store.catalog.create_api_key(org2)


# --- auth -----------------------------------------------------------------------------------

V1_ROUTES = [(r.method, r.path.replace("{id}", "bp_x")) for r in all_routes().routes if r.path.startswith("/v1/")]


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer vv_wrong"}, {"x-api-key": "vv_wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "bearer", "x-api-key", "basic"],
)
async def test_every_v1_route_needs_a_known_key(server: Server, method: str, path: str, headers: dict) -> None:
    assert_error(*await raw(server, method, path, headers), 401, "unauthorized", None)


async def test_bearer_and_x_api_key_both_authenticate(server: Server) -> None:
    expected = await listed(server, "/v1/channels")
    assert server.chat_channel_id in expected
    for headers in ({"Authorization": f"Bearer {server.api_key}"}, {"x-api-key": server.api_key}):
        status, body = await raw(server, "GET", "/v1/channels", headers)
        assert status == 200 and [c["id"] for c in body["data"]] == expected


# --- errors ---------------------------------------------------------------------------------

RUN = {"blueprint_id": "{bp}", "channel_id": "{chn}"}
BAD_REQUESTS = [
    # validation of bodies
    ("POST", "/v1/blueprints", {"json": {k: v for k, v in BLUEPRINT.items() if k != "greeting"}}, "greeting"),
    ("POST", "/v1/blueprints", {"json": bp_with(name="x" * 201)}, "name"),
    ("POST", "/v1/blueprints", {"json": bp_with(questions=[{"id": "q1", "text": "t" * 2001}])}, "questions.0.text"),
    ("POST", "/v1/blueprints", {"json": bp_with(colour="red")}, "colour"),
    (
        "POST",
        "/v1/blueprints",
        {"json": bp_with(questions=[{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])},
        "questions",
    ),
    ("PATCH", "/v1/blueprints/{bp}", {"json": bp_with(questions=[])}, "questions"),
    ("PATCH", "/v1/blueprints/{bp}", {"json": bp_with(extra=1)}, "extra"),
    ("POST", "/v1/channels", {"json": {"type": "fax", "name": "n"}}, "type"),
    ("POST", "/v1/channels", {"json": {"type": "chat"}}, "name"),
    ("POST", "/v1/channels", {"json": {"type": "chat", "name": "n", "colour": 1}}, "colour"),
    ("POST", "/v1/channels", channel_body(idle_timeout_s=4), "settings.idle_timeout_s"),
    ("POST", "/v1/channels", channel_body(idle_timeout_s=3601), "settings.idle_timeout_s"),
    ("POST", "/v1/channels", channel_body(max_duration_s=9), "settings.max_duration_s"),
    ("POST", "/v1/channels", channel_body(max_duration_s=43201), "settings.max_duration_s"),
    ("POST", "/v1/channels", channel_body(eos_silence_ms=199), "settings.eos_silence_ms"),
    ("POST", "/v1/channels", channel_body(filler_after_ms=10001), "settings.filler_after_ms"),
    ("POST", "/v1/runs", {"json": {**RUN, "participant": {"email": "nope"}}}, "participant.email"),
    ("POST", "/v1/runs", {"json": {**RUN, "colour": 1}}, "colour"),
    ("POST", "/v1/runs", {"json": {"channel_id": "{chn}"}}, "blueprint_id"),
    ("POST", "/v1/runs", {"json": {"blueprint_id": "{bp}"}}, None),
    ("POST", "/v1/runs", {"json": {**RUN, "connector_id": "con_x"}}, None),
    # bodies that are not JSON objects
    ("POST", "/v1/blueprints", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, None),
    ("POST", "/v1/channels", {"data": b"", "headers": {"Content-Type": "application/json"}}, None),
    ("POST", "/v1/runs", {"data": "name=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, None),
    ("POST", "/v1/blueprints", {"json": [BLUEPRINT]}, None),
    ("PATCH", "/v1/blueprints/{bp}", {"json": "a string"}, None),
    ("POST", "/v1/runs", {"json": None}, None),
    # query strings
    ("GET", "/v1/runs?status=PENDING", {}, "status"),
    ("GET", "/v1/runs?status=done", {}, "status"),
    ("GET", "/v1/runs/{run}?expand=everything", {}, "expand"),
    ("GET", "/v1/runs/{run}?expand=blueprint&expand=bogus", {}, "expand"),
    ("GET", "/v1/runs/{run}/transcript?format=pdf", {}, "format"),
    ("GET", "/v1/blueprints/{bp}?version=0", {}, "version"),
    ("GET", "/v1/blueprints/{bp}?version=v1", {}, "version"),
    ("GET", "/v1/runs/{run}/events?after_seq=-1", {"headers": JSON_ACCEPT}, "after_seq"),
    ("GET", "/v1/runs?stauts=completed", {}, "stauts"),
    ("GET", "/v1/runs/{run}?foo=1", {}, "foo"),
    ("POST", "/v1/runs/{run}/cancel?force=1", {}, "force"),
    ("GET", "/v1/runs?metadata[]=x", {}, "metadata[]"),
    *[
        ("GET", f"/v1/{kind}?limit={v}", {}, "limit")
        for kind in ("runs", "blueprints", "channels")
        for v in ("0", "101", "-1", "abc", "1.5", "")
    ],
    ("GET", "/v1/runs?limit=1&limit=2", {}, "limit"),
    ("GET", "/v1/runs?starting_after={bp}", {}, "starting_after"),
    ("GET", "/v1/runs?starting_after=run_123", {}, "starting_after"),
    ("GET", "/v1/blueprints?starting_after={run}", {}, "starting_after"),
    ("GET", "/v1/channels?starting_after={bp}", {}, "starting_after"),
]


def fill(value: Any, ids: dict[str, str]) -> Any:
    """Replace {bp}, {draft}, {chn} and {run} placeholders (in paths and bodies) with ids."""
    if isinstance(value, str):
        return re.sub(r"\{(bp|draft|chn|run)\}", lambda m: ids[m[1]], value)
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize(("method", "path", "kwargs", "param"), BAD_REQUESTS)
async def test_bad_requests_are_400_invalid_request(
    server: Server, ids: dict, method: str, path: str, kwargs: dict, param: str | None
) -> None:
    status, body = await server.request(method, fill(path, ids), **fill(kwargs, ids))
    assert_error(status, body, 400, "invalid_request", param)


HUGE = "99999999999999999999999"
NEVER_500 = [
    ("/v1/blueprints/{bp}?version=²", {}),
    (f"/v1/blueprints/{{bp}}?version={HUGE}", {}),
    ("/v1/runs/{run}/events?after_seq=²", {"headers": JSON_ACCEPT}),
    (f"/v1/runs/{{run}}/events?after_seq={HUGE}", {"headers": JSON_ACCEPT}),
    ("/v1/runs/{run}/events", {"headers": {**JSON_ACCEPT, "Last-Event-ID": "²"}}),
    ("/v1/blueprints", {"data": "[" * 100_000, "headers": {"Content-Type": "application/json"}}),
]


@pytest.mark.parametrize(("path", "kwargs"), NEVER_500)
async def test_odd_numbers_and_deep_json_are_client_errors_not_500(
    server: Server, ids: dict, path: str, kwargs: dict
) -> None:
    method = "POST" if "data" in kwargs else "GET"
    status, body = await server.request(method, fill(path, ids), **kwargs)
    # a version that cannot exist may be "invalid" (400) or "no such version" (404); never a 500
    allowed = {400: "invalid_request", 404: "not_found"} if "version" in path else {400: "invalid_request"}
    assert status in allowed, body
    assert_error(status, body, status, allowed[status])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/v1/blueprints/{bp}"),
        ("POST", "/v1/blueprints"),
        ("POST", "/v1/channels"),
        ("POST", "/v1/runs"),
        ("POST", "/v1/blueprints/{bp}/publish"),  # takes no body, still refuses a huge one before acting
    ],
)
async def test_bodies_over_256_kib_are_413(server: Server, ids: dict, method: str, path: str) -> None:
    body = bp_with(name="x" * (256 * 1024))
    assert_error(*await server.request(method, fill(path, ids), json=body), 413, "payload_too_large")


NOT_FOUND = """/v1/blueprints/bp_nope /v1/blueprints/{chn} /v1/blueprints/{run}/publish /v1/channels/chn_nope
    /v1/channels/{bp} /v1/runs/{bp} /v1/runs/x /v1/runs/{chn}/cancel /v1/runs/run_/transcript /v1/runs/{bp}/events
    /v1/nope /v1/runs/{run}/nope /v2/runs""".split()  # noqa: SIM905


@pytest.mark.parametrize("path", NOT_FOUND)
async def test_unknown_routes_and_malformed_ids_are_404(server: Server, ids: dict, path: str) -> None:
    method = "POST" if path.endswith(("publish", "cancel")) else "GET"
    status, body = await server.request(method, fill(path, ids), headers=JSON_ACCEPT)
    assert_error(status, body, 404, "not_found")


async def test_runs_refer_to_existing_published_blueprints_and_channels(server: Server, ids: dict) -> None:
    async def create(**body: Any) -> tuple[int, Any]:
        return await server.request(
            "POST", "/v1/runs", json={"blueprint_id": ids["bp"], "channel_id": ids["chn"], **body}
        )

    assert_error(*await create(blueprint_id=ids["draft"]), 409, "conflict", "blueprint_id")
    assert_error(*await create(blueprint_id=new_id("blueprint")), 404, "not_found", "blueprint_id")
    assert_error(*await create(blueprint_id="bp_malformed"), 404, "not_found", "blueprint_id")
    assert_error(*await create(channel_id=new_id("channel")), 404, "not_found", "channel_id")
    assert_error(*await create(channel_id=ids["bp"]), 404, "not_found", "channel_id")
    # publishing the draft makes it usable
    assert (await server.request("POST", f"/v1/blueprints/{ids['draft']}/publish"))[0] == 200
    status, run = await create(blueprint_id=ids["draft"])
    assert status == 201 and run["blueprint_version"] == 1


# --- runs -----------------------------------------------------------------------------------


async def test_create_and_cancel_a_run(server: Server, ids: dict) -> None:
    person = {"external_id": "p1", "name": "Ada", "email": "ada@example.org"}
    body = {"blueprint_id": ids["bp"], "channel_id": ids["chn"], "metadata": {"cohort": "a"}, "participant": person}
    status, run = await server.request("POST", "/v1/runs", json=body)
    assert status == 201 and RunOut.model_validate(run).status == "pending" and run["end_reason"] is None
    assert run["join_url"].startswith(server.url + "/join/") and run["participant"]["email"] == "ada@example.org"

    status, cancelled = await server.request("POST", f"/v1/runs/{run['id']}/cancel")
    assert status == 200 and RunOut.model_validate(cancelled).status == "cancelled"
    assert cancelled["end_reason"] == "cancelled"
    assert (await server.get_run(run["id"]))["status"] == "cancelled"
    assert_error(*await server.request("POST", f"/v1/runs/{run['id']}/cancel"), 409, "conflict")

    # the event stream of an ended run replays its events and closes
    async with server.http.get(f"{server.url}/v1/runs/{run['id']}/events", headers=server.auth) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        text = await resp.text()
    assert re.findall(r"^event: (.+)$", text, re.M) == ["run.created", "run.cancelled"]


@pytest.mark.parametrize("reason", [EndReason.COMPLETED, EndReason.JOIN_EXPIRED])
async def test_cancel_of_an_ended_run_is_409_and_changes_nothing(server: Server, ids: dict, reason: EndReason) -> None:
    await server.state.store.runs.end_run(ids["run"], reason)
    before = await server.get_run(ids["run"])
    assert_error(*await server.request("POST", f"/v1/runs/{ids['run']}/cancel"), 409, "conflict")
    after = await server.get_run(ids["run"])
    assert after["status"] == before["status"] == reason.run_status.value and after["end_reason"] == reason.value


async def test_expand_inlines_related_objects(server: Server, ids: dict) -> None:
    plain = await server.get_run(ids["run"])
    assert not {"blueprint", "channel", "sessions", "transcript"} & plain.keys()
    run = await server.get_run(
        ids["run"], "blueprint,channel", "connector", "sessions", "transcript", "responses", "analysis"
    )
    RunOut.model_validate(run)
    assert run["blueprint"]["id"] == ids["bp"] and run["channel"]["id"] == ids["chn"] and run["connector"] is None
    assert run["sessions"] == [] and run["transcript"] == [] and isinstance(run["analysis"], dict)
    assert isinstance(run["responses"], list)


# --- blueprints -----------------------------------------------------------------------------


async def test_blueprint_versions_and_the_version_runs_pin(server: Server) -> None:
    status, bp = await server.request("POST", "/v1/blueprints", json=BLUEPRINT)
    assert status == 201 and BlueprintOut.model_validate(bp).status == "draft"
    assert (bp["version"], bp["published_version"]) == (1, None)
    status, bp = await server.request("POST", f"/v1/blueprints/{bp['id']}/publish")
    assert (status, bp["version"], bp["status"], bp["published_version"]) == (200, 1, "published", 1)

    status, v2 = await server.request("PATCH", f"/v1/blueprints/{bp['id']}", json=bp_with(greeting="Hi v2"))
    assert (status, v2["version"], v2["status"], v2["published_version"]) == (200, 2, "draft", 1)
    status, v2 = await server.request("PATCH", f"/v1/blueprints/{bp['id']}", json=bp_with(greeting="Hi v2b"))
    assert (status, v2["version"], v2["greeting"]) == (200, 2, "Hi v2b")  # a draft is edited in place
    status, v1 = await server.request("GET", f"/v1/blueprints/{bp['id']}?version=1")
    assert (status, v1["version"], v1["status"], v1["greeting"]) == (200, 1, "published", BLUEPRINT["greeting"])
    assert (await server.request("GET", f"/v1/blueprints/{bp['id']}"))[1]["greeting"] == "Hi v2b"
    assert_error(*await server.request("GET", f"/v1/blueprints/{bp['id']}?version=3"), 404, "not_found")

    early = await server.create_run(blueprint_id=bp["id"])
    assert early["blueprint_version"] == 1
    assert (await server.get_run(early["id"], "blueprint"))["blueprint"]["greeting"] == BLUEPRINT["greeting"]

    status, bp = await server.request("POST", f"/v1/blueprints/{bp['id']}/publish")
    assert (status, bp["version"], bp["status"], bp["published_version"]) == (200, 2, "published", 2)
    late = await server.create_run(blueprint_id=bp["id"])
    assert late["blueprint_version"] == 2
    assert (await server.get_run(late["id"], "blueprint"))["blueprint"]["greeting"] == "Hi v2b"
    early = await server.get_run(early["id"], "blueprint")
    assert early["blueprint_version"] == 1 and early["blueprint"]["greeting"] == BLUEPRINT["greeting"]


async def test_channels_accept_settings_at_their_bounds(server: Server) -> None:
    low = {"idle_timeout_s": 5, "max_duration_s": 10, "eos_silence_ms": 200, "min_interruption_ms": 100}
    high = {"idle_timeout_s": 3600, "max_duration_s": 43200, "eos_silence_ms": 3000, "filler_after_ms": 10000}
    defaults = {"recording": False, "eos_silence_ms": 500, "min_interruption_ms": 400, "filler_after_ms": 1500,
                "phone_numbers": [], "inbound": "pin", "inbound_blueprint_id": None}  # fmt: skip
    for settings in (low, high):
        status, ch = await server.request(
            "POST", "/v1/channels", json={"type": "chat", "name": "n", "settings": settings, "metadata": {"a": "b"}}
        )
        assert status == 201 and ch["settings"] == {**defaults, **settings}
        ChannelOut.model_validate(ch)
        assert (await server.request("GET", f"/v1/channels/{ch['id']}"))[1] == ch


# --- lists ----------------------------------------------------------------------------------


async def test_run_pages_are_newest_first_and_visit_every_run_once(server: Server) -> None:
    before = await listed(server, "/v1/runs?limit=100")  # the demo run made at bootstrap
    created = [(await server.create_run())["id"] for _ in range(14 - len(before))]
    status, first = await server.request("GET", "/v1/runs")
    assert status == 200 and len(first["data"]) == 10 and first["has_more"] is True  # default limit
    seen, cursor, pages = [], "", 0
    while True:
        status, page = await server.request("GET", f"/v1/runs?limit=5{cursor}")
        assert status == 200 and page["object"] == "list" and len(page["data"]) <= 5
        seen += [r["id"] for r in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        cursor = f"&starting_after={page['data'][-1]['id']}"
    assert seen == created[::-1] + before and pages == 3
    assert await listed(server, "/v1/runs?limit=100") == seen
    assert await listed(server, "/v1/runs?limit=1") == [created[-1]]


async def test_run_filters_combine(server: Server) -> None:
    a, b = await server.create_blueprint(), await server.create_blueprint()
    r1 = (await server.create_run(blueprint_id=a, metadata={"cohort": "a"}))["id"]
    r2 = (await server.create_run(blueprint_id=a, metadata={"cohort": "b"}))["id"]
    r3 = (await server.create_run(blueprint_id=b, metadata={"cohort": "a"}))["id"]
    r4 = (await server.create_run(blueprint_id=a, metadata={"cohort": "a", "site": "x"}))["id"]
    assert (await server.request("POST", f"/v1/runs/{r4}/cancel"))[0] == 200
    for query, expected in [
        (f"blueprint_id={a}", [r4, r2, r1]),
        ("status=cancelled", [r4]),
        ("status=pending&metadata[cohort]=a", [r3, r1]),
        ("metadata[cohort]=a", [r4, r3, r1]),
        ("metadata[cohort]=a&metadata[site]=x", [r4]),
        (f"blueprint_id={a}&metadata[cohort]=a&status=pending", [r1]),
        (f"blueprint_id={b}&status=cancelled", []),
        ("metadata[cohort]=c", []),
    ]:
        status, page = await server.request("GET", f"/v1/runs?{query}")
        assert status == 200 and [r["id"] for r in page["data"]] == expected, query


async def test_blueprint_and_channel_lists_page_newest_first(server: Server) -> None:
    demo = await listed(server, "/v1/blueprints")
    bps = [await server.create_blueprint(publish=False) for _ in range(3)]
    status, page = await server.request("GET", "/v1/blueprints?limit=2")
    assert status == 200 and [b["id"] for b in page["data"]] == bps[:0:-1] and page["has_more"] is True
    status, page = await server.request("GET", f"/v1/blueprints?limit=2&starting_after={bps[1]}")
    assert status == 200 and [b["id"] for b in page["data"]] == [bps[0], *demo] and page["has_more"] is False
    BlueprintOut.model_validate(page["data"][0])
    channels = await listed(server, "/v1/channels")
    chn = await server.create_channel()
    assert await listed(server, "/v1/channels") == [chn, *channels]


# --- organizations --------------------------------------------------------------------------

ISOLATED = [
    ("GET", "/v1/blueprints/{bp}", "blueprint", {}),
    ("GET", "/v1/blueprints/{bp}?version=1", "blueprint", {}),
    ("PATCH", "/v1/blueprints/{bp}", "blueprint", {"json": bp_with(greeting="hijacked")}),
    ("POST", "/v1/blueprints/{draft}/publish", "blueprint", {}),
    ("GET", "/v1/channels/{chn}", "channel", {}),
    ("GET", "/v1/runs/{run}", "run", {}),
    ("GET", "/v1/runs/{run}?expand=transcript", "run", {}),
    ("POST", "/v1/runs/{run}/cancel", "run", {}),
    ("GET", "/v1/runs/{run}/transcript", "run", {}),
    ("GET", "/v1/runs/{run}/transcript?format=txt", "run", {}),
    ("GET", "/v1/runs/{run}/events", "run", {"headers": JSON_ACCEPT}),
    ("GET", "/v1/runs/{run}/events", "run", {"timeout": aiohttp.ClientTimeout(total=5 * UNIT)}),  # SSE
]


@pytest.mark.parametrize(("method", "path", "kind", "kwargs"), ISOLATED)
async def test_another_orgs_object_is_a_404_like_a_missing_one(
    server: Server, ids: dict, method: str, path: str, kind: str, kwargs: dict
) -> None:
    key2 = await second_org(server)
    missing = {k: new_id(kind) for k in ("bp", "draft", "chn", "run")}
    assert_error(*await server.request(method, fill(path, missing), **kwargs), 404, "not_found")
    assert_error(*await server.request(method, fill(path, ids), key=key2, **kwargs), 404, "not_found")
    # and the attempt changed nothing for the owner
    assert (await server.request("GET", f"/v1/blueprints/{ids['bp']}"))[1]["greeting"] == BLUEPRINT["greeting"]
    assert (await server.request("GET", f"/v1/blueprints/{ids['draft']}"))[1]["status"] == "draft"
    assert (await server.get_run(ids["run"]))["status"] == "pending"


async def test_runs_cannot_use_another_orgs_blueprint_or_channel(server: Server, ids: dict) -> None:
    key2 = await second_org(server)
    _, bp2 = await server.request("POST", "/v1/blueprints", key=key2, json=BLUEPRINT)
    assert (await server.request("POST", f"/v1/blueprints/{bp2['id']}/publish", key=key2))[0] == 200
    status, chn2 = await server.request("POST", "/v1/channels", key=key2, json={"type": "chat", "name": "theirs"})
    assert status == 201
    for bp, chn, param in [(ids["bp"], chn2["id"], "blueprint_id"), (bp2["id"], ids["chn"], "channel_id")]:
        status, body = await server.request("POST", "/v1/runs", key=key2, json={"blueprint_id": bp, "channel_id": chn})
        assert_error(status, body, 404, "not_found", param)
    status, run2 = await server.request(
        "POST", "/v1/runs", key=key2, json={"blueprint_id": bp2["id"], "channel_id": chn2["id"]}
    )
    assert status == 201
    assert_error(*await server.request("GET", f"/v1/runs/{run2['id']}"), 404, "not_found")

    for path, mine, theirs in [
        ("/v1/blueprints?limit=100", {ids["bp"], ids["draft"]}, {bp2["id"]}),
        ("/v1/channels?limit=100", {ids["chn"], server.chat_channel_id}, {chn2["id"]}),
        ("/v1/runs?limit=100", {ids["run"]}, {run2["id"]}),
        (f"/v1/runs?blueprint_id={ids['bp']}", {ids["run"]}, set()),
    ]:
        ours = set(await listed(server, path))
        assert mine <= ours and not theirs & ours, path
        assert set(await listed(server, path, key2)) == theirs, path


# --- meta -----------------------------------------------------------------------------------


async def test_openapi_documents_every_route_and_every_ref_resolves(server: Server) -> None:
    status, doc = await server.request("GET", "/openapi.json", headers={"Authorization": ""})
    assert status == 200 and doc["openapi"].startswith("3.1")
    registered = {(r.resource.canonical, r.method.lower()) for r in server.app.router.routes() if r.method != "HEAD"}
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert registered and registered <= documented
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    found = refs(doc)
    assert any("RunOut" in r for r in found)
    for ref in found:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


async def test_healthz_needs_no_key(server: Server) -> None:
    status, body = await server.request("GET", "/healthz", headers={"Authorization": ""})
    assert status == 200 and HealthOut.model_validate(body).status == "ok"
