"""Phone interviews (telephony channels): Twilio's webhooks and outbound calls (:mod:`api.telephony.routes`),
its Media Streams websocket into the voice pipeline (:mod:`api.telephony.stream`), and what both need of
Twilio (:mod:`api.telephony.twilio`). Set-up: docs/telephony.md."""

from __future__ import annotations

from api.openapi import RouteTable
from api.telephony import routes as webhooks
from api.telephony import stream

routes = RouteTable()
routes.routes.extend([*webhooks.routes.routes, *stream.routes.routes])

__all__ = ["routes"]
