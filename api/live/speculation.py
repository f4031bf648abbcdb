"""Speculative replies (voice): compose the answer's reply during the pause, before the turn is over.

When the endpointer reports a pause and the early transcript is ready, the reply to
that transcript is composed at once, in the background. If the participant goes on
speaking, it is cancelled and discarded; if the turn ends on the same words, the
conversation's request for that reply is served from it (parts already composed come
at once, the rest as they arrive), and the time gained is how early it started.
Nothing of a speculation reaches the participant or the database unless it is used.

Races it guards against: the speculation is keyed on everything the reply depends on
(purpose, position, the answer's words), so a reply composed for other words, another
question or a turn that changed meanwhile is never delivered; a used speculation is
consumed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from runtime.interviewer import Interviewer, Purpose, ReplyPart, ReplyRequest


def same_words(a: str, b: str) -> bool:
    """Equal but for case, spacing and punctuation (recognisers differ in those between passes)."""

    def norm(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())

    return norm(a) == norm(b)


@dataclass
class SpeculationStats:
    """How speculation went in this process: for benchmarks and /v1/debug/runtime."""

    started: int = 0
    used: int = 0
    wasted: int = 0  # cancelled, or the turn ended on other words
    lead_ms: list[float] = field(default_factory=list)  # per used speculation: how much earlier it started

    def as_dict(self) -> dict[str, object]:
        return {"started": self.started, "used": self.used, "wasted": self.wasted, "lead_ms": self.lead_ms[-100:]}


class Speculation:
    def __init__(self, interviewer: Interviewer, request: ReplyRequest, started_at: float) -> None:
        self.request = request
        self.started_at = started_at
        self.parts: list[ReplyPart] = []
        self.done = False
        self.error: BaseException | None = None
        self._more = asyncio.Event()
        self._task = asyncio.create_task(self._compose(interviewer))

    async def _compose(self, interviewer: Interviewer) -> None:
        try:
            async for part in interviewer.reply(self.request):
                self.parts.append(part)
                self._more.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # surfaced to whoever uses it; an unused one just ends
            self.error = exc
        finally:
            self.done = True
            self._more.set()

    def matches(self, request: ReplyRequest) -> bool:
        mine = self.request
        return (
            request.purpose is Purpose.ANSWER
            and mine.purpose is Purpose.ANSWER
            and request.position == mine.position
            and request.blueprint is mine.blueprint
            and same_words(request.answer, mine.answer)
        )

    async def replay(self) -> AsyncIterator[ReplyPart]:
        """The reply's parts: those composed so far at once, then the rest as they come."""
        sent = 0
        while True:
            while sent < len(self.parts):
                yield self.parts[sent]
                sent += 1
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self._more.clear()
            if sent == len(self.parts) and not self.done:
                await self._more.wait()

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
