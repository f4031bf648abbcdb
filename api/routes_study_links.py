"""Study links for recruitment panels: one link per study, a run per participant, and where they go afterwards.

``POST /v1/study-links`` makes a link for a published blueprint and a channel.
A participant opening ``/s/{token}?PROLIFIC_PID=…`` (the parameter name is the
link's ``participant_param``) gets a run made for them and is sent to its join
page; opening it again while the interview is open sends them back to it, and
once it has ended they are refused: one interview per participant. A link closes
at ``closes_at``, when ``active`` is set false, or once ``max_completes``
interviews have completed (participants already in an interview may finish).

When the interview ends the participant's page sends them to
``completion_redirect_url`` if it completed, else to ``screenout_redirect_url``
(also used when the link refuses them: full, closed, taken part already), with
``{run_id}``, ``{external_id}`` and ``{status}`` filled in: how Prolific,
Qualtrics and panel vendors register completions.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, field_validator

from api.errors import WEB_URL
from api.join import NOT_IN_BROWSER, _page
from api.openapi import Param, RouteTable
from api.params import check_query, page, parse_body, path_id
from api.routes_catalog import ID, page_params
from api.routes_runs import new_run
from api.schemas import (
    META_KEY_PATTERN,
    JsonBool,
    JsonInt,
    ListOut,
    Metadata,
    ParticipantIn,
    RunIn,
    Strict,
    int_schema,
)
from api.state import ORG_ID, STATE, AppState
from runtime.errors import Conflict, NotFound
from runtime.ids import is_id
from runtime.serialize import iso
from runtime.storage.study_links import StudyLink
from runtime.types import Run, RunStatus

routes = RouteTable()

PUBLIC = "/s/{token}"
MAX_PARTICIPANT_ID = 200
Completes = Annotated[JsonInt, Field(ge=1, le=1_000_000), int_schema(1, 1_000_000)]
REDIRECT_URL = Field(None, max_length=2048, pattern=WEB_URL, description="{run_id}, {external_id}, {status}")


class StudyLinkIn(Strict):
    blueprint_id: str = Field(min_length=1, max_length=64, description="A published blueprint")
    channel_id: str = Field(min_length=1, max_length=64, description="A chat or webrtc_voice channel")
    participant_param: str = Field(
        "PROLIFIC_PID", pattern=META_KEY_PATTERN, description="The URL parameter holding the participant's id"
    )
    metadata_params: list[str] = Field(
        default_factory=lambda: ["STUDY_ID", "SESSION_ID"],
        max_length=20,
        description="URL parameters kept in the run's metadata when present",
        json_schema_extra={"items": {"type": "string", "pattern": META_KEY_PATTERN}, "uniqueItems": True},
    )
    max_completes: Completes | None = Field(None, description="Close once this many completed")
    closes_at: AwareDatetime | None = Field(None, description="Close at this time (ISO 8601 with a time zone)")
    completion_redirect_url: str | None = REDIRECT_URL
    screenout_redirect_url: str | None = REDIRECT_URL
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("metadata_params")
    @classmethod
    def _params(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("each parameter at most once")
        for name in names:
            if not (1 <= len(name) <= 40) or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in name):
                raise ValueError(f"{name[:50]!r} must be 1-40 characters of letters, digits, '_', '.', '-'")
        return names


class StudyLinkPatch(Strict):
    """A JSON merge patch: null clears max_completes, closes_at and the redirect URLs."""

    active: JsonBool = Field(None, description="false closes the link now")  # type: ignore[assignment]
    max_completes: Completes | None = None
    closes_at: AwareDatetime | None = None
    completion_redirect_url: str | None = REDIRECT_URL
    screenout_redirect_url: str | None = REDIRECT_URL
    metadata: Metadata | None = None


class StudyLinkOut(BaseModel):
    id: str
    object: Literal["study_link"]
    url: str = Field(description="The link to give the panel (it adds the participant's id)")
    blueprint_id: str
    channel_id: str
    participant_param: str
    metadata_params: list[str]
    max_completes: int | None
    closes_at: str | None
    active: bool
    open: bool = Field(description="Taking new participants now: active, not past closes_at, not full")
    completion_redirect_url: str | None
    screenout_redirect_url: str | None
    metadata: dict[str, str]
    started: int = Field(description="Participants who opened it (one run each)")
    completed: int
    created_at: str


async def link_json(state: AppState, link: StudyLink) -> dict[str, Any]:
    counts = await state.store.study_links.counts(link.id)
    full = link.max_completes is not None and counts.completed >= link.max_completes
    return {
        "id": link.id,
        "object": "study_link",
        "url": f"{state.config.base_url}/s/{link.token}",
        "blueprint_id": link.blueprint_id,
        "channel_id": link.channel_id,
        "participant_param": link.participant_param,
        "metadata_params": list(link.metadata_params),
        "max_completes": link.max_completes,
        "closes_at": iso(link.closes_at),
        "active": link.active,
        "open": link.is_open(time.time()) and not full,
        "completion_redirect_url": link.completion_redirect_url,
        "screenout_redirect_url": link.screenout_redirect_url,
        "metadata": link.metadata,
        "started": counts.started,
        "completed": counts.completed,
        "created_at": iso(link.created_at),
    }


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.astimezone(UTC).timestamp()


@routes.route("POST", "/v1/study-links", summary="Create a study link for a recruitment panel", tag="study-links",
              body=StudyLinkIn, response=StudyLinkOut, status=201, errors=(404, 409))  # fmt: skip
async def create_study_link(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    org_id = request[ORG_ID]
    body = await parse_body(request, StudyLinkIn)
    # the same checks a run gets (published blueprint, a channel that can be served), before any participant comes
    probe = RunIn(blueprint_id=body.blueprint_id, channel_id=body.channel_id)
    await _check_run_target(state, org_id, probe)
    link = await state.store.study_links.create(
        org_id,
        blueprint_id=body.blueprint_id,
        channel_id=body.channel_id,
        participant_param=body.participant_param,
        metadata_params=tuple(body.metadata_params),
        max_completes=body.max_completes,
        closes_at=_timestamp(body.closes_at),
        completion_redirect_url=body.completion_redirect_url,
        screenout_redirect_url=body.screenout_redirect_url,
        metadata=body.metadata,
    )
    return web.json_response(await link_json(state, link), status=201)


async def _check_run_target(state: AppState, org_id: str, body: RunIn) -> None:
    if not is_id(body.blueprint_id, "blueprint"):
        raise NotFound(f"No blueprint {body.blueprint_id!r}", param="blueprint_id")
    try:
        await state.store.catalog.published_content(org_id, body.blueprint_id)
    except NotFound as exc:
        raise NotFound(exc.message, param="blueprint_id") from None
    assert body.channel_id is not None
    if not is_id(body.channel_id, "channel"):
        raise NotFound(f"No channel {body.channel_id!r}", param="channel_id")
    channel = await state.store.catalog.get_channel(org_id, body.channel_id)
    if channel.type in NOT_IN_BROWSER:
        why = NOT_IN_BROWSER[channel.type]
        raise Conflict(
            f"Channel {channel.id}: {why}; a study link sends participants to a web page", param="channel_id"
        )


@routes.route("GET", "/v1/study-links", summary="List study links, newest first", tag="study-links",
              response=ListOut,
              params=page_params("study_link"))  # fmt: skip
async def list_study_links(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after"))
    state = request.app[STATE]
    limit, cursor = page(request, "study_link")
    links, has_more = await state.store.study_links.list(request[ORG_ID], limit=limit, starting_after=cursor)
    data = [await link_json(state, link) for link in links]
    return web.json_response({"object": "list", "data": data, "has_more": has_more})


@routes.route("GET", "/v1/study-links/{id}", summary="Get a study link and its counts", tag="study-links",
              response=StudyLinkOut, errors=(404,), params=(ID,))  # fmt: skip
async def get_study_link(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    link = await state.store.study_links.get(request[ORG_ID], path_id(request, "study_link"))
    return web.json_response(await link_json(state, link))


@routes.route("PATCH", "/v1/study-links/{id}", summary="Close, reopen or change a study link (JSON merge patch)",
              tag="study-links", body=StudyLinkPatch, body_types=("application/merge-patch+json", "application/json"),
              response=StudyLinkOut, errors=(404,), params=(ID,))  # fmt: skip
async def update_study_link(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    link = await state.store.study_links.get(request[ORG_ID], path_id(request, "study_link"))
    patch = await parse_body(request, StudyLinkPatch)
    given = patch.model_fields_set
    changes: dict[str, Any] = {}
    if "active" in given:
        changes["active"] = patch.active
    for name in ("max_completes", "completion_redirect_url", "screenout_redirect_url"):
        if name in given:
            changes[name] = getattr(patch, name)
    if "closes_at" in given:
        changes["closes_at"] = _timestamp(patch.closes_at)
    if "metadata" in given:
        changes["metadata"] = patch.metadata or {}
    if changes:
        link = await state.store.study_links.update(link, **changes)
    return web.json_response(await link_json(state, link))


# --- the participant's side -------------------------------------------------------------------------------------


def redirect_for(link: StudyLink, *, status: str, run_id: str | None, external_id: str) -> str | None:
    """Where the participant goes: the completion URL if their interview completed, else the screen-out URL."""
    template = link.completion_redirect_url if status == RunStatus.COMPLETED.value else link.screenout_redirect_url
    if template is None:
        return None
    values = {"run_id": run_id or "", "external_id": external_id, "status": status}
    for name, value in values.items():
        template = template.replace("{" + name + "}", quote(value, safe=""))
    return template


async def redirect_after(state: AppState, run: Run) -> str | None:
    """For an ended run made from a study link: where its participant is sent now."""
    if not run.status.is_terminal:
        return None
    found = await state.store.study_links.link_of_run(run.id)
    if found is None:
        return None
    link, external_id = found
    return redirect_for(link, status=run.status.value, run_id=run.id, external_id=external_id)


def _refused(link: StudyLink, external_id: str, why: str, title: str, text: str, status: int) -> web.Response:
    target = redirect_for(link, status=why, run_id=None, external_id=external_id)
    if target is not None:
        return web.Response(status=303, headers={"Location": target})
    return _page(title, text, status)


@routes.route("GET", PUBLIC, summary="A study link: makes the participant's run (once) and sends them to it",
              tag="participant", auth=False, status=303, content_types=(), errors=(404, 409, 410),
              error_type="text/html",
              params=(Param("token", "The link's token", where="path"),
                      Param("PROLIFIC_PID", "The participant id (its name: participant_param)",
                            required=True)))  # fmt: skip
async def open_study_link(request: web.Request) -> web.Response:
    state = request.app[STATE]
    link = await state.store.study_links.by_token(request.match_info["token"])
    if link is None:
        return _page("Study not found", "This study link is not valid. Please check the link you were given.", 404)
    external_id = (request.query.get(link.participant_param) or "").strip()
    if not external_id or len(external_id) > MAX_PARTICIPANT_ID:
        text = f"This link needs your participant id ({link.participant_param}). Please open it from the study page."
        return _page("Participant id missing", text, 400)
    existing = await state.store.study_links.run_of(link.id, external_id)
    if existing is None:
        if not link.is_open(time.time()):
            return _refused(link, external_id, "closed", "Study closed", "This study is no longer taking part.", 410)
        counts = await state.store.study_links.counts(link.id)
        if link.max_completes is not None and counts.completed >= link.max_completes:
            return _refused(link, external_id, "full", "Study full", "This study has all the interviews it needs.", 410)
        metadata = {name: request.query[name][:500] for name in link.metadata_params if name in request.query}
        body = RunIn(
            blueprint_id=link.blueprint_id,
            channel_id=link.channel_id,
            participant=ParticipantIn(external_id=external_id),
            metadata={**metadata, "study_link": link.id},
        )
        try:
            run_id, _ = await state.store.study_links.claim(
                link, external_id, lambda record: new_run(state, link.org_id, body, also=record)
            )
        except (NotFound, Conflict):  # the blueprint or channel went away since the link was made
            return _page("Study unavailable", "This study cannot be taken part in at the moment.", 409)
        existing = run_id
    run = await state.store.runs.get_run(existing)
    if run.status.is_terminal:
        title, text = "Already taken part", "You have already taken part in this study. Thank you!"
        return _refused(link, external_id, "duplicate", title, text, 409)
    return web.Response(status=303, headers={"Location": f"/join/{run.join_token}"})
