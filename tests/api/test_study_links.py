"""Study links: one link for a panel, a run per participant, once each, a cap, a closing date, redirects back."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.api.test_chat import complete_interview
from tests.api.test_rest import assert_error
from tests.conftest import Server

DONE = "https://app.prolific.example/submissions/complete?cc=C0D3&run={run_id}&pid={external_id}&s={status}"
OUT = "https://app.prolific.example/submissions/complete?cc=SCREEN&pid={external_id}&s={status}"


async def make_link(server: Server, **fields: Any) -> dict[str, Any]:
    bp = server.extra.get("blueprint_id") or await server.create_blueprint()
    server.extra["blueprint_id"] = bp
    body = {"blueprint_id": bp, "channel_id": server.chat_channel_id, **fields}
    status, link = await server.request("POST", "/v1/study-links", json=body)
    assert status == 201, link
    return dict(link)


async def open_link(server: Server, link: dict[str, Any], query: str) -> tuple[int, str, str]:
    """A participant's browser opening the panel's URL (redirects not followed): status, Location, page."""
    async with server.http.get(f"{link['url']}?{query}", allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


async def run_behind(server: Server, location: str) -> dict[str, Any]:
    token = location.rsplit("/", 1)[1]
    run = await server.state.store.runs.run_by_token(token)
    assert run is not None
    return await server.get_run(run.id)


async def test_each_participant_gets_one_run_with_the_panels_ids(server: Server) -> None:
    link = await make_link(server, metadata_params=["STUDY_ID", "SESSION_ID"])
    assert link["participant_param"] == "PROLIFIC_PID" and link["open"] is True
    assert link["url"].startswith(server.url + "/s/")
    runs = {}
    for pid in ("p-ada", "p-bob", "p-cy"):
        status, location, _ = await open_link(server, link, f"PROLIFIC_PID={pid}&STUDY_ID=st1&SESSION_ID=se-{pid}&x=1")
        assert status == 303 and location.startswith("/join/")
        runs[pid] = await run_behind(server, location)
    assert len({r["id"] for r in runs.values()}) == 3
    ada = runs["p-ada"]
    assert ada["participant"]["external_id"] == "p-ada" and ada["status"] == "pending"
    assert ada["metadata"] == {"STUDY_ID": "st1", "SESSION_ID": "se-p-ada", "study_link": link["id"]}  # not x
    status, got = await server.request("GET", f"/v1/study-links/{link['id']}")
    assert status == 200 and got["started"] == 3 and got["completed"] == 0
    status, page = await server.request("GET", f"/v1/runs?metadata[study_link]={link['id']}&limit=10")
    assert {r["id"] for r in page["data"]} == {r["id"] for r in runs.values()}


async def test_the_same_participant_opening_it_again_or_at_once_gets_the_same_run(server: Server) -> None:
    link = await make_link(server)
    first = await open_link(server, link, "PROLIFIC_PID=p1")
    again = await open_link(server, link, "PROLIFIC_PID=p1")
    assert first[0] == again[0] == 303 and first[1] == again[1]  # back to the interview in progress
    together = await asyncio.gather(*(open_link(server, link, "PROLIFIC_PID=p2") for _ in range(8)))
    assert {t[0] for t in together} == {303} and len({t[1] for t in together}) == 1  # eight opens, one run
    _, got = await server.request("GET", f"/v1/study-links/{link['id']}")
    assert got["started"] == 2


async def test_after_the_interview_the_participant_goes_back_and_cannot_take_it_again(server: Server) -> None:
    link = await make_link(server, completion_redirect_url=DONE, screenout_redirect_url=OUT)
    status, location, _ = await open_link(server, link, "PROLIFIC_PID=ada%2B1")
    run = await run_behind(server, location)
    await complete_interview(server, run)
    # the participant's page is told where to go (the page follows it), and the join URL now sends them there
    async with server.http.get(run["join_url"] + "/info") as resp:
        target = (await resp.json())["redirect_url"]
    async with server.http.get(run["join_url"], allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == target
    query = parse_qs(urlsplit(target).query)
    assert query == {"cc": ["C0D3"], "run": [run["id"]], "pid": ["ada+1"], "s": ["completed"]}
    # opening the study again: refused, to the screen-out URL
    status, location, _ = await open_link(server, link, "PROLIFIC_PID=ada%2B1")
    assert status == 303 and parse_qs(urlsplit(location).query)["s"] == ["duplicate"]
    assert (await server.request("GET", f"/v1/study-links/{link['id']}"))[1]["completed"] == 1


async def test_a_run_that_does_not_complete_goes_to_the_screen_out_url(server: Server) -> None:
    link = await make_link(server, completion_redirect_url=DONE, screenout_redirect_url=OUT)
    _, location, _ = await open_link(server, link, "PROLIFIC_PID=p9")
    run = await run_behind(server, location)
    assert (await server.request("POST", f"/v1/runs/{run['id']}/cancel"))[0] == 200
    async with server.http.get(run["join_url"], allow_redirects=False) as resp:
        target = resp.headers["Location"]
    assert target.startswith("https://app.prolific.example/") and parse_qs(urlsplit(target).query)["s"] == ["cancelled"]
    assert "cc=SCREEN" in target


async def test_the_cap_on_completed_interviews_closes_the_link(server: Server) -> None:
    link = await make_link(server, max_completes=1, screenout_redirect_url=OUT)
    _, loc_a, _ = await open_link(server, link, "PROLIFIC_PID=a")
    _, loc_b, _ = await open_link(server, link, "PROLIFIC_PID=b")  # started before the cap was reached
    await complete_interview(server, await run_behind(server, loc_a))
    status, location, _ = await open_link(server, link, "PROLIFIC_PID=c")
    assert status == 303 and parse_qs(urlsplit(location).query)["s"] == ["full"]
    assert (await open_link(server, link, "PROLIFIC_PID=b"))[1] == loc_b  # already in: may still finish
    status, got = await server.request("GET", f"/v1/study-links/{link['id']}")
    assert got["open"] is False and (got["started"], got["completed"]) == (2, 1)


async def test_a_link_closes_at_its_date_or_when_closed_by_hand(server: Server) -> None:
    past = await make_link(server, closes_at="2020-01-01T00:00:00Z")
    status, _, page = await open_link(server, past, "PROLIFIC_PID=z")
    assert status == 410 and "Study closed" in page
    link = await make_link(server, closes_at="2999-01-01T00:00:00+02:00")
    assert (await open_link(server, link, "PROLIFIC_PID=z"))[0] == 303
    status, closed = await server.request("PATCH", f"/v1/study-links/{link['id']}", json={"active": False})
    assert status == 200 and closed["open"] is False and closed["closes_at"] == "2998-12-31T22:00:00.000Z"
    assert (await open_link(server, link, "PROLIFIC_PID=new"))[0] == 410
    assert (await open_link(server, link, "PROLIFIC_PID=z"))[0] == 303  # the one already in goes on
    await server.request("PATCH", f"/v1/study-links/{link['id']}", json={"active": True, "closes_at": None})
    assert (await open_link(server, link, "PROLIFIC_PID=new"))[0] == 303


async def test_the_participant_id_parameter_is_configurable_and_required(server: Server) -> None:
    link = await make_link(server, participant_param="PID", metadata_params=[])
    status, _, page = await open_link(server, link, "PROLIFIC_PID=nope")
    assert status == 400 and "participant id (PID)" in page
    assert (await open_link(server, link, "PID=" + "x" * 201))[0] == 400
    status, location, _ = await open_link(server, link, "PID=someone")
    assert status == 303 and (await run_behind(server, location))["participant"]["external_id"] == "someone"
    async with server.http.get(f"{server.url}/s/not-a-token?PID=x") as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"completion_redirect_url": "javascript:alert(1)"}, 400, "completion_redirect_url"),
        ({"completion_redirect_url": "https://[/done"}, 400, "completion_redirect_url"),  # no URL parser takes it
        ({"screenout_redirect_url": "https://panel.example/x y"}, 400, "screenout_redirect_url"),
        ({"screenout_redirect_url": "https://panel.example:99999/"}, 400, "screenout_redirect_url"),
        ({"participant_param": "PROLIFIC PID"}, 400, "participant_param"),
        ({"metadata_params": ["A", "A"]}, 400, "metadata_params"),
        ({"max_completes": 0}, 400, "max_completes"),
        ({"closes_at": "2030-01-01T00:00:00"}, 400, "closes_at"),  # a time zone is required
        ({"channel_id": "chn_01m8ssnmzs0001fehhw3q0gzkx"}, 404, "channel_id"),
    ],
)
async def test_study_link_bodies_are_checked(server: Server, fields: dict, status: int, param: str) -> None:
    bp = await server.create_blueprint()
    body = {"blueprint_id": bp, "channel_id": server.chat_channel_id, **fields}
    kind = {400: "invalid_request", 404: "not_found"}[status]
    assert_error(*await server.request("POST", "/v1/study-links", json=body), status, kind, param)


async def test_a_link_needs_a_published_blueprint_and_a_served_channel(server: Server) -> None:
    draft = await server.create_blueprint(publish=False)
    body = {"blueprint_id": draft, "channel_id": server.chat_channel_id}
    assert_error(*await server.request("POST", "/v1/study-links", json=body), 409, "conflict", "blueprint_id")
    _, phone = await server.request("POST", "/v1/channels", json={"type": "telephony", "name": "p"})
    body = {"blueprint_id": await server.create_blueprint(), "channel_id": phone["id"]}
    assert_error(*await server.request("POST", "/v1/study-links", json=body), 409, "conflict", "channel_id")


async def test_links_are_listed_and_scoped_to_the_organization(server: Server) -> None:
    a, b = await make_link(server), await make_link(server)
    status, page = await server.request("GET", "/v1/study-links")
    assert status == 200 and [x["id"] for x in page["data"]] == [b["id"], a["id"]]
    catalog = server.state.store.catalog
    other = await catalog.create_api_key(await catalog.create_organization("o"))
    assert (await server.request("GET", f"/v1/study-links/{a['id']}", key=other))[0] == 404
    assert (await server.request("GET", "/v1/study-links", key=other))[1]["data"] == []
