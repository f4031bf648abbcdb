"""The MCP tools: each a JSON Schema in, the REST object out, and the REST code in between.

A tool's arguments are checked by the same pydantic models as the REST bodies
(or, for what REST reads from a query string, by the same readers), so a bad
argument is refused with the REST message; a refusal becomes a tool result with
``isError`` whose text is the REST error body (``{"error": {type, message, param}}``).
Each tool declares its output schema (the REST response model): the client can
check what it got.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError, WithJsonSchema

from api.errors import UNSTORABLE, unstorable_text, validation_error
from api.params import parse_cursor, parse_limit
from api.routes_catalog import _content, frozen
from api.routes_runs import EXPANDABLE, _result, cancel, new_run, parse_expand, render_run
from api.schemas import (
    BlueprintIn,
    BlueprintOut,
    ChannelOut,
    JsonBool,
    JsonInt,
    ListOut,
    Metadata,
    Name,
    ResponseOut,
    ResultOut,
    RunIn,
    RunOut,
    Strict,
)
from api.state import STATE, AppState
from runtime.analysis import collect_responses
from runtime.errors import InvalidRequest, NotFound, VivavoceError
from runtime.ids import id_pattern, is_id
from runtime.serialize import blueprint_json, channel_json
from runtime.storage import RunFilter
from runtime.types import ChannelSettings, ChannelType, EndReason, Run, RunStatus

log = logging.getLogger("vivavoce.mcp")


class ToolError(Exception):
    """A tool refused or failed: its text is what the model reads (the REST error body)."""

    def __init__(self, error: VivavoceError) -> None:
        body: dict[str, Any] = {"type": error.type, "message": error.message, "param": error.param}
        if error.details:
            body["details"] = error.details
        super().__init__(error.message)
        self.text = json.dumps({"error": body})


# --- inputs ------------------------------------------------------------------------------------------------


class ChannelSettingsArgs(Strict):
    recording: JsonBool = Field(False, description="Store the run's audio (voice channels)")
    max_duration_s: JsonInt = Field(1800, ge=10, le=43200, description="Run length limit")
    idle_timeout_s: JsonInt = Field(120, ge=5, le=3600, description="Participant silence before the run ends")


class CreateChannelArgs(Strict):
    type: ChannelType = Field(description="chat or webrtc_voice (telephony and custom arrive later)")
    name: Name
    settings: ChannelSettingsArgs = Field(default_factory=ChannelSettingsArgs)
    metadata: Metadata = Field(default_factory=dict)


RunId = Annotated[
    str, Field(max_length=64, description="A run id (run_...)", json_schema_extra={"pattern": id_pattern("run")})
]


class RunArgs(Strict):
    run_id: RunId


class GetRunArgs(Strict):
    run_id: RunId
    expand: list[Annotated[str, WithJsonSchema({"type": "string", "enum": list(EXPANDABLE)})]] = Field(
        default_factory=list, max_length=len(EXPANDABLE), description="Related objects to inline"
    )


class ListRunsArgs(Strict):
    limit: Annotated[Any, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 100})] = Field(
        None, description="Page size, 1..100 (default 10)"
    )
    starting_after: Annotated[Any, WithJsonSchema({"type": "string", "pattern": id_pattern("run")})] = Field(
        None, description="Cursor: the id of the last run of the previous page"
    )
    blueprint_id: str | None = Field(None, max_length=64, description="Only runs of this blueprint")


class PublishArgs(Strict):
    blueprint_id: str = Field(max_length=64, description="A blueprint id (bp_...)")


class SummaryOut(BaseModel):
    run_id: str
    status: RunStatus
    end_reason: EndReason | None
    result: ResultOut = Field(description="The analysis: summary and structured result (pending until it is done)")
    responses: list[ResponseOut] = Field(description="The participant's answer to each question")


# --- the tools -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    summary: str
    args: type[BaseModel]
    output: type[BaseModel]
    run: Callable[[AppState, str, Any], Awaitable[dict[str, Any]]]
    read_only: bool = False
    destructive: bool = False

    def description(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.summary,
            "inputSchema": _schema(self.args, "validation"),
            "outputSchema": _shallow(_schema(self.output, "serialization")),
            "annotations": {
                "title": self.title,
                "readOnlyHint": self.read_only,
                "destructiveHint": self.destructive,
                "idempotentHint": self.read_only,
                "openWorldHint": False,
            },
        }


def _schema(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    schema = model.model_json_schema(mode=mode)
    schema.pop("title", None)
    return schema


def _shallow(schema: dict[str, Any]) -> dict[str, Any]:
    """The output's top level with types, nested objects as bare objects: what a model needs to read the answer,
    in a few hundred bytes instead of the tens of kilobytes the full response models take."""

    defs = schema.get("$defs", {})

    def kind(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            target = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
            return {k: v for k, v in target.items() if k in ("type", "enum")} or {"type": "object"}
        if "anyOf" in node:
            types: list[str] = []
            for branch in node["anyOf"]:
                t = kind(branch).get("type", "object")
                types.extend(t if isinstance(t, list) else [t])
            return {"type": list(dict.fromkeys(types))}
        out = {k: v for k, v in node.items() if k in ("type", "enum", "const")}
        if node.get("type") == "array":
            out["items"] = kind(node.get("items", {}))
        return out or {"type": "object"}

    properties = {}
    for name, node in schema.get("properties", {}).items():
        properties[name] = {**kind(node), **({"description": node["description"]} if "description" in node else {})}
    return {"type": "object", "properties": properties, "required": schema.get("required", [])}


async def call_tool(request: web.Request, org_id: str, tool: Tool, arguments: dict[str, Any]) -> dict[str, Any]:
    where = unstorable_text(arguments)
    if where is not None:
        raise ToolError(InvalidRequest(f"{where}: {UNSTORABLE}", param=where.lstrip("/").split("/")[0] or None))
    try:
        args = tool.args.model_validate(arguments)
    except ValidationError as exc:
        raise ToolError(validation_error(exc)) from None
    try:
        return await tool.run(request.app[STATE], org_id, args)
    except VivavoceError as exc:
        raise ToolError(exc) from None


async def _run(state: AppState, org_id: str, run_id: str) -> Run:
    if not is_id(run_id, "run"):
        raise NotFound(f"No run {run_id[:80]!r}", param="run_id")
    try:
        return await state.store.runs.get_run(run_id, org_id=org_id)
    except NotFound as exc:
        raise NotFound(exc.message, param="run_id") from None


async def create_channel(state: AppState, org_id: str, args: CreateChannelArgs) -> dict[str, Any]:
    s = args.settings
    channel = await state.store.catalog.create_channel(
        org_id,
        type=args.type,
        name=args.name,
        settings=ChannelSettings(
            recording=s.recording, max_duration_s=s.max_duration_s, idle_timeout_s=s.idle_timeout_s
        ),
        metadata=args.metadata,
    )
    return channel_json(channel)


async def create_run(state: AppState, org_id: str, args: RunIn) -> dict[str, Any]:
    return await render_run(state, await new_run(state, org_id, args))


async def get_run(state: AppState, org_id: str, args: GetRunArgs) -> dict[str, Any]:
    expand = parse_expand(args.expand)
    return await render_run(state, await _run(state, org_id, args.run_id), expand)


async def list_runs(state: AppState, org_id: str, args: ListRunsArgs) -> dict[str, Any]:
    limit, cursor = parse_limit(args.limit), parse_cursor(args.starting_after, "run")
    runs, has_more = await state.store.runs.list_runs(
        org_id, limit=limit, starting_after=cursor, where=RunFilter(blueprint_id=args.blueprint_id)
    )
    return {"object": "list", "data": [await render_run(state, run) for run in runs], "has_more": has_more}


async def cancel_run(state: AppState, org_id: str, args: RunArgs) -> dict[str, Any]:
    return await render_run(state, await cancel(state, await _run(state, org_id, args.run_id)))


async def create_blueprint(state: AppState, org_id: str, args: BlueprintIn) -> dict[str, Any]:
    return blueprint_json(await state.store.catalog.create_blueprint(org_id, _content(args)))


async def publish_blueprint(state: AppState, org_id: str, args: PublishArgs) -> dict[str, Any]:
    if not is_id(args.blueprint_id, "blueprint"):
        raise NotFound(f"No blueprint {args.blueprint_id[:80]!r}", param="blueprint_id")
    try:
        bp = await state.store.catalog.publish_blueprint(
            org_id, args.blueprint_id, freeze=lambda content: frozen(content, state.config)
        )
    except NotFound as exc:
        raise NotFound(exc.message, param="blueprint_id") from None
    return blueprint_json(bp)


async def interview_summary(state: AppState, org_id: str, args: RunArgs) -> dict[str, Any]:
    run = await _run(state, org_id, args.run_id)
    bp = await state.store.catalog.get_blueprint(run.org_id, run.blueprint_id, run.blueprint_version)
    messages = await state.store.review.messages(run.id) if run.started_at is not None else []  # as reviewed
    return {
        "run_id": run.id,
        "status": run.status.value,
        "end_reason": run.end_reason.value if run.end_reason else None,
        "result": await _result(state, run),
        "responses": collect_responses(bp.content, messages),
    }


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("create_channel", "Create a channel",
             "Create a channel: how participants take part (chat, or webrtc_voice in the browser), with its limits.",
             CreateChannelArgs, ChannelOut, create_channel),
        Tool("create_interview_run", "Create an interview run",
             "Create an interview for one participant from a published blueprint, on a channel; the answer's "
             "join_url is the link to send them. Exactly one of channel_id and connector_id.",
             RunIn, RunOut, create_run),
        Tool("get_interview_run", "Get an interview run",
             "A run's status and, with expand, its blueprint, channel, sessions, transcript, responses, "
             "analysis or result.", GetRunArgs, RunOut, get_run, read_only=True),
        Tool("list_interview_runs", "List interview runs",
             "Runs newest first, a page at a time (limit 1-100; starting_after: the last id of the previous page).",
             ListRunsArgs, ListOut, list_runs, read_only=True),
        Tool("cancel_interview_run", "Cancel an interview run",
             "Cancel a run that has not ended; a participant in it is told and disconnected.",
             RunArgs, RunOut, cancel_run, destructive=True),
        Tool("create_blueprint", "Create a blueprint",
             "Create an interview guide (draft version 1): greeting, questions with their probes, closing.",
             BlueprintIn, BlueprintOut, create_blueprint),
        Tool("publish_blueprint", "Publish a blueprint",
             "Freeze the blueprint's latest version; new runs use the latest published version.",
             PublishArgs, BlueprintOut, publish_blueprint),
        Tool("get_interview_summary", "Get an interview's summary",
             "What a run yielded: the participant's answer to each question, and the analysis (summary and "
             "structured result; pending until the run has ended and been analysed).",
             RunArgs, SummaryOut, interview_summary, read_only=True),
    )
}  # fmt: skip
