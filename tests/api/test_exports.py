"""Study-level exports: a blueprint's runs as one table (csv, jsonl, xlsx) and its transcripts as one zip."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.api.test_chat import complete_interview
from tests.api.test_rest import assert_error
from tests.conftest import BLUEPRINT, Server

RESULT_BLUEPRINT = {
    **BLUEPRINT,
    "result_schema": {"type": "object", "properties": {"sentiment": {"type": "string"}, "topics": {"type": "array"}}},
}


async def fetch(server: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    async with server.http.get(server.url + path, headers=server.auth) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def study(server: Server) -> tuple[str, list[dict[str, Any]], list[list[str]]]:
    """A blueprint with three runs: two interviews completed (by P-1 and P-2), one never joined."""
    bp = await server.create_blueprint(RESULT_BLUEPRINT)
    runs, said = [], []
    for pid in ("P-1", "P-2", "P-3"):
        runs.append(await server.create_run(blueprint_id=bp, participant={"external_id": pid}, metadata={"w": pid}))
    for run in runs[:2]:
        said.append(await complete_interview(server, run))
    result = json.dumps({"sentiment": "positive", "topics": ["work", "food"]})
    await server.state.store.db.write(
        lambda tx: tx.change("UPDATE runs SET result = ? WHERE id = ?", (result, runs[0]["id"]))
    )
    return bp, runs, said


def xlsx_rows(data: bytes) -> list[list[str]]:
    """The first sheet's cells as text, read from the workbook's XML (no spreadsheet library needed)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        shared = []
        if "xl/sharedStrings.xml" in book.namelist():
            root = ElementTree.fromstring(book.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t")) for si in root.findall("m:si", ns)]
        sheet = ElementTree.fromstring(book.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in sheet.iter(f"{{{ns['m']}}}row"):
        cells: dict[int, str] = {}
        for c in row.findall("m:c", ns):
            col = sum((ord(ch) - 64) * 26**i for i, ch in enumerate(reversed(re.sub(r"\d", "", c.get("r", "")))))
            if c.get("t") == "s":
                cells[col] = shared[int(c.findtext("m:v", "", ns))]
            elif c.get("t") == "inlineStr":
                cells[col] = "".join(t.text or "" for t in c.iter(f"{{{ns['m']}}}t"))
            else:
                cells[col] = c.findtext("m:v", "", ns)
        rows.append([cells.get(i, "") for i in range(1, max(cells, default=0) + 1)])
    return rows


async def test_responses_as_csv_one_row_per_run_one_column_per_question(server: Server) -> None:
    bp, runs, said = await study(server)
    status, headers, body = await fetch(server, f"/v1/blueprints/{bp}/responses?format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert f'filename="{bp}-responses.csv"' in headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(table[0]) == [
        "run_id", "external_id", "status", "end_reason", "created_at", "started_at", "ended_at", "duration_s",
        "annotation", "q1", "q1.declined", "q1.probes", "q2", "q2.declined", "q2.probes", "q3", "q3.declined",
        "q3.probes", "result.sentiment", "result.topics",
    ]  # fmt: skip
    assert [r["run_id"] for r in table] == [r["id"] for r in reversed(runs)]  # newest first
    by_pid = {r["external_id"]: r for r in table}
    first = by_pid["P-1"]
    assert first["status"] == "completed" and first["end_reason"] == "completed" and float(first["duration_s"]) > 0
    assert first["q1"] == f"{said[0][0]} {said[0][1]}"  # the short answer and the one after the probe
    assert (first["q1.probes"], first["q2.probes"], first["q1.declined"]) == ("1", "0", "False")
    assert first["q3"] == said[0][3]
    assert first["result.sentiment"] == "positive" and json.loads(first["result.topics"]) == ["work", "food"]
    assert first["annotation"] == ""  # not reviewed (tests/api/test_annotations.py reviews one)
    assert by_pid["P-2"]["result.sentiment"] == ""
    never = by_pid["P-3"]
    assert never["status"] == "pending" and never["q1"] == "" and never["started_at"] == ""


async def test_responses_as_json_lines_and_xlsx_say_the_same(server: Server) -> None:
    bp, runs, said = await study(server)
    _, headers, body = await fetch(server, f"/v1/blueprints/{bp}/responses?format=jsonl")
    assert headers["Content-Type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["run_id"] for r in records] == [r["id"] for r in reversed(runs)]
    p1 = next(r for r in records if r["external_id"] == "P-1")
    assert [x["answer"] for x in p1["responses"]][1:] == said[0][2:]
    assert p1["result"] == {"sentiment": "positive", "topics": ["work", "food"]} and p1["metadata"] == {"w": "P-1"}
    _, _, csv_body = await fetch(server, f"/v1/blueprints/{bp}/responses")  # csv is the default
    table = list(csv.reader(io.StringIO(csv_body.decode())))
    status, headers, xlsx = await fetch(server, f"/v1/blueprints/{bp}/responses?format=xlsx")
    assert status == 200 and headers["Content-Type"].startswith("application/vnd.openxmlformats")
    sheet = xlsx_rows(xlsx)
    assert sheet[0] == table[0] and len(sheet) == len(table)
    for got, want in zip(sheet[1:], table[1:], strict=True):
        assert got[:4] == want[:4] and got[9] == want[9]  # ids, status, the first answer


async def test_responses_are_filtered_like_the_run_list(server: Server) -> None:
    bp, runs, _ = await study(server)

    async def ids(query: str) -> list[str]:
        status, _, body = await fetch(server, f"/v1/blueprints/{bp}/responses?format=jsonl&{query}")
        assert status == 200, body
        return [json.loads(line)["run_id"] for line in body.decode().splitlines()]

    assert set(await ids("status=completed")) == {runs[0]["id"], runs[1]["id"]}
    assert await ids("metadata[w]=P-2") == [runs[1]["id"]]
    assert await ids(f"created_after={runs[2]['created_at']}") == [runs[2]["id"]]
    assert set(await ids(f"created_before={runs[2]['created_at']}")) == {runs[0]["id"], runs[1]["id"]}
    assert await ids("created_after=2999-01-01T00:00:00Z") == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("format=pdf", "format"),
        ("status=done", "status"),
        ("created_after=yesterday", "created_after"),
        ("created_after=2026-01-01T00:00:00", "created_after"),
        ("colour=red", "colour"),
    ],
)
async def test_export_queries_are_checked(server: Server, query: str, param: str) -> None:
    bp = await server.create_blueprint()
    status, body = await server.request("GET", f"/v1/blueprints/{bp}/responses?{query}")
    assert_error(status, body, 400, "invalid_request", param)


@pytest.mark.parametrize("value", ["", "yes", "1"])
async def test_the_recordings_flag_is_true_or_false_and_nothing_else(server: Server, value: str) -> None:
    bp = await server.create_blueprint()
    status, body = await server.request("GET", f"/v1/blueprints/{bp}/transcripts.zip?recordings={value}")
    assert_error(status, body, 400, "invalid_request", "recordings")


async def test_an_export_walks_every_page_of_a_large_study_once(server: Server) -> None:
    bp = await server.create_blueprint()
    made = {(await server.create_run(blueprint_id=bp))["id"] for _ in range(230)}  # more than one page (200)
    _, _, body = await fetch(server, f"/v1/blueprints/{bp}/responses")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 230 and {r["run_id"] for r in rows} == made


async def test_transcripts_zip_has_every_runs_transcript_and_optionally_its_recording(server: Server) -> None:
    bp, runs, _ = await study(server)
    recording = server.state.voice.recordings.path(runs[0]["id"])
    recording.parent.mkdir(parents=True, exist_ok=True)
    recording.write_bytes(b"RIFF" + bytes(range(256)) * 64)
    status, headers, body = await fetch(server, f"/v1/blueprints/{bp}/transcripts.zip?format=vtt")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(f"{r['id']}.vtt" for r in runs)
        for run in runs:
            _, _, want = await fetch(server, f"/v1/runs/{run['id']}/transcript?format=vtt")
            assert archive.read(f"{run['id']}.vtt") == want
    _, _, body = await fetch(server, f"/v1/blueprints/{bp}/transcripts.zip?recordings=true&status=completed")
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = set(archive.namelist())
        assert names == {f"{runs[0]['id']}.txt", f"{runs[1]['id']}.txt", f"{runs[0]['id']}.wav"}
        assert archive.read(f"{runs[0]['id']}.wav") == recording.read_bytes()


async def test_another_organizations_study_cannot_be_exported(server: Server) -> None:
    bp = await server.create_blueprint()
    catalog = server.state.store.catalog
    other = await catalog.create_api_key(await catalog.create_organization("o"))
    for path in (f"/v1/blueprints/{bp}/responses", f"/v1/blueprints/{bp}/transcripts.zip"):
        assert_error(*await server.request("GET", path, key=other), 404, "not_found")
