"""What request handlers share: configuration, storage, live runs, and the event hub."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from api.config import ServerConfig
from api.jobs import JobRunner
from api.live import LiveRuns
from api.loop_lag import LoopLagMonitor
from api.voice import VoiceServices
from api.webhooks import AddressGuard, DeliveryWorker
from runtime.events import EventHub
from runtime.storage import Store


@dataclass
class AppState:
    config: ServerConfig
    store: Store
    hub: EventHub
    live: LiveRuns
    voice: VoiceServices
    loop_lag: LoopLagMonitor
    webhook_guard: AddressGuard
    webhooks: DeliveryWorker
    jobs: JobRunner

    def join_url(self, token: str) -> str:
        return f"{self.config.base_url}/join/{token}"


STATE = web.AppKey("vivavoce_state", AppState)
ORG_ID = web.RequestKey("vivavoce_org_id", str)  # set by the auth middleware
KEY_ID = web.RequestKey("vivavoce_key_id", str)  # the API key that made the request (key_...), for the record
