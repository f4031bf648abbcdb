"""The voice pipeline's transport over a message socket: Twilio Media Streams, the custom media socket.

:class:`SocketTransport` is an :class:`~media.transport.AudioTransport` that knows nothing of sockets: the
api layer reads the socket, hands it the audio (:meth:`SocketTransport.receive_audio`) and the far end's
playback confirmations (:meth:`SocketTransport.marked`), and gives it ``send`` (put one message on the
socket). What the messages look like is a :class:`Wire`'s business (μ-law in JSON for Twilio, raw PCM16
for the custom socket).

Outbound, every message goes through one queue and one writer task, in order: a mark never overtakes
the audio it follows, a ``clear`` never overtakes the audio it clears, and the real-time playout never
waits on a slow socket (a socket that stops reading is closed by its own side's timeouts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from media.audio import PCM
from media.playout import PacedPlayout, Playback
from media.transport import AudioFrameCallback, InboundAudio

__all__ = ["SocketTransport", "Wire"]

log = logging.getLogger("vivavoce.media_socket")

Message = str | bytes


class Wire(Protocol):
    """How one kind of socket spells the pipeline's outbound messages; None: it has no such message."""

    @property
    def input_rate(self) -> int:
        """Of the audio the far end sends."""

    @property
    def output_rate(self) -> int:
        """Of the audio we send."""

    @property
    def confirms_playback(self) -> bool:
        """The far end echoes marks when it has played the audio before them."""

    def audio(self, pcm: PCM) -> Message: ...

    def mark(self, name: str) -> Message | None: ...

    def clear(self) -> Message | None: ...

    def event(self, event: dict[str, Any]) -> Message | None: ...


class SocketTransport:
    """Audio over a message socket (see the module docs). ``rtt`` may be set by whoever measures it."""

    def __init__(
        self,
        wire: Wire,
        send: Callable[[Message], Awaitable[None]],
        *,
        hang_up: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.wire = wire
        self._hang_up = hang_up
        self.output_rate = wire.output_rate
        self.rtt: float | None = None
        self._send = send
        self._inbound = InboundAudio(wire.input_rate)
        self._outbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name="socket-writer")
        marks = self._send_mark if wire.confirms_playback else None
        self.playout = PacedPlayout(wire.output_rate, self._send_audio, send_mark=marks)
        self._on_audio_frame: AudioFrameCallback = lambda pcm, end_at: None
        self._on_closed: Callable[[str], None] = lambda reason: None
        self._closed_reported = False
        self.closed = False

    # --- AudioTransport ---

    def bind(
        self,
        *,
        on_audio_frame: AudioFrameCallback,
        on_closed: Callable[[str], None],
        on_frame_sent: Callable[[PCM, float], None],
    ) -> None:
        self._on_audio_frame = on_audio_frame
        self._on_closed = on_closed
        self.playout.on_frame_sent = on_frame_sent

    def play(self, playback: Playback) -> None:
        self.playout.play(playback)

    async def stop_playback(self) -> list[Playback]:
        stopped = self.playout.stop()
        clear = self.wire.clear()
        if clear is not None and not self.closed:
            self._outbox.put_nowait(clear)  # the far end drops what it buffered of the speech
        return stopped

    def send_event(self, event: dict[str, Any]) -> None:
        message = self.wire.event(event)
        if message is not None and not self.closed:
            self._outbox.put_nowait(message)

    async def close(self) -> None:
        """Stop speaking and writing (what was queued before is still sent), then hang up. Idempotent."""
        if self.closed:
            return
        self.closed = True
        await self.playout.close()
        self._outbox.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
        except (TimeoutError, asyncio.CancelledError):
            self._writer.cancel()
        if self._hang_up is not None:
            try:
                await self._hang_up()
            except Exception as exc:
                log.debug("hang-up failed: %r", exc)

    # --- from the socket (the api layer's reader) ---

    def receive_audio(self, pcm: PCM, received_at: float) -> None:
        """Inbound audio at the wire's input rate: frames for the pipeline."""
        for frame, end_at in self._inbound.feed(pcm, received_at):
            try:
                self._on_audio_frame(frame, end_at)
            except Exception:  # one bad frame must not stop the participant's audio
                log.exception("on_audio_frame callback failed")

    def marked(self, name: str) -> None:
        """The far end played the audio up to mark ``name``."""
        self.playout.marked(name)

    def remote_closed(self, reason: str) -> None:
        """The far end hung up or the socket dropped: the session ends (reported once, never after close)."""
        if self._closed_reported or self.closed:
            return
        self._closed_reported = True
        self._on_closed(reason)

    # --- writing ---

    async def _send_audio(self, pcm: PCM) -> None:
        if not self.closed:
            self._outbox.put_nowait(self.wire.audio(pcm))

    async def _send_mark(self, name: str) -> None:
        mark = self.wire.mark(name)
        if mark is not None and not self.closed:
            self._outbox.put_nowait(mark)

    async def _write(self) -> None:
        while (message := await self._outbox.get()) is not None:
            try:
                await self._send(message)
            except Exception as exc:  # the socket is gone: the reader reports the close
                log.debug("socket write failed: %r", exc)
                return
