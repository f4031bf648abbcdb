"""What a live run talks to: a participant link (chat websocket or WebRTC peer) and how playback is reported."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.types import LatencyBreakdown, Message, SessionType

log = logging.getLogger("vivavoce.live")

CLOSE_REPLACED = 4001
CLOSE_GOING_AWAY = 1001
RESTARTING = "The server is restarting; reconnect in a moment to continue."
REPLACED = "This interview was opened in another window; this one has been disconnected."


@dataclass(frozen=True)
class PlaybackReport:
    """How an assistant message was actually played (voice): what the recording and transcript must say."""

    message_id: str
    started_at: float | None  # first frame handed to the transport; None if it never started
    ended_at: float
    content: str  # the words actually played (cut short on barge-in)
    interrupted: bool
    latency: LatencyBreakdown | None


class ParticipantLink(Protocol):
    """A live connection to the participant: a chat websocket, or a voice transport (WebRTC, phone, media socket)."""

    session_type: SessionType
    plays_audio: bool  # False: a message counts as played as soon as it is delivered
    user_number: str | None  # a phone call's caller or callee (stored on the session)

    @property
    def rtt(self) -> float | None:
        """Latest measured round-trip time in seconds, if any."""

    async def send(self, frame: dict[str, Any]) -> None:
        """A protocol frame (session.ready, message.ack, typing, message.delta, run.ended, error)."""

    async def deliver(self, message: Message, run_started_at: float | None) -> None:
        """Present an assistant message that has been stored: send it (chat) or start speaking it (voice)."""

    async def stop_playback(self) -> list[PlaybackReport]:
        """Barge-in: stop speaking at once; reports for what was cut (chat: nothing)."""

    async def close(self, code: int, reason: str) -> None: ...


async def send_quietly(link: ParticipantLink, frame: dict[str, Any]) -> None:
    """:func:`quietly` for a spawned send: the send starts only if the task does (a task cancelled
    before it ran, as the run ended, would otherwise leave a send coroutine never awaited)."""
    await quietly(link.send(frame))


async def quietly(awaitable: Any) -> None:
    """Send to a participant who may already be gone: a dead socket must not break the run."""
    try:
        await awaitable
    except Exception as exc:
        log.debug("send to participant failed: %r", exc)
