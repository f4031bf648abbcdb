"""Runs: create, list, fetch with expansions, cancel, and the transcript export."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from api.openapi import Param, RouteTable
from api.params import check_query, page, parse_body, path_id, single
from api.routes_catalog import ID, page_params
from api.schemas import ListOut, RunIn, RunOut
from api.state import KEY_ID, ORG_ID, STATE, AppState
from runtime.analysis import analyse, collect_responses, latency_summary
from runtime.errors import Conflict, Gone, InvalidRequest, NotFound
from runtime.ids import is_id
from runtime.review import RunAnnotation, annotation_fields, apply_corrections, issue_json
from runtime.serialize import blueprint_json, channel_json, iso, message_json, run_json, session_json
from runtime.storage import RunFilter
from runtime.storage.database import Transaction
from runtime.storage.jobs import JobStatus
from runtime.transcript import MEDIA_TYPES, TranscriptFormat, render_transcript
from runtime.types import ChannelType, EndReason, Participant, Run, RunStatus

routes = RouteTable()

EXPANDABLE = (
    "blueprint", "channel", "connector", "sessions", "transcript", "responses", "analysis", "result", "issues",
)  # fmt: skip
READS_TEXT = frozenset({"transcript", "responses", "analysis"})  # what shows approved corrections


def _expansions(request: web.Request) -> set[str]:
    return parse_expand(request.query.getall("expand", []))


def parse_expand(values: list[str]) -> set[str]:
    """``expand`` values (each may be comma-separated); an unknown one is a 400 naming it."""
    wanted: set[str] = set()
    for raw in values:
        for value in raw.split(","):
            value = value.strip()
            if value not in EXPANDABLE:
                raise InvalidRequest(
                    f"unknown expand value {value[:40]!r}; expected one of {', '.join(EXPANDABLE)}", param="expand"
                )
            wanted.add(value)
    return wanted


async def render_run(state: AppState, run: Run, expand: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    store = state.store
    result = await _result(state, run) if "result" in expand else None
    if result is not None and result["status"] == "ready":  # read again after it: the run's usage includes the
        run = await store.runs.get_run(run.id)  # analysis', stored in the same transaction as the result
    body = run_json(run, join_url=state.join_url(run.join_token))
    body.update(annotation_fields(await store.review.annotation(run.id)))
    messages = await store.messages.list_messages(run.id) if run.started_at is not None else []  # unjoined: none
    body["latency"] = latency_summary(messages)
    if not expand:
        return body
    if messages and expand & READS_TEXT:  # as reviewed: approved transcriber corrections in place
        messages = apply_corrections(messages, await store.review.corrections(run.id))
    bp = await store.catalog.get_blueprint(run.org_id, run.blueprint_id, run.blueprint_version)
    sessions = await store.runs.list_sessions(run.id) if expand & {"sessions", "analysis"} else []
    if "blueprint" in expand:
        body["blueprint"] = blueprint_json(bp)
    if "channel" in expand:
        body["channel"] = (
            channel_json(await store.catalog.get_channel(run.org_id, run.channel_id)) if run.channel_id else None
        )
    if "connector" in expand:
        body["connector"] = None  # connectors arrive with telephony; runs cannot reference one yet
    if "sessions" in expand:
        body["sessions"] = [session_json(s) for s in sessions]
    if "transcript" in expand:
        body["transcript"] = [message_json(m, run.started_at) for m in messages]
    if "responses" in expand:
        body["responses"] = collect_responses(bp.content, messages)
    if "analysis" in expand:
        body["analysis"] = analyse(bp.content, messages, sessions, run)
    if result is not None:
        body["result"] = result
    if "issues" in expand:
        body["issues"] = [issue_json(i) for i in (await store.review.issues(run.id))[0]]
    return body


async def _result(state: AppState, run: Run) -> dict[str, Any]:
    summary, result, error, analysed_at = await state.store.runs.analysis(run.id)
    if analysed_at is not None:
        status = "ready"
    else:
        jobs = await state.jobs.jobs.for_run(run.id)
        status = "failed" if jobs and all(j.status is JobStatus.FAILED for j in jobs) else "pending"
        if status == "failed":
            error = jobs[-1].last_error
    return {
        "status": status,
        "summary": summary,
        "result": result,
        "result_error": error,
        "analysed_at": iso(analysed_at),
    }


@routes.route(
    "POST",
    "/v1/runs",
    summary="Create a run for one participant; returns its join_url",
    tag="runs",
    body=RunIn,
    response=RunOut,
    status=201,
    errors=(404, 409),
)
async def create_run(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    body = await parse_body(request, RunIn)
    run = await new_run(state, request[ORG_ID], body)
    return web.json_response(await render_run(state, run), status=201)


async def new_run(
    state: AppState, org_id: str, body: RunIn, *, also: Callable[[Transaction, str], None] | None = None
) -> Run:
    """Create a run as ``POST /v1/runs`` does (the MCP tool and study links too; ``also`` writes beside it)."""
    if not is_id(body.blueprint_id, "blueprint"):
        raise NotFound(f"No blueprint {body.blueprint_id!r}", param="blueprint_id")
    try:
        version, _ = await state.store.catalog.published_content(org_id, body.blueprint_id)
    except NotFound as exc:
        raise NotFound(exc.message, param="blueprint_id") from None
    if body.channel_id is not None:
        if not is_id(body.channel_id, "channel"):
            raise NotFound(f"No channel {body.channel_id!r}", param="channel_id")
        channel = await state.store.catalog.get_channel(org_id, body.channel_id)
    else:
        raise NotFound(f"No connector {body.connector_id!r}", param="connector_id")
    p = body.participant
    return await state.store.runs.create_run(
        org_id,
        blueprint_id=body.blueprint_id,
        blueprint_version=version,
        channel_id=body.channel_id,
        connector_id=body.connector_id,
        participant=Participant(p.external_id, p.name, p.email, p.metadata, p.phone),
        metadata=body.metadata,
        join_window_s=state.config.scaled(state.config.join_window_s),
        also=also,
        with_pin=channel.type is ChannelType.TELEPHONY,
    )


@routes.route(
    "GET",
    "/v1/runs",
    summary="List runs, newest first",
    tag="runs",
    response=ListOut,
    params=(
        *page_params("run"),
        Param("blueprint_id", "Only runs of this blueprint"),
        Param("status", "Only runs with this status", {"type": "string", "enum": [s.value for s in RunStatus]}),
        Param("metadata[key]", "Only runs whose metadata has this key with this value"),
        Param("annotation", "Only runs with this annotation",
              {"type": "string", "enum": [a.value for a in RunAnnotation]}),
    ),
)  # fmt: skip
async def list_runs(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after", "blueprint_id", "status", "annotation"), prefixes=("metadata[",))
    state = request.app[STATE]
    limit, cursor = page(request, "run")
    status_raw = single(request, "status")
    try:
        status = RunStatus(status_raw) if status_raw is not None else None
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise InvalidRequest(f"unknown status {status_raw!r}; expected one of {allowed}", param="status") from None
    metadata: dict[str, str] = {}
    for name in request.query:
        if name.startswith("metadata["):
            if not name.endswith("]") or len(name) <= len("metadata[]"):
                raise InvalidRequest("metadata filters look like metadata[key]=value", param=name)
            metadata[name[len("metadata[") : -1]] = single(request, name) or ""
    annotation = single(request, "annotation")
    if annotation is not None and annotation not in {a.value for a in RunAnnotation}:
        allowed = ", ".join(a.value for a in RunAnnotation)
        raise InvalidRequest(f"unknown annotation {annotation[:40]!r}; expected one of {allowed}", param="annotation")
    where = RunFilter(
        blueprint_id=single(request, "blueprint_id"), status=status, metadata=metadata, annotation=annotation
    )
    runs, has_more = await state.store.runs.list_runs(request[ORG_ID], limit=limit, starting_after=cursor, where=where)
    data = [await render_run(state, run) for run in runs]
    return web.json_response({"object": "list", "data": data, "has_more": has_more})


async def _run_of(request: web.Request) -> Run:
    return await request.app[STATE].store.runs.get_run(path_id(request, "run"), org_id=request[ORG_ID])


def with_data(run: Run, what: str) -> Run:
    """The run, if its participant's data still exists: an erased run's transcript, events and recording are gone.

    The run itself stays readable as a tombstone (who erased it and when); what it held answers 410, not an
    empty 200 that would read as an interview in which nothing was said.
    """
    if run.erased_at is not None:
        raise Gone(f"Run {run.id}'s {what} was erased at {iso(run.erased_at)} (by {run.erased_by})", param="id")
    return run


@routes.route(
    "GET",
    "/v1/runs/{id}",
    summary="Get a run; expand=… inlines related objects",
    tag="runs",
    response=RunOut,
    errors=(404,),
    params=(
        ID,
        Param(
            "expand",
            "Repeatable: " + ", ".join(EXPANDABLE),
            {"type": "array", "items": {"type": "string", "enum": list(EXPANDABLE)}},
        ),
    ),
)
async def get_run(request: web.Request) -> web.Response:
    check_query(request, ("expand",))
    expand = _expansions(request)
    run = await _run_of(request)
    return web.json_response(await render_run(request.app[STATE], run, expand))


@routes.route(
    "POST",
    "/v1/runs/{id}/cancel",
    summary="Cancel a run; a live participant is told and disconnected",
    tag="runs",
    response=RunOut,
    errors=(404, 409),
    params=(ID,),
)
async def cancel_run(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    ended = await cancel(state, await _run_of(request))
    return web.json_response(await render_run(state, ended))


async def cancel(state: AppState, run: Run) -> Run:
    """End a run as cancelled (a live participant is told); 409 if it had already ended."""
    if run.status.is_terminal:
        raise Conflict(f"Run {run.id} has already ended ({run.status.value})")
    ended = await state.live.end(run, EndReason.CANCELLED)
    if ended is None:
        latest = await state.store.runs.get_run(run.id)
        raise Conflict(f"Run {run.id} has already ended ({latest.status.value})")
    return ended


@routes.route(
    "DELETE",
    "/v1/runs/{id}",
    summary="Erase a participant's data (transcript, recording, analysis, responses); the run stays as a tombstone",
    tag="runs",
    response=RunOut,
    errors=(404,),
    params=(ID,),
)
async def delete_run(request: web.Request) -> web.Response:
    """A run in progress is cancelled first. Erasing an erased run again changes nothing (and answers the same)."""
    check_query(request, ())
    state = request.app[STATE]
    run = await erase(state, await _run_of(request), by=request[KEY_ID])
    return web.json_response(await render_run(state, run))


async def erase(state: AppState, run: Run, *, by: str) -> Run:
    """Erase a run's data (ending it first if it is live); its recording file goes after the commit."""
    if not run.status.is_terminal:
        await state.live.end(run, EndReason.CANCELLED)
    if await state.store.erasure.erase(run.id, by=by):
        state.voice.recordings.finish(run.id)
        state.voice.recordings.path(run.id).unlink(missing_ok=True)
    return await state.store.runs.get_run(run.id)


@routes.route(
    "GET",
    "/v1/runs/{id}/transcript",
    summary="The transcript as json, txt, vtt or srt",
    tag="runs",
    errors=(404, 410),
    content_types=tuple(dict.fromkeys(MEDIA_TYPES.values())),
    params=(
        ID,
        Param(
            "format", "Output format (default json)", {"type": "string", "enum": [f.value for f in TranscriptFormat]}
        ),
    ),
)
async def get_transcript(request: web.Request) -> web.Response:
    check_query(request, ("format",))
    raw = single(request, "format")
    raw = "json" if raw is None else raw
    try:
        fmt = TranscriptFormat(raw)
    except ValueError:
        allowed = ", ".join(f.value for f in TranscriptFormat)
        raise InvalidRequest(f"unknown format {raw!r}; expected one of {allowed}", param="format") from None
    run = with_data(await _run_of(request), "transcript")
    messages = await request.app[STATE].store.review.messages(run.id)  # with approved corrections
    text = render_transcript(fmt, run_id=run.id, run_started_at=run.started_at, messages=messages)
    ctype, _, charset = MEDIA_TYPES[fmt].partition("; charset=")
    response = web.Response(text=text, content_type=ctype, charset=charset or "utf-8")
    if fmt is not TranscriptFormat.JSON:
        response.headers["Content-Disposition"] = f'inline; filename="{run.id}.{fmt.value}"'
    return response
