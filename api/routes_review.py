"""Reviewing runs: the run's annotation (``PATCH /v1/runs/{id}``) and its issues (``/v1/runs/{id}/issues``).

The rules live in :mod:`runtime.review` and are checked where the change is
written (:mod:`runtime.storage.review`); this module reads requests and answers.
Who made a change is the API key of the request (``key_…``), the console's
signed-in key included. An erased run takes no review (410), like its
transcript: what it held is gone, and so are its annotation and issues.
"""

from __future__ import annotations

from aiohttp import web

from api.openapi import Param, RouteTable
from api.params import check_query, page, parse_body, path_id, single
from api.review_models import IssueIn, IssueOut, IssuePatch, RunPatch
from api.routes_catalog import ID, page_params
from api.routes_runs import render_run, with_data
from api.schemas import ListOut, RunOut
from api.state import KEY_ID, ORG_ID, STATE
from runtime.errors import InvalidRequest
from runtime.review import IssueChanges, IssueStatus, IssueType, check_new_issue, issue_json
from runtime.types import Run, StrEnum

routes = RouteTable()

ISSUE_ID = Param("issue_id", "Issue id (iss_...)", where="path")
BODY_TYPES = ("application/merge-patch+json", "application/json")


async def _reviewable(request: web.Request) -> Run:
    """The path's run, of the key's organization, with its data (an erased run: 410)."""
    run = await request.app[STATE].store.runs.get_run(path_id(request, "run"), org_id=request[ORG_ID])
    return with_data(run, "review")


def _enum_query(request: web.Request, name: str, kind: type[StrEnum]) -> str | None:
    raw = single(request, name)
    if raw is not None and raw not in {e.value for e in kind}:
        allowed = ", ".join(e.value for e in kind)
        raise InvalidRequest(f"unknown {name} {raw[:40]!r}; expected one of {allowed}", param=name)
    return raw


@routes.route("PATCH", "/v1/runs/{id}", summary="Annotate a run: correct, incorrect or critical (JSON merge patch)",
              tag="review", body=RunPatch, body_types=BODY_TYPES, response=RunOut, errors=(404, 410),
              params=(ID,))  # fmt: skip
async def update_run(request: web.Request) -> web.Response:
    """``{"annotation": "critical"}`` sets it, ``null`` clears it, ``{}`` changes nothing."""
    check_query(request, ())
    state = request.app[STATE]
    run = await _reviewable(request)
    patch = await parse_body(request, RunPatch)
    if "annotation" in patch.model_fields_set:
        await state.store.review.annotate(run.id, patch.annotation, by=request[KEY_ID])
    return web.json_response(await render_run(state, run))


@routes.route("POST", "/v1/runs/{id}/issues", summary="Open an issue on a run or one of its messages",
              tag="review", body=IssueIn, response=IssueOut, status=201, errors=(404, 409, 410),
              params=(ID,))  # fmt: skip
async def create_issue(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    run = await _reviewable(request)
    body = await parse_body(request, IssueIn)
    status = IssueStatus(body.status)
    # the body's own rules first (400), before the message is looked up (404) or the run's state read (409)
    check_new_issue(type=body.type, status=status, message=None, message_id=body.message_id,
                    correction=body.correction, correction_reason=body.correction_reason)  # fmt: skip
    issue = await state.store.review.create_issue(
        run.id,
        type=body.type,
        status=status,
        priority=body.priority,
        message_id=body.message_id,
        correction=body.correction,
        correction_reason=body.correction_reason,
        note=body.note,
        by=request[KEY_ID],
    )
    return web.json_response(issue_json(issue), status=201)


@routes.route("GET", "/v1/runs/{id}/issues", summary="A run's issues, newest first", tag="review",
              response=ListOut, errors=(404, 410),
              params=(ID, *page_params("issue"),
                      Param("status", "Only issues with this status",
                            {"type": "string", "enum": [s.value for s in IssueStatus]}),
                      Param("type", "Only issues of this type",
                            {"type": "string", "enum": [t.value for t in IssueType]})))  # fmt: skip
async def list_issues(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after", "status", "type"))
    state = request.app[STATE]
    run = await _reviewable(request)
    limit, cursor = page(request, "issue")
    status = _enum_query(request, "status", IssueStatus)
    kind = _enum_query(request, "type", IssueType)
    issues, has_more = await state.store.review.issues(
        run.id,
        limit=limit,
        starting_after=cursor,
        status=IssueStatus(status) if status else None,
        type=IssueType(kind) if kind else None,
    )
    return web.json_response({"object": "list", "data": [issue_json(i) for i in issues], "has_more": has_more})


@routes.route("GET", "/v1/runs/{id}/issues/{issue_id}", summary="One issue of a run", tag="review",
              response=IssueOut, errors=(404, 410), params=(ID, ISSUE_ID))  # fmt: skip
async def get_issue(request: web.Request) -> web.Response:
    check_query(request, ())
    run = await _reviewable(request)
    issue = await request.app[STATE].store.review.issue(run.id, path_id(request, "issue", "issue_id"))
    return web.json_response(issue_json(issue))


@routes.route("PATCH", "/v1/runs/{id}/issues/{issue_id}",
              summary="Approve, reject, close or reopen an issue, or change it (JSON merge patch)", tag="review",
              body=IssuePatch, body_types=BODY_TYPES, response=IssueOut, errors=(404, 409, 410),
              params=(ID, ISSUE_ID))  # fmt: skip
async def update_issue(request: web.Request) -> web.Response:
    """Approving a transcriber issue puts its correction in force; rejecting, closing or reopening withdraws it."""
    check_query(request, ())
    state = request.app[STATE]
    run = await _reviewable(request)
    issue_id = path_id(request, "issue", "issue_id")
    patch = await parse_body(request, IssuePatch)
    changes = IssueChanges(
        given=frozenset(patch.model_fields_set),
        status=patch.status,
        priority=patch.priority,
        correction=patch.correction,
        correction_reason=patch.correction_reason,
        note=patch.note,
    )
    issue = await state.store.review.update_issue(run.id, issue_id, changes, by=request[KEY_ID])
    return web.json_response(issue_json(issue))
