"""A run's events: Server-Sent Events for live readers, a JSON list for pollers.

The stream replays stored events after ``after_seq`` (or ``Last-Event-ID``),
then follows live ones; it ends after the run's last event (``run.result_ready``, once the
finished run has been analysed; the terminal event of a run that never started), and after
whatever was stored beyond it when it is replayed (a review's events). To lose nothing
between the replay and the live part, it subscribes first, replays second, and
drops live events it already sent; if the live queue overflows or shows a gap,
it replays from storage again.
"""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web

from api.openapi import Param, RouteTable
from api.params import check_query, path_id, single
from api.routes_catalog import ID
from api.routes_runs import with_data
from api.schemas import ListOut
from api.state import ORG_ID, STATE
from runtime.errors import InvalidRequest
from runtime.serialize import iso
from runtime.types import Event, is_last_event

routes = RouteTable()

PAGE = 500
MAX_LIST = 1000
_SEQ = re.compile(r"[0-9]{1,15}")
MAX_SEQ = 10**15 - 1


def event_json(ev: Event) -> dict[str, object]:
    return {
        "object": "event",
        "run_id": ev.run_id,
        "seq": ev.seq,
        "type": ev.type.value,
        "created_at": iso(ev.created_at),
        "data": ev.data,
    }


def _after_seq(request: web.Request) -> int:
    """``after_seq`` if given, else ``Last-Event-ID``; both are checked when both are sent."""
    query = _seq(single(request, "after_seq"), "after_seq")
    header = _seq(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    return query if query is not None else (header or 0)


def _seq(raw: str | None, param: str) -> int | None:
    if raw is None or (raw == "" and param == "Last-Event-ID"):
        return None
    if not _SEQ.fullmatch(raw):
        raise InvalidRequest(f"{param} must be a non-negative integer below 10^15", param=param)
    return int(raw)


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


@routes.route(
    "GET",
    "/v1/runs/{id}/events",
    tag="events",
    response=ListOut,
    errors=(404, 410),
    summary="Events as Server-Sent Events (resumable), or a JSON list with Accept: application/json",
    content_types=("text/event-stream", "application/json"),
    params=(
        ID,
        Param("after_seq", "Only events with a larger seq", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}),
        Param(
            "Last-Event-ID",
            "SSE resume point (same as after_seq; empty means from the start)",
            {"type": "string", "pattern": "^[0-9]{0,15}$"},
            where="header",
        ),
    ),
)
async def run_events(request: web.Request) -> web.StreamResponse:
    check_query(request, ("after_seq",))
    state = request.app[STATE]
    after = _after_seq(request)
    run = with_data(await state.store.runs.get_run(path_id(request, "run"), org_id=request[ORG_ID]), "event log")
    after = min(after, run.last_seq)  # a resume point from the future would skip the terminal event
    if _wants_json(request):
        events = await state.store.runs.list_events(run.id, after_seq=after, limit=MAX_LIST + 1)
        data = [event_json(e) for e in events[:MAX_LIST]]
        return web.json_response({"object": "list", "data": data, "has_more": len(events) > MAX_LIST})

    with state.hub.subscribe(run.id) as sub:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        last = after
        heartbeat = state.config.scaled(state.config.heartbeat_s)

        async def send(ev: Event) -> bool:
            nonlocal last
            payload = json.dumps(event_json(ev), separators=(",", ":"))
            await response.write(f"id: {ev.seq}\nevent: {ev.type.value}\ndata: {payload}\n\n".encode())
            last = ev.seq
            return is_last_event(ev)

        async def replay() -> bool:
            """Send what is stored; True if the run's last event was among it. Stored events after the last
            one (a review's: run.annotated, run.issue.*) are sent too before the stream ends."""
            ended = False
            while True:
                batch = await state.store.runs.list_events(run.id, after_seq=last, limit=PAGE)
                for ev in batch:
                    ended = await send(ev) or ended
                if len(batch) < PAGE:
                    return ended

        try:
            if await replay() or (run.settled and last >= run.last_seq):
                return response
            loop = asyncio.get_running_loop()
            next_beat = loop.time() + heartbeat
            while True:
                try:
                    # wake at least once a second to notice a reader that went away
                    ev = await asyncio.wait_for(sub.queue.get(), min(1.0, max(next_beat - loop.time(), 0)))
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    if loop.time() >= next_beat:
                        await response.write(b": heartbeat\n\n")
                        next_beat = loop.time() + heartbeat
                    continue
                if ev is None or ev.seq > last + 1:  # overflowed, or missed one: read it back
                    sub.overflowed = False
                    if await replay():
                        break
                    continue
                if ev.seq <= last:
                    continue
                if await send(ev):
                    break
        except ConnectionResetError:
            pass
        return response
