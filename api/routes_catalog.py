"""Blueprints and channels: what a researcher sets up before creating runs."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from api.config import ServerConfig
from api.errors import validation_error
from api.openapi import Param, RouteTable
from api.params import check_query, page, parse_body, path_id, single
from api.schemas import BlueprintIn, BlueprintOut, BlueprintPatch, ChannelIn, ChannelOut, ListOut
from api.state import ORG_ID, STATE, AppState
from runtime.errors import Conflict, InvalidRequest, NotFound
from runtime.ids import id_pattern, is_id
from runtime.interviewer.prompt import PROMPT_VERSION
from runtime.serialize import blueprint_content_json, blueprint_json, channel_json
from runtime.types import (
    BlueprintContent,
    ChannelSettings,
    ChannelType,
    InboundCalls,
    InterviewerSettings,
    InterviewerType,
    Question,
)

routes = RouteTable()
MAX_VERSION = 999_999_999

LIMIT = Param("limit", "Page size, 1..100 (default 10)", {"type": "integer", "minimum": 1, "maximum": 100})
ID = Param("id", "Object id", where="path")


def page_params(kind: str) -> tuple[Param, ...]:
    """``limit`` and a ``starting_after`` cursor that is an id of ``kind``."""
    cursor = Param(
        "starting_after",
        f"Cursor: the id of the last {kind} of the previous page",
        {"type": "string", "pattern": id_pattern(kind)},
    )
    return (LIMIT, cursor)


def _content(body: BlueprintIn) -> BlueprintContent:
    who = body.interviewer
    return BlueprintContent(
        name=body.name,
        greeting=body.greeting,
        questions=tuple(
            Question(
                q.id,
                q.text,
                tuple(q.probes),
                q.max_probes,
                objective=q.objective,
                verbatim=q.verbatim,
                probe_instructions=q.probe_instructions,
            )
            for q in body.questions
        ),
        closing=body.closing,
        language=body.language,
        interviewer=InterviewerSettings(
            type=who.type,
            model=who.model,
            instructions=who.instructions,
            avoid=tuple(who.avoid),
            temperature=who.temperature,
        ),
        result_schema=body.result_schema,
    )


def frozen(content: BlueprintContent, config: ServerConfig) -> BlueprintContent:
    """The content as published: the model and the prompt template resolved, so every run gets the same."""
    who = content.interviewer
    if who.type is InterviewerType.LLM and not config.llm_enabled:
        raise Conflict(
            "this blueprint asks for the AI interviewer (interviewer.type 'llm'), but this server has no "
            "language model configured: start it with --llm-base-url (see docs/llm.md), or use 'scripted'",
            param="interviewer.type",
        )
    if who.type is not InterviewerType.LLM:
        return content
    settings = replace(who, model=who.model or config.llm_model or "default", prompt_version=PROMPT_VERSION)
    return replace(content, interviewer=settings)


@routes.route(
    "POST",
    "/v1/blueprints",
    summary="Create a blueprint (draft version 1)",
    tag="blueprints",
    body=BlueprintIn,
    response=BlueprintOut,
    status=201,
)
async def create_blueprint(request: web.Request) -> web.Response:
    check_query(request, ())
    body = await parse_body(request, BlueprintIn)
    bp = await request.app[STATE].store.catalog.create_blueprint(request[ORG_ID], _content(body))
    return web.json_response(blueprint_json(bp), status=201)


@routes.route(
    "GET",
    "/v1/blueprints",
    summary="List blueprints, newest first",
    tag="blueprints",
    response=ListOut,
    params=page_params("blueprint"),
)
async def list_blueprints(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after"))
    limit, cursor = page(request, "blueprint")
    catalog = request.app[STATE].store.catalog
    ids, has_more = await catalog.list_blueprints(request[ORG_ID], limit=limit, starting_after=cursor)
    data = [blueprint_json(await catalog.get_blueprint(request[ORG_ID], bp_id)) for bp_id in ids]
    return web.json_response({"object": "list", "data": data, "has_more": has_more})


@routes.route(
    "GET",
    "/v1/blueprints/{id}",
    summary="Get a blueprint (latest version, or ?version=N)",
    tag="blueprints",
    response=BlueprintOut,
    errors=(404,),
    params=(ID, Param("version", "A specific version", {"type": "integer", "minimum": 1, "maximum": MAX_VERSION})),
)
async def get_blueprint(request: web.Request) -> web.Response:
    check_query(request, ("version",))
    raw = single(request, "version")
    version = None
    if raw is not None:
        if not re.fullmatch(r"[0-9]{1,9}", raw) or not 1 <= int(raw) <= MAX_VERSION:
            raise InvalidRequest("version must be a positive integer", param="version")
        version = int(raw)
    bp = await request.app[STATE].store.catalog.get_blueprint(request[ORG_ID], path_id(request, "blueprint"), version)
    return web.json_response(blueprint_json(bp))


@routes.route(
    "PATCH",
    "/v1/blueprints/{id}",
    summary="Edit the draft with a JSON merge patch (a published latest version starts a new draft)",
    tag="blueprints",
    body=BlueprintPatch,
    body_types=("application/merge-patch+json", "application/json"),
    response=BlueprintOut,
    errors=(404,),
    params=(ID,),
)
async def update_blueprint(request: web.Request) -> web.Response:
    """RFC 7396: members of the patch replace the latest version's, ``null`` removes one (it takes its
    default), and a list (``questions``) is replaced whole. The merged document must be a valid blueprint."""
    check_query(request, ())
    bp_id = path_id(request, "blueprint")
    patch = await parse_body(request, BlueprintPatch)
    catalog = request.app[STATE].store.catalog
    latest = await catalog.get_blueprint(request[ORG_ID], bp_id)
    raw = patch.model_dump(mode="json", exclude_unset=True)
    merged = merge_patch(_editable(latest.content), raw)
    try:
        body = BlueprintIn.model_validate(merged)
    except ValidationError as exc:
        raise validation_error(exc) from None
    bp = await catalog.update_blueprint(request[ORG_ID], bp_id, _content(body))
    return web.json_response(blueprint_json(bp))


def _editable(content: BlueprintContent) -> dict[str, Any]:
    """A version as the document a patch applies to: what BlueprintIn takes (the frozen prompt version is not)."""
    doc = blueprint_content_json(content)
    doc["interviewer"].pop("prompt_version", None)
    return doc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge member by member, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


@routes.route(
    "POST",
    "/v1/blueprints/{id}/publish",
    summary="Publish (freeze) the latest version",
    tag="blueprints",
    response=BlueprintOut,
    errors=(404, 409),
    params=(ID,),
)
async def publish_blueprint(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    bp = await state.store.catalog.publish_blueprint(
        request[ORG_ID], path_id(request, "blueprint"), freeze=lambda content: frozen(content, state.config)
    )
    return web.json_response(blueprint_json(bp))


async def _checked_settings(state: AppState, org_id: str, body: ChannelIn) -> ChannelSettings:
    """The settings, with what the schema cannot check: telephony settings only on telephony channels, and an
    inbound blueprint that exists and is published."""
    s = body.settings
    settings = ChannelSettings(
        **{**s.model_dump(), "phone_numbers": tuple(s.phone_numbers), "inbound": InboundCalls(s.inbound)}
    )
    if body.type is not ChannelType.TELEPHONY:  # (their defaults are fine: a channel as GET shows it)
        default = ChannelSettings()
        for name in ("phone_numbers", "inbound", "inbound_blueprint_id"):
            if getattr(settings, name) != getattr(default, name):
                raise InvalidRequest(f"{name} is a telephony channel's setting", param=name)
        return settings
    if len(set(s.phone_numbers)) != len(s.phone_numbers):
        raise InvalidRequest("phone_numbers lists a number twice", param="phone_numbers")
    if settings.inbound is InboundCalls.NEW_RUN:
        if s.inbound_blueprint_id is None:
            raise InvalidRequest("inbound new_run needs inbound_blueprint_id", param="inbound_blueprint_id")
        if not is_id(s.inbound_blueprint_id, "blueprint"):
            raise NotFound(f"No blueprint {s.inbound_blueprint_id!r}", param="inbound_blueprint_id")
        try:
            await state.store.catalog.published_content(org_id, s.inbound_blueprint_id)
        except NotFound as exc:
            raise NotFound(exc.message, param="inbound_blueprint_id") from None
    elif s.inbound_blueprint_id is not None:
        raise InvalidRequest("inbound_blueprint_id is used with inbound new_run only", param="inbound_blueprint_id")
    return settings


@routes.route(
    "POST",
    "/v1/channels",
    summary="Create a channel",
    tag="channels",
    body=ChannelIn,
    response=ChannelOut,
    status=201,
    errors=(404, 409),
)
async def create_channel(request: web.Request) -> web.Response:
    check_query(request, ())
    body = await parse_body(request, ChannelIn)
    state = request.app[STATE]
    settings = await _checked_settings(state, request[ORG_ID], body)
    channel = await state.store.catalog.create_channel(
        request[ORG_ID], type=body.type, name=body.name, settings=settings, metadata=body.metadata
    )
    return web.json_response(channel_json(channel), status=201)


@routes.route(
    "GET",
    "/v1/channels",
    summary="List channels, newest first",
    tag="channels",
    response=ListOut,
    params=page_params("channel"),
)
async def list_channels(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after"))
    limit, cursor = page(request, "channel")
    channels, has_more = await request.app[STATE].store.catalog.list_channels(
        request[ORG_ID], limit=limit, starting_after=cursor
    )
    return web.json_response({"object": "list", "data": [channel_json(c) for c in channels], "has_more": has_more})


@routes.route(
    "GET",
    "/v1/channels/{id}",
    summary="Get a channel",
    tag="channels",
    response=ChannelOut,
    errors=(404,),
    params=(ID,),
)
async def get_channel(request: web.Request) -> web.Response:
    check_query(request, ())
    channel = await request.app[STATE].store.catalog.get_channel(request[ORG_ID], path_id(request, "channel"))
    return web.json_response(channel_json(channel))
