"""The rough edges a new user hits: how bodies may be sent, how errors read, partial edits, methods, `GET /`."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets

from tests.api.test_rest import assert_error
from tests.conftest import BLUEPRINT, UNIT, Server, ws_url


async def test_a_validation_error_lists_every_problem_in_plain_words(server: Server) -> None:
    body = {
        "name": " ",
        "greeting": "x" * 2001,
        "questions": [{"id": "q 1", "text": "ok", "max_probes": True}],
        "colour": "red",
    }
    status, answer = await server.request("POST", "/v1/blueprints", json=body)
    assert_error(status, answer, 400, "invalid_request")
    details = {d["param"]: d["message"] for d in answer["error"]["details"]}
    assert details == {
        "name": "must not be blank",
        "greeting": "must be at most 2000 characters",
        "questions.0.id": "must match the pattern ^[A-Za-z0-9_\\-]{1,64}$",
        "questions.0.max_probes": "must be an integer",
        "closing": "is required",
        "colour": "unknown field",
    }
    assert answer["error"]["param"] == "name"  # the first problem
    message = answer["error"]["message"]
    assert message.startswith("6 problems: name: must not be blank;")
    for internal in ("Value error", "Input should", "BlueprintIn", "QuestionIn", "pydantic"):
        assert internal not in json.dumps(answer)


async def test_model_names_never_reach_the_message(server: Server) -> None:
    run = {"blueprint_id": "bp_x", "channel_id": "chn_x", "participant": "Ada", "metadata": {"a b": "x"}}
    status, answer = await server.request("POST", "/v1/runs", json=run)
    assert_error(status, answer, 400, "invalid_request")
    assert {d["param"] for d in answer["error"]["details"]} == {"participant", "metadata"}
    assert "ParticipantIn" not in answer["error"]["message"] and "must be an object" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_duration_s", True), ("max_duration_s", "600"), ("max_duration_s", 600.5), ("recording", 1)],
)
async def test_integers_and_booleans_are_json_ones(server: Server, field: str, value: Any) -> None:
    body = {"type": "chat", "name": "n", "settings": {field: value}}
    assert_error(*await server.request("POST", "/v1/channels", json=body), 400, "invalid_request", f"settings.{field}")


async def test_a_whole_number_written_as_a_float_is_an_integer(server: Server) -> None:
    status, channel = await server.request(
        "POST", "/v1/channels", json={"type": "chat", "name": "n", "settings": {"max_duration_s": 600.0}}
    )
    assert status == 201 and channel["settings"]["max_duration_s"] == 600


async def test_curl_d_without_a_content_type_is_read_as_json(server: Server) -> None:
    """`curl -d '{…}'` sends application/x-www-form-urlencoded; fetch() with a string body sends text/plain."""
    bp = await server.create_blueprint()
    body = json.dumps({"blueprint_id": bp, "channel_id": server.chat_channel_id, "participant": {"name": "Ada"}})
    for ctype in ("application/x-www-form-urlencoded", "text/plain;charset=UTF-8"):
        status, run = await server.request("POST", "/v1/runs", data=body, headers={"Content-Type": ctype})
        assert status == 201 and run["participant"]["name"] == "Ada", run


async def test_a_body_that_cannot_be_json_is_415_and_a_form_that_is_not_json_says_why(server: Server) -> None:
    status, answer = await server.request(
        "POST", "/v1/channels", data=b"<channel/>", headers={"Content-Type": "application/xml"}
    )
    assert_error(status, answer, 415, "unsupported_media_type")
    assert "application/json" in answer["error"]["message"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, answer = await server.request("POST", "/v1/channels", data="type=chat&name=n", headers=form)
    assert_error(status, answer, 400, "invalid_request")
    assert "send JSON" in answer["error"]["message"]


async def test_patch_is_a_json_merge_patch(server: Server) -> None:
    bp = await server.create_blueprint(publish=False)
    status, patched = await server.request("PATCH", f"/v1/blueprints/{bp}", json={"name": "Renamed"})
    assert status == 200, patched
    assert patched["name"] == "Renamed" and patched["version"] == 1
    assert [q["id"] for q in patched["questions"]] == ["q1", "q2", "q3"]  # untouched members stay
    assert patched["greeting"] == BLUEPRINT["greeting"]

    one = [{"id": "only", "text": "The only question?"}]
    headers = {"Content-Type": "application/merge-patch+json"}
    status, patched = await server.request(
        "PATCH", f"/v1/blueprints/{bp}", data=json.dumps({"questions": one, "language": "fr"}), headers=headers
    )
    assert status == 200, patched
    assert [q["id"] for q in patched["questions"]] == ["only"] and patched["language"] == "fr"  # a list is replaced
    status, patched = await server.request("PATCH", f"/v1/blueprints/{bp}", json={"language": None})
    assert status == 200 and patched["language"] == "en"  # null removes: the default again


async def test_patch_refuses_what_would_break_the_blueprint_and_changes_nothing(server: Server) -> None:
    bp = await server.create_blueprint(publish=False)
    dup = {"questions": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}
    for patch, param in (({"name": None}, "name"), ({"name": ""}, "name"), (dup, "questions"), ({"x": 1}, "x")):
        assert_error(*await server.request("PATCH", f"/v1/blueprints/{bp}", json=patch), 400, "invalid_request", param)
    _, current = await server.request("GET", f"/v1/blueprints/{bp}")
    assert current["name"] == BLUEPRINT["name"] and len(current["questions"]) == 3


async def test_patching_a_published_blueprint_starts_a_draft_from_it(server: Server) -> None:
    bp = await server.create_blueprint()
    status, patched = await server.request("PATCH", f"/v1/blueprints/{bp}", json={"closing": "Bye now."})
    assert status == 200
    assert (patched["version"], patched["status"], patched["published_version"]) == (2, "draft", 1)
    assert patched["closing"] == "Bye now." and patched["name"] == BLUEPRINT["name"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/channels", "GET, POST"),
        ("PUT", "/v1/blueprints/bp_x", "GET, PATCH"),
        ("TRACE", "/healthz", "GET"),
    ],
)
async def test_a_405_names_the_allowed_methods(server: Server, method: str, path: str, allowed: str) -> None:
    async with server.http.request(method, server.url + path, headers=server.auth) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == allowed
        body = await resp.json()
    assert body["error"]["type"] == "method_not_allowed" and allowed in body["error"]["message"]


async def test_the_front_door_leads_to_the_console(server: Server) -> None:
    async with server.http.get(server.url + "/", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console"
    async with server.http.get(server.url + "/") as resp:  # followed: the console asks to sign in
        assert resp.status == 200 and resp.url.path == "/console/sign-in"


@pytest.mark.parametrize("kind", ["telephony", "custom"])
async def test_telephony_and_custom_runs_never_fall_back_to_chat(server: Server, kind: str) -> None:
    status, channel = await server.request("POST", "/v1/channels", json={"type": kind, "name": kind})
    assert status == 201, channel
    run = await server.create_run(channel_id=channel["id"])
    async with server.http.get(run["join_url"]) as resp:  # a page that says how to join, not a chat page
        page = await resp.text()
        assert resp.status == 200 and "How to join this interview" in page
        assert "/ws" not in page.replace("/media", "") and "join.js" not in page
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(run), open_timeout=5 * UNIT)
    assert refused.value.response.status_code == 409
    async with server.http.get(run["join_url"] + "/info") as resp:
        assert resp.status == 200 and (await resp.json())["mode"] == kind
    async with server.http.post(run["join_url"] + "/offer", json={"type": "offer", "sdp": "v=0"}) as resp:
        assert resp.status in (400, 409)  # no WebRTC either
    assert (await server.get_run(run["id"]))["status"] == "pending"  # nothing was started


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"participant": {"name": "Ada\u0000Lovelace"}}, "participant"),
        ({"metadata": {"cohort": "wave\u00002"}}, "metadata"),
        ({"metadata": {"co\u0000hort": "wave-2"}}, "metadata"),
        ({"participant": {"name": "lone \ud800"}}, "participant"),
    ],
)
async def test_text_no_database_can_store_is_a_400_and_nothing_is_made(
    server: Server, body: dict[str, Any], param: str
) -> None:
    """NUL (PostgreSQL refuses it in text) and unpaired surrogates (not UTF-8): refused at the edge on every store,
    not a failed write (a 500 on PostgreSQL) or, on SQLite, text that no export can encode."""
    before = (await server.request("GET", "/v1/runs"))[1]["data"]
    raw = json.dumps({"blueprint_id": await server.create_blueprint(), "channel_id": server.chat_channel_id, **body})
    status, answer = await server.request(
        "POST", "/v1/runs", data=raw.encode(), headers={"Content-Type": "application/json"}
    )
    assert_error(status, answer, 400, "invalid_request", param)
    assert "NUL" in answer["error"]["message"]
    assert (await server.request("GET", "/v1/runs"))[1]["data"] == before


async def test_a_nul_in_a_query_string_is_a_400(server: Server) -> None:
    status, answer = await server.request("GET", "/v1/runs?metadata[cohort]=a%00b")
    assert_error(status, answer, 400, "invalid_request", "metadata[cohort]")
