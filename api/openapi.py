"""A route table that documents itself: every handler is registered with its OpenAPI description.

Handlers are declared with :meth:`RouteTable.route`, which records the method,
path, request and response models and query parameters; :meth:`RouteTable.document`
turns the table into an OpenAPI 3.1 document whose schemas come from the
pydantic models. Since routes can only be added through the table, a route
cannot exist without documentation (and a test checks the aiohttp router
against the document).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.schemas import ErrorOut

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    where: str = "query"
    required: bool = False


@dataclass(frozen=True)
class RouteDoc:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    params: tuple[Param, ...] = ()
    auth: bool = True
    content_types: tuple[str, ...] = ("application/json",)  # of the success response; () for none (a redirect)
    errors: tuple[int, ...] = ()
    body_types: tuple[str, ...] = ("application/json",)  # what the request body may be sent as
    error_type: str = "application/json"  # pages answer their errors as pages (text/html)
    error_model: type[BaseModel] | None = None  # the errors' body, if not the API's ErrorOut (MCP: JSON-RPC's)
    also: tuple[int, ...] = ()  # other answers without a body: 303 See Other (a redirect), 202 Accepted


class RouteTable:
    def __init__(self) -> None:
        self.routes: list[RouteDoc] = []

    def route(self, method: str, path: str, **doc: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(RouteDoc(method.upper(), path, handler, **doc))
            return handler

        return register

    def add_to(self, router: web.UrlDispatcher) -> None:
        for r in self.routes:
            router.add_route(r.method, r.path, r.handler)

    def document(self, *, title: str, version: str) -> dict[str, Any]:
        inputs = {r.body for r in self.routes if r.body is not None}
        outputs = {ErrorOut} | {r.response for r in self.routes if r.response is not None}
        outputs |= {r.error_model for r in self.routes if r.error_model is not None}
        wanted = [(m, "validation") for m in inputs] + [(m, "serialization") for m in outputs]
        keyed, defs = models_json_schema(
            sorted(wanted, key=lambda item: (item[0].__name__, item[1])),  # type: ignore[arg-type]
            ref_template="#/components/schemas/{model}",
        )
        refs = {m: schema for (m, _mode), schema in keyed.items()}
        paths: dict[str, dict[str, Any]] = {}
        for r in self.routes:
            paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, refs)
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": defs.get("$defs", {}),
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                },
            },
        }


def _operation(r: RouteDoc, refs: dict[Any, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": r.summary,
        "tags": [r.tag],
        "operationId": r.handler.__name__,
        "parameters": [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "description": p.description,
                "schema": p.schema,
            }
            for p in r.params
        ],
    }
    if r.body is not None:
        body = {"schema": refs[r.body]}
        op["requestBody"] = {"required": True, "content": {ctype: body for ctype in r.body_types}}
    content: dict[str, Any] = {}
    for ctype in r.content_types:
        content[ctype] = {"schema": refs[r.response]} if r.response and ctype == "application/json" else {}
    success: dict[str, Any] = {"description": "OK"}
    if content:
        success["content"] = content
    responses: dict[str, Any] = {str(r.status): success}
    for status in r.also:
        responses[str(status)] = {"description": _OTHER_TEXT[status]}
    schema = {"schema": refs[r.error_model or ErrorOut]} if r.error_type == "application/json" else {}
    error = {"content": {r.error_type: schema}}
    body_limit = (413,) if r.body is not None else ()  # api.app's body limit answers before any handler
    for status in sorted({400, *r.errors, *body_limit, *((401,) if r.auth else ())}):
        json_error = {"content": {"application/json": {"schema": refs[ErrorOut]}}}
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            **(json_error if status == 413 else error),
        }
    op["responses"] = responses
    if r.auth:
        op["security"] = [{"bearer": []}, {"apiKey": []}]
    return op


_OTHER_TEXT = {
    202: "Accepted (nothing to answer)",
    303: "See Other (the Location header says where)",
    503: "Draining: this process is handing its interviews over (the same body; route elsewhere)",
}
_ERROR_TEXT = {
    400: "Invalid request",
    401: "Missing or unknown API key",
    404: "Not found (or owned by another organization)",
    409: "Conflict with the object's state",
    410: "Gone: the run's data was erased (DELETE /v1/runs/{id} or the retention period)",
    413: "Body too large",
}
