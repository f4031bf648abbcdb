"""Reviewing runs against a real server: annotations, issues, and approved transcript corrections everywhere
a run's text is read (transcript exports, responses, study exports), withdrawn by rejecting, erased with the run."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from typing import Any

import pytest

from tests.api.test_chat import complete_interview
from tests.api.test_erasure import files_holding, key_id
from tests.api.test_rest import assert_error
from tests.api.test_webhooks import FAST, Receiver, receiver, subscribe  # noqa: F401  (receiver: a fixture)
from tests.conftest import Server, ServerFactory, eventually, sqlite_only

MISHEARD = "I teach"  # what complete_interview's participant types first (the answer to q1, before the probe)
MEANT = "I teach chemistry"


async def interview(server: Server, **run: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A completed chat interview and its transcript (as stored)."""
    created = await server.create_run(**run)
    await complete_interview(server, created)
    done = await server.get_run(created["id"], "transcript")
    return done, done["transcript"]


def said_by_participant(transcript: list[dict[str, Any]], content: str) -> dict[str, Any]:
    return next(m for m in transcript if m["role"] == "user" and m["content"] == content)


async def open_issue(server: Server, run_id: str, key: str | None = None, **body: Any) -> tuple[int, Any]:
    return await server.request("POST", f"/v1/runs/{run_id}/issues", key=key, json=body)


async def change(server: Server, run_id: str, issue_id: str, key: str | None = None, **body: Any) -> tuple[int, Any]:
    return await server.request("PATCH", f"/v1/runs/{run_id}/issues/{issue_id}", key=key, json=body)


async def text_of(server: Server, path: str) -> str:
    async with server.http.get(server.url + path, headers=server.auth) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.read()).decode()


async def events_of(server: Server, run_id: str) -> list[dict[str, Any]]:
    status, page = await server.request("GET", f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"})
    assert status == 200, page
    return list(page["data"])


async def second_key(server: Server) -> tuple[str, str]:
    """Another API key of the same organization (another reviewer), and its id."""
    catalog = server.state.store.catalog
    found = await catalog.key_for(server.api_key)
    assert found is not None
    key = await catalog.create_api_key(found[0])
    found = await catalog.key_for(key)
    assert found is not None
    return key, found[1]


async def foreign_key(server: Server) -> str:
    catalog = server.state.store.catalog
    return await catalog.create_api_key(await catalog.create_organization("another lab"))


# --- the run's annotation ------------------------------------------------------------------------------------


async def test_a_reviewer_annotates_a_run_changes_and_clears_it(server: Server) -> None:
    run, _ = await interview(server)
    other = await server.create_run()
    assert (run["annotation"], run["annotated_by"], run["annotated_at"]) == (None, None, None)
    me = await key_id(server)

    status, body = await server.request("PATCH", f"/v1/runs/{run['id']}", json={"annotation": "critical"})
    assert status == 200, body
    assert (body["annotation"], body["annotated_by"]) == ("critical", me) and body["annotated_at"]
    assert body["status"] == "completed" and body["id"] == run["id"]  # the whole run object answers
    assert (await server.get_run(run["id"]))["annotation"] == "critical"

    _, page = await server.request("GET", "/v1/runs?annotation=critical")
    assert [r["id"] for r in page["data"]] == [run["id"]]
    _, page = await server.request("GET", "/v1/runs?annotation=correct")
    assert page["data"] == []
    assert_error(*await server.request("GET", "/v1/runs?annotation=great"), 400, "invalid_request", "annotation")

    # a merge patch: another value replaces it, {} changes nothing, null clears it
    reviewer, reviewer_id = await second_key(server)
    status, body = await server.request(
        "PATCH", f"/v1/runs/{run['id']}", key=reviewer, json={"annotation": "incorrect"},
        headers={"Content-Type": "application/merge-patch+json"},
    )  # fmt: skip
    assert status == 200 and (body["annotation"], body["annotated_by"]) == ("incorrect", reviewer_id)
    status, same = await server.request("PATCH", f"/v1/runs/{run['id']}", json={"annotation": "incorrect"})
    assert status == 200 and same["annotated_by"] == reviewer_id  # the same verdict again is no new verdict
    status, same = await server.request("PATCH", f"/v1/runs/{run['id']}", json={})
    assert status == 200 and same["annotation"] == "incorrect"
    status, cleared = await server.request("PATCH", f"/v1/runs/{run['id']}", json={"annotation": None})
    assert status == 200 and (cleared["annotation"], cleared["annotated_by"], cleared["annotated_at"]) == (
        None, None, None,
    )  # fmt: skip
    assert (await server.get_run(other["id"]))["annotation"] is None

    # each change is an event on the run's stream: what it became, what it was, who
    annotated = [e["data"] for e in await events_of(server, run["id"]) if e["type"] == "run.annotated"]
    assert [(e["annotation"], e["previous"], e["changed_by"]) for e in annotated] == [
        ("critical", None, me),
        ("incorrect", "critical", reviewer_id),
        (None, "incorrect", me),
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [({"annotation": "great"}, "annotation"), ({"annotation": 1}, "annotation"), ({"status": "completed"}, "status")],
)
async def test_an_annotation_must_be_one_of_the_three(server: Server, body: dict[str, Any], param: str) -> None:
    run = await server.create_run()
    assert_error(*await server.request("PATCH", f"/v1/runs/{run['id']}", json=body), 400, "invalid_request", param)
    assert (await server.get_run(run["id"]))["annotation"] is None


# --- corrections -----------------------------------------------------------------------------------------------


async def test_an_approved_transcriber_correction_shows_in_every_reading_of_the_run(server: Server) -> None:
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    me = await key_id(server)

    status, issue = await open_issue(
        server, run["id"], type="transcriber", message_id=heard["id"], correction=MEANT,
        correction_reason="the recogniser dropped the subject", note="check the audio", priority="high",
    )  # fmt: skip
    assert status == 201, issue
    assert issue["id"].startswith("iss_") and issue["object"] == "issue" and issue["run_id"] == run["id"]
    assert (issue["type"], issue["status"], issue["priority"]) == ("transcriber", "open", "high")
    assert issue["applied"] is False
    assert (issue["created_by"], issue["updated_by"], issue["approved_by"]) == (me, me, None)
    # open: proposed, not in force
    assert said_by_participant((await server.get_run(run["id"], "transcript"))["transcript"], MISHEARD)

    reviewer, reviewer_id = await second_key(server)
    status, approved = await change(server, run["id"], issue["id"], key=reviewer, status="approved")
    assert status == 200, approved
    assert (approved["status"], approved["applied"]) == ("approved", True)
    assert (approved["created_by"], approved["updated_by"], approved["approved_by"]) == (me, reviewer_id, reviewer_id)
    assert approved["approved_at"] == approved["updated_at"] and approved["created_at"] == issue["created_at"]

    # the run object: the transcript shows the correction, the recognised text beside it; responses too
    got = await server.get_run(run["id"], "transcript", "responses", "issues")
    line = next(m for m in got["transcript"] if m["id"] == heard["id"])
    assert (line["content"], line["original_content"], line["correction_id"]) == (MEANT, MISHEARD, issue["id"])
    untouched = [m for m in got["transcript"] if m["id"] != heard["id"]]
    assert all(m["original_content"] is None and m["correction_id"] is None for m in untouched)
    q1 = next(r for r in got["responses"] if r["question_id"] == "q1")
    assert q1["answer"].startswith(MEANT + " ") and q1["original_answer"].startswith(MISHEARD + " ")
    assert q1["answer"].removeprefix(MEANT) == q1["original_answer"].removeprefix(MISHEARD)  # the rest as said
    assert all(r["original_answer"] is None for r in got["responses"] if r["question_id"] != "q1")
    assert [i["id"] for i in got["issues"]] == [issue["id"]]

    # the transcript downloads
    exported = json.loads(await text_of(server, f"/v1/runs/{run['id']}/transcript"))
    corrected = next(m for m in exported["messages"] if m["id"] == heard["id"])
    assert (corrected["content"], corrected["original_content"]) == (MEANT, MISHEARD)
    txt = await text_of(server, f"/v1/runs/{run['id']}/transcript?format=txt")
    assert f"Participant: {MEANT} [corrected]" in txt and f"Participant: {MISHEARD}\n" not in txt
    for fmt in ("vtt", "srt"):
        cues = await text_of(server, f"/v1/runs/{run['id']}/transcript?format={fmt}")
        assert MEANT in cues and "[corrected]" not in cues, fmt

    # the record itself is never rewritten
    stored = {m.id: m.content for m in await server.state.store.messages.list_messages(run["id"])}
    assert stored[heard["id"]] == MISHEARD
    created = [e for e in await events_of(server, run["id"]) if e["type"] == "message.created"]
    assert any(e["data"]["message"]["content"] == MISHEARD for e in created)

    # rejecting it later withdraws it: every reading is back to what was recognised
    status, rejected = await change(server, run["id"], issue["id"], status="rejected")
    assert status == 200 and (rejected["status"], rejected["applied"]) == ("rejected", False)
    assert rejected["approved_by"] == reviewer_id  # the approval stays on the record
    back = await server.get_run(run["id"], "transcript", "responses")
    line = next(m for m in back["transcript"] if m["id"] == heard["id"])
    assert (line["content"], line["original_content"], line["correction_id"]) == (MISHEARD, None, None)
    assert all(r["original_answer"] is None for r in back["responses"])
    txt = await text_of(server, f"/v1/runs/{run['id']}/transcript?format=txt")
    assert MEANT not in txt and "[corrected]" not in txt


async def test_a_reviewer_corrects_at_once_and_the_study_exports_show_it(server: Server) -> None:
    bp = await server.create_blueprint()
    run, transcript = await interview(server, blueprint_id=bp, participant={"external_id": "P-7"})
    heard = said_by_participant(transcript, MISHEARD)
    status, issue = await open_issue(
        server, run["id"], type="transcriber", message_id=heard["id"], correction=MEANT, status="approved"
    )
    assert status == 201 and issue["applied"] and issue["approved_by"] == await key_id(server), issue
    await server.request("PATCH", f"/v1/runs/{run['id']}", json={"annotation": "correct"})

    table = list(csv.DictReader(io.StringIO(await text_of(server, f"/v1/blueprints/{bp}/responses?format=csv"))))
    assert len(table) == 1 and table[0]["q1"].startswith(MEANT + " ") and table[0]["annotation"] == "correct"
    record = json.loads(await text_of(server, f"/v1/blueprints/{bp}/responses?format=jsonl"))
    q1 = record["responses"][0]
    assert q1["answer"].startswith(MEANT) and q1["original_answer"].startswith(MISHEARD + " ")
    assert record["annotation"] == "correct"
    zipped = f"{server.url}/v1/blueprints/{bp}/transcripts.zip"
    async with server.http.get(zipped + "?format=json", headers=server.auth) as r:
        archive = zipfile.ZipFile(io.BytesIO(await r.read()))
    messages = json.loads(archive.read(f"{run['id']}.json"))["messages"]
    line = next(m for m in messages if m["id"] == heard["id"])
    assert (line["content"], line["original_content"]) == (MEANT, MISHEARD)
    async with server.http.get(zipped, headers=server.auth) as r:
        txt = zipfile.ZipFile(io.BytesIO(await r.read())).read(f"{run['id']}.txt").decode()
    assert f"{MEANT} [corrected]" in txt


async def test_a_message_issue_keeps_its_correction_on_record_without_rewriting_what_was_said(server: Server) -> None:
    run, transcript = await interview(server)
    probe = next(m for m in transcript if m["kind"] == "probe")
    status, issue = await open_issue(
        server, run["id"], type="message", message_id=probe["id"], correction="What subject do you teach?",
        status="approved",
    )  # fmt: skip
    assert status == 201 and issue["status"] == "approved" and issue["applied"] is False, issue
    got = await server.get_run(run["id"], "transcript")
    assert next(m for m in got["transcript"] if m["id"] == probe["id"])["content"] == probe["content"]


# --- what the server refuses --------------------------------------------------------------------------------------


async def test_issues_must_name_a_message_of_their_run_of_the_right_kind(server: Server) -> None:
    run, transcript = await interview(server)
    _, other_transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    question = next(m for m in transcript if m["kind"] == "question")
    rid = run["id"]

    async def refused(want: int, kind: str, param: str | None, **body: Any) -> None:
        assert_error(*await open_issue(server, rid, **body), want, kind, param)

    await refused(404, "not_found", "message_id", type="transcriber", message_id="msg_" + "0" * 26, correction="x")
    await refused(404, "not_found", "message_id", type="transcriber", message_id="hello", correction="x")
    foreign_line = said_by_participant(other_transcript, MISHEARD)["id"]  # another run's message
    await refused(404, "not_found", "message_id", type="transcriber", message_id=foreign_line, correction="x")
    await refused(409, "conflict", "message_id", type="transcriber", message_id=question["id"], correction="x")
    await refused(409, "conflict", "message_id", type="message", message_id=heard["id"])
    await refused(400, "invalid_request", "message_id", type="run", message_id=heard["id"])
    await refused(400, "invalid_request", "message_id", type="transcriber", correction="x")
    await refused(400, "invalid_request", "correction", type="end_of_sentence", message_id=heard["id"], correction="x")
    await refused(400, "invalid_request", "correction", type="run", correction="the run was fine")
    await refused(400, "invalid_request", "correction_reason", type="transcriber", message_id=heard["id"],
                  correction_reason="misheard")  # fmt: skip
    await refused(400, "invalid_request", "status", type="run", status="rejected")
    await refused(400, "invalid_request", "type", type="typo")
    await refused(400, "invalid_request", "priority", type="run", priority="urgent")
    await refused(400, "invalid_request", "correction", type="transcriber", message_id=heard["id"], correction="  ")
    await refused(400, "invalid_request", "owner", type="run", owner="me")
    await refused(400, "invalid_request", "type")  # type is required
    _, page = await server.request("GET", f"/v1/runs/{rid}/issues")
    assert page["data"] == []  # nothing refused was stored
    # what is allowed: a message-less issue on the run, issues on any message for the voice types
    for body in ({"type": "run", "note": "the participant was a bot"}, {"type": "interruption"},
                 {"type": "end_of_sentence", "message_id": heard["id"]}, {"type": "tool_call"}):  # fmt: skip
        status, issue = await open_issue(server, rid, **body)
        assert status == 201 and issue["status"] == "open" and issue["priority"] == "medium", issue


async def test_another_organizations_run_and_unknown_issues_are_not_found(server: Server) -> None:
    run, _ = await interview(server)
    _, issue = await open_issue(server, run["id"], type="run")
    other = await foreign_key(server)
    rid, iid = run["id"], issue["id"]
    for method, path, body in (
        ("PATCH", f"/v1/runs/{rid}", {"annotation": "critical"}),
        ("POST", f"/v1/runs/{rid}/issues", {"type": "run"}),
        ("GET", f"/v1/runs/{rid}/issues", None),
        ("GET", f"/v1/runs/{rid}/issues/{iid}", None),
        ("PATCH", f"/v1/runs/{rid}/issues/{iid}", {"status": "closed"}),
    ):
        assert_error(*await server.request(method, path, key=other, json=body), 404, "not_found")
    assert (await server.get_run(rid))["annotation"] is None
    assert (await server.request("GET", f"/v1/runs/{rid}/issues/{iid}"))[1]["status"] == "open"
    # an issue is found only under its own run; a malformed id is simply not found
    elsewhere = await server.create_run()
    assert_error(*await server.request("GET", f"/v1/runs/{elsewhere['id']}/issues/{iid}"), 404, "not_found", "issue_id")
    assert_error(*await server.request("GET", f"/v1/runs/{rid}/issues/iss_nope"), 404, "not_found", "issue_id")
    assert_error(*await server.request("GET", "/v1/runs/run_nope/issues"), 404, "not_found", "id")
    assert_error(*await change(server, rid, "iss_" + "0" * 26, status="closed"), 404, "not_found", "issue_id")


async def test_status_changes_follow_the_review_workflow(server: Server) -> None:
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    rid = run["id"]
    _, issue = await open_issue(server, rid, type="transcriber", message_id=heard["id"], correction=MEANT)
    iid = issue["id"]

    status, closed = await change(server, rid, iid, status="closed")
    assert status == 200 and closed["status"] == "closed"
    for refused in ("approved", "rejected"):  # closed ends the review: only reopening leads out of it
        assert_error(*await change(server, rid, iid, status=refused), 409, "conflict", "status")
    assert_error(*await change(server, rid, iid, status=None), 400, "invalid_request", "status")
    assert_error(*await change(server, rid, iid, status="done"), 400, "invalid_request", "status")
    status, reopened = await change(server, rid, iid, status="open")
    assert status == 200 and reopened["status"] == "open"
    status, approved = await change(server, rid, iid, status="approved")
    assert status == 200 and approved["applied"]

    # one correction in force per message: a second approval names the first
    _, rival = await open_issue(server, rid, type="transcriber", message_id=heard["id"], correction="I reach")
    assert rival["status"] == "open"  # proposing another is fine
    answer = await change(server, rid, rival["id"], status="approved")
    assert_error(*answer, 409, "conflict", "status")
    assert iid in answer[1]["error"]["message"]
    assert_error(*await open_issue(server, rid, type="transcriber", message_id=heard["id"], correction="I preach",
                                   status="approved"), 409, "conflict", "status")  # fmt: skip

    # a correction in force does not change quietly: approve the new text in the same request
    assert_error(*await change(server, rid, iid, correction="I teach physics"), 409, "conflict", "correction")
    assert_error(*await change(server, rid, iid, correction=None), 409, "conflict", "correction")
    status, redone = await change(server, rid, iid, correction="I teach physics", status="approved")
    assert status == 200 and redone["correction"] == "I teach physics"
    assert redone["approved_at"] >= approved["approved_at"] and redone["applied"]
    got = await server.get_run(rid, "transcript")
    assert next(m for m in got["transcript"] if m["id"] == heard["id"])["content"] == "I teach physics"

    # withdrawn, its correction can change and its reason goes when the correction is cleared
    await change(server, rid, iid, status="open")
    status, noted = await change(server, rid, iid, correction_reason="misheard", priority="low", note="listened twice")
    assert status == 200 and (noted["correction_reason"], noted["priority"], noted["note"]) == (
        "misheard", "low", "listened twice",
    )  # fmt: skip
    status, cleared = await change(server, rid, iid, correction=None)
    assert status == 200 and (cleared["correction"], cleared["correction_reason"]) == (None, None)
    assert_error(*await change(server, rid, iid, correction_reason="why"), 409, "conflict", "correction_reason")
    _, run_issue = await open_issue(server, rid, type="run")
    assert_error(*await change(server, rid, run_issue["id"], correction="x"), 409, "conflict", "correction")

    # a patch that changes nothing stores nothing and announces nothing
    before = await events_of(server, rid)
    status, same = await change(server, rid, iid, status="open", note="listened twice")
    assert status == 200 and same["updated_at"] == cleared["updated_at"]
    assert await events_of(server, rid) == before

    updates = [e["data"] for e in before if e["type"] == "run.issue.updated" and e["data"]["issue"]["id"] == iid]
    assert [(u["previous_status"], u["issue"]["status"]) for u in updates][:4] == [
        ("open", "closed"), ("closed", "open"), ("open", "approved"), ("approved", "approved"),
    ]  # fmt: skip
    created = [e["data"]["issue"]["id"] for e in before if e["type"] == "run.issue.created"]
    assert created == [iid, rival["id"], run_issue["id"]]


async def test_two_reviewers_approving_rival_corrections_at_once_put_one_in_force(server: Server) -> None:
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    reviewer, _ = await second_key(server)
    rivals = []
    for words in ("I teach chemistry", "I teach physics"):
        _, issue = await open_issue(server, run["id"], type="transcriber", message_id=heard["id"], correction=words)
        rivals.append(issue["id"])
    answers = await asyncio.gather(
        change(server, run["id"], rivals[0], status="approved"),
        change(server, run["id"], rivals[1], key=reviewer, status="approved"),
    )
    assert sorted(status for status, _ in answers) == [200, 409], answers
    winner = next(body for status, body in answers if status == 200)
    got = await server.get_run(run["id"], "transcript", "issues")
    assert [i["id"] for i in got["issues"] if i["applied"]] == [winner["id"]]
    assert next(m for m in got["transcript"] if m["id"] == heard["id"])["content"] == winner["correction"]


async def test_issues_are_listed_newest_first_a_page_at_a_time_and_filtered(server: Server) -> None:
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    made = []
    for body in ({"type": "run"}, {"type": "interruption"}, {"type": "transcriber", "message_id": heard["id"]},
                 {"type": "run", "status": "approved"}, {"type": "tool_call"}):  # fmt: skip
        status, issue = await open_issue(server, run["id"], **body)
        assert status == 201, issue
        made.append(issue["id"])
    newest_first = list(reversed(made))

    seen, after = [], None
    while True:
        query = "limit=2" + (f"&starting_after={after}" if after else "")
        status, page = await server.request("GET", f"/v1/runs/{run['id']}/issues?{query}")
        assert status == 200 and page["object"] == "list", page
        seen += [i["id"] for i in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == newest_first
    _, runs_only = await server.request("GET", f"/v1/runs/{run['id']}/issues?type=run")
    assert [i["id"] for i in runs_only["data"]] == [made[3], made[0]]
    _, approved = await server.request("GET", f"/v1/runs/{run['id']}/issues?status=approved")
    assert [i["id"] for i in approved["data"]] == [made[3]]
    assert [i["id"] for i in (await server.get_run(run["id"], "issues"))["issues"]] == newest_first
    for query, param in (("status=new", "status"), ("type=bug", "type"), ("limit=0", "limit"),
                         ("starting_after=run_x", "starting_after"), ("order=asc", "order")):  # fmt: skip
        answer = await server.request("GET", f"/v1/runs/{run['id']}/issues?{query}")
        assert_error(*answer, 400, "invalid_request", param)


# --- erasure ---------------------------------------------------------------------------------------------------


async def test_erasing_a_run_erases_its_annotation_issues_and_corrections(server: Server) -> None:
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    rid = run["id"]
    await server.request("PATCH", f"/v1/runs/{rid}", json={"annotation": "critical"})
    _, issue = await open_issue(server, rid, type="transcriber", message_id=heard["id"], correction=MEANT,
                                status="approved", note="the participant named their school")  # fmt: skip
    keep, _ = await interview(server)  # another run's review stays
    await server.request("PATCH", f"/v1/runs/{keep['id']}", json={"annotation": "correct"})
    _, kept = await open_issue(server, keep["id"], type="run")

    status, erased = await server.request("DELETE", f"/v1/runs/{rid}")
    assert status == 200 and erased["erased_at"] is not None
    assert (erased["annotation"], erased["annotated_by"]) == (None, None)
    assert (await server.get_run(rid, "issues"))["issues"] == []
    for method, path, body in (
        ("GET", f"/v1/runs/{rid}/issues", None),
        ("GET", f"/v1/runs/{rid}/issues/{issue['id']}", None),
        ("POST", f"/v1/runs/{rid}/issues", {"type": "run"}),
        ("PATCH", f"/v1/runs/{rid}/issues/{issue['id']}", {"status": "closed"}),
        ("PATCH", f"/v1/runs/{rid}", {"annotation": "correct"}),
    ):
        answer = await server.request(method, path, json=body)
        assert_error(*answer, 410, "gone")
    db = server.state.store.db
    assert await db.fetch("SELECT count(*) FROM run_issues WHERE run_id = ?", (rid,)) == [(0,)]
    assert await db.fetch("SELECT count(*) FROM run_annotations WHERE run_id = ?", (rid,)) == [(0,)]
    assert [e["type"] for e in await events_of(server, keep["id"])].count("run.issue.created") == 1
    assert (await server.get_run(keep["id"]))["annotation"] == "correct"
    assert (await server.request("GET", f"/v1/runs/{keep['id']}/issues/{kept['id']}"))[0] == 200
    _, page = await server.request("GET", "/v1/runs?annotation=critical")
    assert page["data"] == []


@sqlite_only("the database file and its write-ahead log are in the data directory")
async def test_an_erased_correction_is_gone_from_the_disk(server: Server) -> None:
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)
    words = "I teach at Saint Agatha's primary school"
    await open_issue(server, run["id"], type="transcriber", message_id=heard["id"], correction=words,
                     correction_reason="she named her school, Saint Agatha's", status="approved")  # fmt: skip
    assert files_holding(server.config.data_dir, words)
    assert (await server.request("DELETE", f"/v1/runs/{run['id']}"))[0] == 200
    assert files_holding(server.config.data_dir, "Saint Agatha") == []


# --- following review work ------------------------------------------------------------------------------------


async def test_review_events_reach_webhooks_and_the_event_stream(
    server_factory: ServerFactory,
    receiver: Receiver,  # noqa: F811
) -> None:
    server = await server_factory(**FAST)
    await receiver.start()
    hook = await subscribe(server, receiver.url, "run.annotated", "run.issue.created", "run.issue.updated")
    run, transcript = await interview(server)
    heard = said_by_participant(transcript, MISHEARD)

    async def analysed() -> bool:
        return any(e["type"] == "run.result_ready" for e in await events_of(server, run["id"]))

    await eventually(analysed)  # the run's own story is over: what follows is review
    await server.request("PATCH", f"/v1/runs/{run['id']}", json={"annotation": "incorrect"})
    _, issue = await open_issue(server, run["id"], type="transcriber", message_id=heard["id"], correction=MEANT)
    await change(server, run["id"], issue["id"], status="approved")

    async def delivered() -> bool:
        return len(receiver.received) >= 3

    assert await eventually(delivered, timeout=10)
    bodies = sorted((r.json for r in receiver.received), key=lambda b: b["seq"])
    assert [b["type"] for b in bodies] == ["run.annotated", "run.issue.created", "run.issue.updated"]
    assert all(b["run_id"] == run["id"] and b["webhook_id"] == hook["id"] for b in bodies)
    assert bodies[0]["data"]["annotation"] == "incorrect"
    assert bodies[1]["data"]["issue"]["correction"] == MEANT and bodies[1]["data"]["issue"]["status"] == "open"
    assert bodies[2]["data"]["issue"]["applied"] is True and bodies[2]["data"]["previous_status"] == "open"

    # the event stream of a finished run goes on past its analysis to the review that came after it
    async with server.http.get(f"{server.url}/v1/runs/{run['id']}/events", headers=server.auth) as resp:
        stream = await resp.text()  # ends by itself: the run is settled and every event was sent
    names = [line.removeprefix("event: ") for line in stream.splitlines() if line.startswith("event: ")]
    assert names.index("run.result_ready") < names.index("run.annotated") < names.index("run.issue.updated")
