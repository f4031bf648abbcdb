"""First start: an organization, an API key (shown once), a demo blueprint and channels, a demo run.

Later starts find the marker in the ``settings`` table and create nothing but,
when the last demo run has been used, a fresh one, so there is always a ready
join URL to open.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from api.config import ServerConfig
from runtime.storage import RunFilter, Store
from runtime.types import BlueprintContent, ChannelSettings, ChannelType, Participant, Question, RunStatus

MARKER = "bootstrap"

DEMO_BLUEPRINT = BlueprintContent(
    name="Demo: your morning routine",
    greeting="Hello, and thank you for taking part. I will ask you three short questions about your mornings.",
    questions=(
        Question(
            "wake",
            "What time do you usually wake up, and what is the first thing you do?",
            ("What makes you start with that?",),
            1,
        ),
        Question(
            "breakfast", "Tell me about your breakfast on a typical weekday.", ("Is that different at the weekend?",), 1
        ),
        Question("change", "If you could change one thing about your mornings, what would it be and why?", (), 1),
    ),
    closing="That is all I wanted to ask. Thank you very much for your time. Goodbye!",
)


@dataclass(frozen=True)
class Bootstrap:
    org_id: str
    api_key: str | None  # only on the first start
    blueprint_id: str
    chat_channel_id: str
    voice_channel_id: str
    demo_join_url: str


async def bootstrap(store: Store, config: ServerConfig) -> Bootstrap:
    marker = await store.catalog.get_setting(MARKER)
    api_key = None
    if marker is None:
        org_id = await store.catalog.create_organization("Default organization")
        api_key = await store.catalog.create_api_key(org_id)
        bp = await store.catalog.create_blueprint(org_id, DEMO_BLUEPRINT)
        await store.catalog.publish_blueprint(org_id, bp.id)
        chat = await store.catalog.create_channel(
            org_id, type=ChannelType.CHAT, name="Demo chat", settings=ChannelSettings(), metadata={"demo": "true"}
        )
        voice = await store.catalog.create_channel(
            org_id,
            type=ChannelType.WEBRTC_VOICE,
            name="Demo voice",
            settings=ChannelSettings(recording=True),
            metadata={"demo": "true"},
        )
        marker = {"org_id": org_id, "blueprint_id": bp.id, "chat_channel_id": chat.id, "voice_channel_id": voice.id}
        await store.catalog.set_setting(MARKER, marker)
    org_id = marker["org_id"]
    demo = {"demo": "true"}
    runs, _ = await store.runs.list_runs(
        org_id, limit=1, starting_after=None, where=RunFilter(status=RunStatus.PENDING, metadata=demo)
    )
    if runs and runs[0].join_expires_at > time.time():
        run = runs[0]
    else:
        version, _ = await store.catalog.published_content(org_id, marker["blueprint_id"])
        run = await store.runs.create_run(
            org_id,
            blueprint_id=marker["blueprint_id"],
            blueprint_version=version,
            channel_id=marker["chat_channel_id"],
            connector_id=None,
            participant=Participant(name="Demo participant"),
            metadata=demo,
            join_window_s=config.scaled(config.join_window_s),
        )
    return Bootstrap(
        org_id=org_id,
        api_key=api_key,
        blueprint_id=marker["blueprint_id"],
        chat_channel_id=marker["chat_channel_id"],
        voice_channel_id=marker["voice_channel_id"],
        demo_join_url=f"{config.base_url}/join/{run.join_token}",
    )
