"""The REST calls a load test makes (create a run, find a blueprint, read a run back), pinned to one origin.

Every request is built from the configured base URL, never from a URL the
server returned, redirects are not followed, and every call has a connect and
a total timeout.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import aiohttp

from api.loadtest.config import Origin


class ApiError(Exception):
    """A REST call failed: status (0 when there was no answer) and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


def describe(exc: BaseException) -> str:
    """A short, stable reason for an exception (used to group failures in the report)."""
    if isinstance(exc, ApiError):
        return str(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.__class__.__name__})"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"websocket handshake refused (HTTP {exc.status})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    return exc.__class__.__name__ + (f": {exc}" if str(exc) else "")


class ServerApi:
    """A small client for ``/v1``, bound to the target origin and an API key."""

    def __init__(
        self,
        origin: Origin,
        api_key: str | None,
        *,
        connect_timeout_s: float,
        request_timeout_s: float,
        concurrency: int = 32,
    ) -> None:
        self.origin = origin
        self.base = str(origin)
        self.api_key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self._concurrency = concurrency
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ServerApi:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        connector = aiohttp.TCPConnector(limit=self._concurrency)
        self._http = aiohttp.ClientSession(headers=headers, timeout=self._timeout, connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """JSON in, JSON out; anything but 2xx raises :class:`ApiError`."""
        assert self._http is not None, "use ServerApi as an async context manager"
        assert path.startswith("/"), path
        async with self._http.request(method, self.base + path, allow_redirects=False, **kwargs) as resp:
            text = await resp.text()
            if resp.status // 100 != 2:
                try:
                    message = json.loads(text)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = text[:200] or resp.reason or ""
                raise ApiError(resp.status, str(message))
            try:
                return json.loads(text)
            except ValueError:
                raise ApiError(resp.status, "the answer is not JSON") from None

    async def first_published_blueprint(self) -> str:
        """The newest blueprint with a published version (GET /v1/blueprints, newest first, paged)."""
        cursor: str | None = None
        for _ in range(100):  # at most 10,000 blueprints
            params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
            page = await self.request("GET", "/v1/blueprints", params=params)
            for bp in page["data"]:
                if bp.get("published_version") is not None:
                    return str(bp["id"])
            if not page.get("has_more") or not page["data"]:
                break
            cursor = page["data"][-1]["id"]
        raise ApiError(0, "no published blueprint: publish one or pass --blueprint")

    async def get_channel(self, channel_id: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/v1/channels/{quote(channel_id, safe='')}"))

    async def create_run(self, blueprint_id: str, channel_id: str, *, metadata: dict[str, str]) -> dict[str, Any]:
        body = {"blueprint_id": blueprint_id, "channel_id": channel_id, "metadata": metadata}
        return dict(await self.request("POST", "/v1/runs", json=body))

    async def get_run(self, run_id: str, *expand: str) -> dict[str, Any]:
        params = [("expand", e) for e in expand]
        return dict(await self.request("GET", f"/v1/runs/{quote(run_id, safe='')}", params=params))
