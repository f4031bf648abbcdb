"""The organization a key belongs to, and its data retention period (ended runs' data erased after it)."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from api.openapi import RouteTable
from api.params import check_query, parse_body
from api.routes_runs import erase
from api.schemas import JsonInt, Strict, int_schema
from api.state import ORG_ID, STATE, AppState
from runtime.serialize import iso
from runtime.storage.erasure import DAY_S, RETENTION, Organization

log = logging.getLogger("vivavoce.retention")

routes = RouteTable()

MAX_RETENTION_DAYS = 3650
RetentionDays = Annotated[JsonInt, Field(ge=1, le=MAX_RETENTION_DAYS), int_schema(1, MAX_RETENTION_DAYS)]


class OrganizationPatch(Strict):
    """A JSON merge patch of the organization: ``retention_days: null`` keeps runs' data for ever."""

    retention_days: RetentionDays | None = Field(
        None, description="Erase an ended run's data this many days after it ended"
    )


class OrganizationOut(BaseModel):
    id: str
    object: Literal["organization"]
    name: str
    created_at: str
    retention_days: int | None = Field(description="Ended runs' data is erased this many days after; null: kept")


def organization_json(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "object": "organization",
        "name": org.name,
        "created_at": iso(org.created_at),
        "retention_days": org.retention_days,
    }


@routes.route("GET", "/v1/organization", summary="The key's organization and its retention period",
              tag="organization", response=OrganizationOut)  # fmt: skip
async def get_organization(request: web.Request) -> web.Response:
    check_query(request, ())
    org = await request.app[STATE].store.erasure.organization(request[ORG_ID])
    return web.json_response(organization_json(org))


@routes.route("PATCH", "/v1/organization", summary="Set the retention period (JSON merge patch)",
              tag="organization", body=OrganizationPatch, body_types=("application/merge-patch+json",
              "application/json"), response=OrganizationOut)  # fmt: skip
async def update_organization(request: web.Request) -> web.Response:
    check_query(request, ())
    state = request.app[STATE]
    patch = await parse_body(request, OrganizationPatch)
    org = await state.store.erasure.organization(request[ORG_ID])
    if "retention_days" in patch.model_fields_set:
        org = await state.store.erasure.set_retention(org.id, patch.retention_days)
    return web.json_response(organization_json(org))


async def erase_expired(state: AppState, *, batch: int = 100) -> int:
    """Erase the runs whose organization's retention period has passed since they ended; returns how many."""
    day = state.config.scaled(DAY_S)
    erased = 0
    while True:
        due = await state.store.erasure.due(now=time.time(), limit=batch, day_s=day)
        for run_id in due:
            await erase(state, await state.store.runs.get_run(run_id), by=RETENTION)
        erased += len(due)
        if len(due) < batch:
            return erased
