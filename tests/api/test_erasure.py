"""DELETE /v1/runs/{id} erases a participant's data (a tombstone stays); an organization's retention does it alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from api.routes_org import erase_expired
from tests.api.test_chat import complete_interview
from tests.api.test_rest import assert_error
from tests.conftest import BLUEPRINT, Server, ServerFactory, eventually, sqlite_only

DAY = 86400.0


async def key_id(server: Server) -> str:
    found = await server.state.store.catalog.key_for(server.api_key)
    assert found is not None
    return found[1]


def files_holding(data_dir: Path, text: str) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


async def test_delete_erases_the_participants_data_and_keeps_a_tombstone(server: Server) -> None:
    participant = {"external_id": "PROLIFIC-5f3a", "name": "Ada Lovelace", "email": "ada@example.org",
                   "phone": "+442071838750"}  # fmt: skip
    run = await server.create_run(participant=participant, metadata={"cohort": "wave-2"})
    await complete_interview(server, run)
    recording = server.state.voice.recordings.path(run["id"])  # what a voice run with recording: true leaves
    recording.parent.mkdir(parents=True, exist_ok=True)
    recording.write_bytes(b"RIFF....WAVE")

    status, erased = await server.request("DELETE", f"/v1/runs/{run['id']}")
    assert status == 200, erased
    assert erased["erased_by"] == await key_id(server) and erased["erased_at"] is not None
    assert erased["participant"] == {"external_id": None, "name": None, "email": None, "phone": None, "metadata": {}}
    assert erased["metadata"] == {}
    # the tombstone: what happened, not what was said
    assert (erased["status"], erased["end_reason"]) == ("completed", "completed")
    assert erased["started_at"] is not None and erased["ended_at"] is not None

    got = await server.get_run(run["id"], "transcript", "responses", "sessions", "result")
    assert got["transcript"] == [] and got["sessions"] == []
    assert [r["answer"] for r in got["responses"]] == ["", "", ""]
    assert got["result"]["summary"] is None and got["result"]["result"] is None
    # what the run held is gone, and says so (an empty 200 would read as an interview in which nothing was said)
    for what in ("transcript", "transcript?format=txt", "events", "recording"):
        path = f"/v1/runs/{run['id']}/{what}"
        status, body = await server.request("GET", path, headers={"Accept": "application/json"})
        assert status == 410 and body["error"]["type"] == "gone", (what, body)
        assert "erased" in body["error"]["message"] and erased["erased_by"] in body["error"]["message"]
    assert not recording.exists()
    _, page = await server.request("GET", "/v1/runs?metadata[cohort]=wave-2")
    assert page["data"] == []  # the metadata is gone from the index too

    again = await server.request("DELETE", f"/v1/runs/{run['id']}")
    assert again[0] == 200 and again[1]["erased_at"] == erased["erased_at"]  # erasing twice changes nothing


@sqlite_only("the database file and its write-ahead log are in the data directory")
async def test_erased_text_is_gone_from_the_disk(server: Server) -> None:
    run = await server.create_run(participant={"name": "Ada Lovelace", "email": "ada@example.org"})
    said = await complete_interview(server, run)
    assert files_holding(server.config.data_dir, said[1])  # on disk before
    assert (await server.request("DELETE", f"/v1/runs/{run['id']}"))[0] == 200
    for text in (*said, "Ada Lovelace", "ada@example.org"):
        assert files_holding(server.config.data_dir, text) == [], text  # not in the database, its log or a file


async def test_deleting_a_live_run_ends_it_first(server: Server) -> None:
    run = await server.create_run()
    participant = await server.join(run)
    await participant.until("message", kind="question", question_id="q1")
    await participant.say("I am a teacher and I like it a lot")
    status, erased = await server.request("DELETE", f"/v1/runs/{run['id']}")
    assert status == 200 and erased["status"] == "cancelled" and erased["erased_at"] is not None
    ended = await participant.until("run.ended")
    assert ended["reason"] == "cancelled"
    await participant.close()
    assert (await server.get_run(run["id"], "transcript"))["transcript"] == []


async def test_another_organizations_run_cannot_be_deleted(server: Server) -> None:
    run = await server.create_run()
    catalog = server.state.store.catalog
    other = await catalog.create_api_key(await catalog.create_organization("other"))
    assert_error(*await server.request("DELETE", f"/v1/runs/{run['id']}", key=other), 404, "not_found")
    assert_error(*await server.request("DELETE", "/v1/runs/run_nope"), 404, "not_found")
    assert (await server.get_run(run["id"]))["erased_at"] is None


async def _ended_days_ago(server: Server, run: dict[str, Any], days: float) -> None:
    assert (await server.request("POST", f"/v1/runs/{run['id']}/cancel"))[0] == 200
    when = time.time() - days * DAY
    await server.state.store.db.write(
        lambda tx: tx.change("UPDATE runs SET created_at = ?, ended_at = ? WHERE id = ?", (when, when, run["id"]))
    )


async def test_retention_erases_runs_that_ended_longer_ago_and_nothing_else(server: Server) -> None:
    status, org = await server.request("PATCH", "/v1/organization", json={"retention_days": 30})
    assert status == 200 and org["retention_days"] == 30
    old, recent, pending = [await server.create_run() for _ in range(3)]
    await _ended_days_ago(server, old, 31)
    await _ended_days_ago(server, recent, 29)
    catalog = server.state.store.catalog
    other_key = await catalog.create_api_key(await catalog.create_organization("keeps everything"))
    _, bp = await server.request("POST", "/v1/blueprints", key=other_key, json=BLUEPRINT)
    await server.request("POST", f"/v1/blueprints/{bp['id']}/publish", key=other_key)
    _, chn = await server.request("POST", "/v1/channels", key=other_key, json={"type": "chat", "name": "c"})
    _, foreign = await server.request(
        "POST", "/v1/runs", key=other_key, json={"blueprint_id": bp["id"], "channel_id": chn["id"]}
    )
    await server.request("POST", f"/v1/runs/{foreign['id']}/cancel", key=other_key)
    await server.state.store.db.write(
        lambda tx: tx.change("UPDATE runs SET ended_at = ? WHERE id = ?", (time.time() - 400 * DAY, foreign["id"]))
    )

    assert await erase_expired(server.state) == 1
    assert (await server.get_run(old["id"]))["erased_by"] == "retention"
    for kept in (recent, pending):
        assert (await server.get_run(kept["id"]))["erased_at"] is None
    _, foreign_now = await server.request("GET", f"/v1/runs/{foreign['id']}", key=other_key)
    assert foreign_now["erased_at"] is None  # its organization sets no retention
    assert await erase_expired(server.state) == 0


async def test_the_sweeper_applies_retention_by_itself(server_factory: ServerFactory) -> None:
    server = await server_factory(sweep_interval_s=0.05)
    await server.request("PATCH", "/v1/organization", json={"retention_days": 7})
    run = await server.create_run()
    await _ended_days_ago(server, run, 8)

    async def erased() -> Any:
        return (await server.get_run(run["id"]))["erased_by"] == "retention"

    assert await eventually(erased)


@pytest.mark.parametrize("value", [0, 3651, True, "30", 1.5])
async def test_retention_must_be_a_whole_number_of_days_in_range(server: Server, value: Any) -> None:
    answer = await server.request("PATCH", "/v1/organization", json={"retention_days": value})
    assert_error(*answer, 400, "invalid_request", "retention_days")


async def test_retention_can_be_cleared_and_the_organization_is_the_keys(server: Server) -> None:
    await server.request("PATCH", "/v1/organization", json={"retention_days": 90})
    status, org = await server.request("PATCH", "/v1/organization", json={})
    assert status == 200 and org["retention_days"] == 90  # an empty patch changes nothing
    status, org = await server.request("PATCH", "/v1/organization", json={"retention_days": None})
    assert status == 200 and org["retention_days"] is None
    status, got = await server.request("GET", "/v1/organization")
    assert got["id"].startswith("org_") and got["name"] == "Default organization" and got["object"] == "organization"
