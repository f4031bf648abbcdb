"""Study-level exports: every run of a blueprint as one table of answers, or every transcript in one zip.

Researchers analyse a study, not one run. Both exports walk the blueprint's runs
a page at a time (keyset pagination, newest first) and write each page out before
reading the next, so a study of ten thousand runs is exported in the memory of a
page: CSV and JSON Lines are streamed as they are made; an xlsx workbook is written
row by row to a temporary file (constant memory) and then streamed; the zip is
streamed entry by entry (recordings in chunks).

One row per run: run and participant ids, status, end reason, times, its
reviewer's annotation, then per question (of the latest version) the answer,
whether it was declined and how many follow-ups it took, then one column per
property of the blueprint's ``result_schema`` (the analysis' structured result),
when it has one. Answers and transcripts are as reviewed: an approved transcriber
correction is the text (JSON shapes keep the recognised text beside it).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import tempfile
import zipfile
from collections.abc import AsyncIterator
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from aiohttp import web

from api.openapi import Param, RouteTable
from api.params import check_query, flag, path_id, single
from api.routes_catalog import ID
from api.state import ORG_ID, STATE, AppState
from runtime.analysis import collect_responses
from runtime.errors import InvalidRequest
from runtime.review import annotation_fields
from runtime.serialize import iso
from runtime.storage import RunFilter
from runtime.transcript import TranscriptFormat, render_transcript
from runtime.types import Blueprint, BlueprintContent, Run, RunStatus

routes = RouteTable()

PAGE = 200


class TableFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    XLSX = "xlsx"


TABLE_TYPES = {
    TableFormat.CSV: "text/csv",
    TableFormat.JSONL: "application/x-ndjson",
    TableFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
FILTERS = (
    Param("status", "Only runs with this status", {"type": "string", "enum": [s.value for s in RunStatus]}),
    Param("created_after", "Only runs created at or after this time (ISO 8601 with a time zone)",
          {"type": "string", "format": "date-time"}),
    Param("created_before", "Only runs created before this time (ISO 8601 with a time zone)",
          {"type": "string", "format": "date-time"}),
    Param("metadata[key]", "Only runs whose metadata has this key with this value"),
)  # fmt: skip


# --- which runs -------------------------------------------------------------------------------------------------


def _time(request: web.Request, name: str) -> float | None:
    raw = single(request, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name} must be a date and time (ISO 8601)", param=name) from None
    if value.tzinfo is None:
        raise InvalidRequest(f"{name} must include a time zone (for example Z or +02:00)", param=name)
    return value.timestamp()


def _filter(request: web.Request, blueprint_id: str) -> tuple[RunFilter, float | None, float | None]:
    raw = single(request, "status")
    try:
        status = RunStatus(raw) if raw is not None else None
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise InvalidRequest(f"unknown status {raw!r}; expected one of {allowed}", param="status") from None
    metadata: dict[str, str] = {}
    for name in request.query:
        if name.startswith("metadata["):
            if not name.endswith("]") or len(name) <= len("metadata[]"):
                raise InvalidRequest("metadata filters look like metadata[key]=value", param=name)
            metadata[name[len("metadata[") : -1]] = single(request, name) or ""
    return (
        RunFilter(blueprint_id=blueprint_id, status=status, metadata=metadata),
        _time(request, "created_after"),
        (_time(request, "created_before")),
    )


async def _runs(state: AppState, org_id: str, where: RunFilter, after: float | None, before: float | None
                ) -> AsyncIterator[list[Run]]:  # fmt: skip
    """The matching runs, newest first, a page at a time."""
    cursor: str | None = None
    while True:
        runs, has_more = await state.store.runs.list_runs(org_id, limit=PAGE, starting_after=cursor, where=where)
        if not runs:
            return
        cursor = runs[-1].id
        chosen = [
            r for r in runs if (after is None or r.created_at >= after) and (before is None or r.created_at < before)
        ]
        if chosen:
            yield chosen
        if not has_more or (after is not None and runs[-1].created_at < after):  # ids are time-ordered
            return


class _Versions:
    """The blueprint's versions the runs pinned (each read once)."""

    def __init__(self, state: AppState, org_id: str, blueprint_id: str) -> None:
        self.state, self.org_id, self.blueprint_id = state, org_id, blueprint_id
        self._seen: dict[int, BlueprintContent] = {}

    async def content(self, version: int) -> BlueprintContent:
        if version not in self._seen:
            bp = await self.state.store.catalog.get_blueprint(self.org_id, self.blueprint_id, version)
            self._seen[version] = bp.content
        return self._seen[version]


# --- one row per run ---------------------------------------------------------------------------------------------


FACTS = 9  # the columns before the answers: the run's facts and its annotation


def _columns(bp: Blueprint) -> tuple[list[str], list[str]]:
    """The table's columns, and the result properties among them."""
    columns = ["run_id", "external_id", "status", "end_reason", "created_at", "started_at", "ended_at", "duration_s",
               "annotation"]  # fmt: skip
    for q in bp.content.questions:
        columns += [q.id, f"{q.id}.declined", f"{q.id}.probes"]
    schema = bp.content.result_schema or {}
    props = list((schema.get("properties") or {}).keys()) if isinstance(schema, dict) else []
    return columns + [f"result.{p}" for p in props], props


async def _record(state: AppState, versions: _Versions, run: Run) -> dict[str, Any]:
    """A run as its JSON Lines record: its facts, its responses, its result."""
    content = await versions.content(run.blueprint_version)
    messages = await state.store.review.messages(run.id) if run.started_at is not None else []
    _summary, result, result_error, _at = await state.store.runs.analysis(run.id)
    annotation = annotation_fields(await state.store.review.annotation(run.id))
    duration = None if run.started_at is None or run.ended_at is None else round(run.ended_at - run.started_at, 3)
    return {
        "run_id": run.id,
        "external_id": run.participant.external_id,
        "blueprint_version": run.blueprint_version,
        "status": run.status.value,
        "end_reason": run.end_reason.value if run.end_reason else None,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "duration_s": duration,
        "metadata": run.metadata,
        **annotation,
        "responses": collect_responses(content, messages),
        "result": result,
        "result_error": result_error,
    }


def _row(record: dict[str, Any], columns: list[str], props: list[str]) -> list[Any]:
    cells: dict[str, Any] = {k: record[k] for k in columns[:FACTS]}
    for r in record["responses"]:
        cells[r["question_id"]] = r["answer"]
        cells[f"{r['question_id']}.declined"] = bool(r.get("declined", False))
        cells[f"{r['question_id']}.probes"] = r["probes_asked"]
    result = record["result"] if isinstance(record["result"], dict) else {}
    for p in props:
        value = result.get(p)
        cells[f"result.{p}"] = json.dumps(value) if isinstance(value, dict | list) else value
    return [cells.get(c) for c in columns]


def _csv_line(cells: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["" if c is None else c for c in cells])
    return out.getvalue().encode()


@routes.route("GET", "/v1/blueprints/{id}/responses", summary="Every run's answers, one row per run (csv, jsonl, xlsx)",
              tag="exports", errors=(404,), content_types=tuple(TABLE_TYPES.values()),
              params=(ID, Param("format", "csv (default), jsonl or xlsx",
                                {"type": "string", "enum": [f.value for f in TableFormat]}), *FILTERS))  # fmt: skip
async def export_responses(request: web.Request) -> web.StreamResponse:
    check_query(request, ("format", "status", "created_after", "created_before"), prefixes=("metadata[",))
    state = request.app[STATE]
    org_id = request[ORG_ID]
    raw = single(request, "format")
    try:
        fmt = TableFormat("csv" if raw is None else raw)
    except ValueError:
        raise InvalidRequest(f"unknown format {raw!r}; expected csv, jsonl or xlsx", param="format") from None
    bp = await state.store.catalog.get_blueprint(org_id, path_id(request, "blueprint"))
    where, after, before = _filter(request, bp.id)
    columns, props = _columns(bp)
    versions = _Versions(state, org_id, bp.id)
    name = f"{bp.id}-responses.{fmt.value}"
    if fmt is TableFormat.XLSX:
        return await _xlsx(request, state, org_id, (where, after, before), versions, columns, props, name)
    response = web.StreamResponse(
        headers={"Content-Type": TABLE_TYPES[fmt], "Content-Disposition": f'attachment; filename="{name}"'}
    )
    await response.prepare(request)
    if fmt is TableFormat.CSV:
        await response.write(_csv_line(columns))
    async for runs in _runs(state, org_id, where, after, before):
        chunk = bytearray()
        for run in runs:
            record = await _record(state, versions, run)
            if fmt is TableFormat.CSV:
                chunk += _csv_line(_row(record, columns, props))
            else:
                chunk += json.dumps(record, ensure_ascii=False).encode() + b"\n"
        await response.write(bytes(chunk))
    await response.write_eof()
    return response


Which = tuple[RunFilter, float | None, float | None]


async def _xlsx(request: web.Request, state: AppState, org_id: str, which: Which, versions: _Versions,
                columns: list[str], props: list[str], name: str) -> web.StreamResponse:  # fmt: skip
    import xlsxwriter  # only for this format

    with tempfile.TemporaryDirectory(prefix="vivavoce-export-") as tmp:
        path = Path(tmp) / name
        book = xlsxwriter.Workbook(str(path), {"constant_memory": True, "strings_to_urls": False})
        sheet = book.add_worksheet("responses")
        await asyncio.to_thread(sheet.write_row, 0, 0, columns)
        row = 1
        async for runs in _runs(state, org_id, *which):
            rows = [_row(await _record(state, versions, run), columns, props) for run in runs]

            def write(rows: list[list[Any]] = rows, start: int = row) -> None:
                for i, cells in enumerate(rows):
                    sheet.write_row(start + i, 0, ["" if c is None else c for c in cells])

            await asyncio.to_thread(write)
            row += len(rows)
        await asyncio.to_thread(book.close)
        response = web.StreamResponse(
            headers={
                "Content-Type": TABLE_TYPES[TableFormat.XLSX],
                "Content-Disposition": f'attachment; filename="{name}"',
            }
        )
        await response.prepare(request)
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, 256 * 1024):
                await response.write(chunk)
        await response.write_eof()
        return response


# --- every transcript ---------------------------------------------------------------------------------------------


class _Spool(io.RawIOBase):
    """Where zipfile writes: bytes kept until the handler sends them (it has no tell(), so zipfile streams)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


@routes.route("GET", "/v1/blueprints/{id}/transcripts.zip", summary="Every run's transcript (and recording) in a zip",
              tag="exports", errors=(404,), content_types=("application/zip",),
              params=(ID, Param("format", "Transcript format: txt (default), json, vtt, srt",
                                {"type": "string", "enum": [f.value for f in TranscriptFormat]}),
                      Param("recordings", "true: add each run's recording (WAV), if it has one", {"type": "boolean"}),
                      *FILTERS))  # fmt: skip
async def export_transcripts(request: web.Request) -> web.StreamResponse:
    check_query(request, ("format", "recordings", "status", "created_after", "created_before"), prefixes=("metadata[",))
    state = request.app[STATE]
    org_id = request[ORG_ID]
    raw = single(request, "format")
    try:
        fmt = TranscriptFormat("txt" if raw is None else raw)
    except ValueError:
        allowed = ", ".join(f.value for f in TranscriptFormat)
        raise InvalidRequest(f"unknown format {raw!r}; expected one of {allowed}", param="format") from None
    with_recordings = flag(request, "recordings")
    bp = await state.store.catalog.get_blueprint(org_id, path_id(request, "blueprint"))
    where, after, before = _filter(request, bp.id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{bp.id}-transcripts.zip"',
        }
    )
    await response.prepare(request)
    spool = _Spool()
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
        async for runs in _runs(state, org_id, where, after, before):
            for run in runs:
                messages = await state.store.review.messages(run.id) if run.started_at is not None else []
                text = render_transcript(fmt, run_id=run.id, run_started_at=run.started_at, messages=messages)
                archive.writestr(f"{run.id}.{fmt.value}", text)
                await response.write(spool.take())
                path = state.voice.recordings.path(run.id)
                if with_recordings and path.exists() and run.id not in state.voice.recordings.open:
                    await _add_file(archive, spool, response, path, f"{run.id}.wav")
    await response.write(spool.take())
    await response.write_eof()
    return response


async def _add_file(
    archive: zipfile.ZipFile, spool: _Spool, response: web.StreamResponse, path: Path, name: str
) -> None:
    """A large file into the zip in chunks, each sent before the next is read."""
    info = zipfile.ZipInfo(name, date_time=datetime.fromtimestamp(path.stat().st_mtime).timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED  # audio does not deflate: not worth the CPU
    with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as entry:
        while chunk := await asyncio.to_thread(source.read, 256 * 1024):
            entry.write(chunk)
            await response.write(spool.take())
