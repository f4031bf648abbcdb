"""Webhooks: endpoints an organization registers, and each one's delivery log (sending: api/webhooks.py)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from api.openapi import Param, RouteTable
from api.params import check_query, page, parse_body, path_id, single
from api.routes_catalog import ID, page_params
from api.schemas import ListOut, Strict
from api.state import ORG_ID, STATE
from runtime.errors import InvalidRequest
from runtime.serialize import iso
from runtime.storage.webhooks import Delivery, WebhookEndpoint
from runtime.webhooks import WEBHOOK_EVENTS, DeliveryStatus

routes = RouteTable()

WebhookEvent = Literal[
    "run.created",
    "run.started",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.result_ready",
    "run.erased",
    "session.started",
    "session.ended",
    "run.annotated",
    "run.issue.created",
    "run.issue.updated",
]
assert set(WebhookEvent.__args__) == set(WEBHOOK_EVENTS)  # type: ignore[attr-defined]


class WebhookIn(Strict):
    url: str = Field(min_length=1, max_length=2048, pattern="^https?://", description="Where deliveries are POSTed")
    events: list[WebhookEvent] = Field(
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="Event types to deliver (each at most once)",
        json_schema_extra={"uniqueItems": True},
    )
    description: str | None = Field(None, max_length=500)

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("each event type at most once")
        return events


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook"]
    url: str
    events: list[str]
    description: str | None
    created_at: str
    secret: str | None = Field(
        None, description="The signing secret: only in the answer to POST /v1/webhooks (store it then)"
    )


class DeletedOut(BaseModel):
    id: str
    object: str
    deleted: Literal[True]


class DeliveryOut(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    webhook_id: str
    event_type: str
    run_id: str
    seq: int
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt (null: no answer)")
    last_error: str | None
    next_attempt_at: str | None = Field(description="When it is tried again (pending deliveries)")
    created_at: str
    delivered_at: str | None


def webhook_json(endpoint: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": endpoint.id,
        "object": "webhook",
        "url": endpoint.url,
        "events": list(endpoint.events),
        "description": endpoint.description,
        "created_at": iso(endpoint.created_at),
    }
    if secret is not None:
        body["secret"] = secret
    return body


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "object": "webhook_delivery",
        "webhook_id": d.endpoint_id,
        "event_type": d.event_type,
        "run_id": d.run_id,
        "seq": d.seq,
        "status": d.status.value,
        "attempts": d.attempts,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": iso(d.next_attempt_at),
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
    }


@routes.route("POST", "/v1/webhooks", summary="Register a webhook endpoint (the answer shows its secret, once)",
              tag="webhooks", body=WebhookIn, response=WebhookOut, status=201)  # fmt: skip
async def create_webhook(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    body = await parse_body(request, WebhookIn)
    await state.webhook_guard.check_url(body.url)
    endpoint, secret = await state.store.webhooks.create_endpoint(
        request[ORG_ID], url=body.url, events=tuple(body.events), description=body.description
    )
    return web.json_response(webhook_json(endpoint, secret), status=201)


@routes.route("GET", "/v1/webhooks", summary="List webhook endpoints, newest first", tag="webhooks",
              response=ListOut, params=page_params("webhook"))  # fmt: skip
async def list_webhooks(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after"))
    limit, cursor = page(request, "webhook")
    endpoints, has_more = await request.app[STATE].store.webhooks.list_endpoints(
        request[ORG_ID], limit=limit, starting_after=cursor
    )
    return web.json_response({"object": "list", "data": [webhook_json(e) for e in endpoints], "has_more": has_more})


@routes.route("GET", "/v1/webhooks/{id}", summary="Get a webhook endpoint", tag="webhooks", response=WebhookOut,
              errors=(404,), params=(ID,))  # fmt: skip
async def get_webhook(request: web.Request) -> web.Response:
    check_query(request, ())
    endpoint = await request.app[STATE].store.webhooks.get_endpoint(request[ORG_ID], path_id(request, "webhook"))
    return web.json_response(webhook_json(endpoint))


@routes.route("DELETE", "/v1/webhooks/{id}", summary="Delete a webhook endpoint (pending deliveries are dropped)",
              tag="webhooks", response=DeletedOut, errors=(404,), params=(ID,))  # fmt: skip
async def delete_webhook(request: web.Request) -> web.Response:
    check_query(request, ())
    endpoint_id = path_id(request, "webhook")
    await request.app[STATE].store.webhooks.delete_endpoint(request[ORG_ID], endpoint_id)
    return web.json_response({"id": endpoint_id, "object": "webhook", "deleted": True})


@routes.route("GET", "/v1/webhooks/{id}/deliveries", summary="An endpoint's delivery log, newest first",
              tag="webhooks", response=ListOut, errors=(404,),
              params=(ID, *page_params("webhook_delivery"),
                      Param("status", "Only deliveries with this status",
                            {"type": "string", "enum": [s.value for s in DeliveryStatus]})))  # fmt: skip
async def list_deliveries(request: web.Request) -> web.Response:
    check_query(request, ("limit", "starting_after", "status"))
    limit, cursor = page(request, "webhook_delivery")
    raw = single(request, "status")
    try:
        status = DeliveryStatus(raw) if raw is not None else None
    except ValueError:
        allowed = ", ".join(s.value for s in DeliveryStatus)
        raise InvalidRequest(f"unknown status {raw!r}; expected one of {allowed}", param="status") from None
    deliveries, has_more = await request.app[STATE].store.webhooks.list_deliveries(
        request[ORG_ID], path_id(request, "webhook"), limit=limit, starting_after=cursor, status=status
    )
    return web.json_response({"object": "list", "data": [delivery_json(d) for d in deliveries], "has_more": has_more})
