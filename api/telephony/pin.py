"""PIN entry: a caller to a ``pin`` channel names their run by keying in its PIN or saying it.

The prompt ("please say or key in your six digit interview PIN") plays while the caller answers; keyed
digits come from the stream's ``dtmf`` frames, spoken ones from :class:`~api.telephony.digit_listener.
DigitListener` (VAD, endpointing, the recogniser, words read as digits). Both feed the same try
(:class:`PinAttempt`), so the tries are counted together: three wrong PINs, keyed or said, and the call
ends. Speaking stops the prompt, as a barge-in stops the interviewer.

A try ends when it holds six digits or more, on ``#`` (``*`` starts it again), or when nothing has come
for ``PIN_TIMEOUT_S``; then the PIN is looked up among the channel's open runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api.telephony.digit_listener import Speaking, Spoken
from media.transport import AudioTransport
from runtime.storage import Store
from runtime.types import Channel

log = logging.getLogger("vivavoce.telephony")

__all__ = ["ASK_PIN", "NO_PIN", "PIN_DIGITS", "PIN_TRIES", "WRONG_PIN", "Keyed", "PinAttempt", "PinEntry", "PinInput"]

PIN_DIGITS = 6
PIN_TRIES = 3
PIN_TIMEOUT_S = 30.0  # per try, between two inputs
ASK_PIN = "Welcome. Please say or key in your six digit interview PIN."
WRONG_PIN = "Sorry, that PIN was not recognised. Please say or key it in again."
NO_PIN = "Sorry, we could not find your interview. Goodbye."


@dataclass(frozen=True)
class Keyed:
    """A keypad digit (``0``-``9``, ``*``, ``#``) from a ``dtmf`` frame."""

    digit: str


PinInput = Keyed | Speaking | Spoken


class PinAttempt:
    """One try at the PIN: keyed and spoken digits in the order they come (sans-I/O)."""

    def __init__(self) -> None:
        self.digits = ""

    def add(self, entry: Keyed | Spoken) -> str | None:
        """The PIN entered, once this try is over (six digits or more, or ``#``); None while it goes on.

        An utterance of exactly six digits is a whole PIN said at once: it replaces whatever came before
        (a stray "to" heard earlier must not spoil it). An utterance with no digits changes nothing.
        """
        if isinstance(entry, Keyed):
            if entry.digit == "#":
                return self.digits
            self.digits = "" if entry.digit == "*" else self.digits + entry.digit
        elif len(entry.digits) == PIN_DIGITS:
            self.digits = entry.digits
        else:
            self.digits += entry.digits
        return self.digits if len(self.digits) >= PIN_DIGITS else None


class PinEntry:
    """The prompt loop of one call (see the module docs).

    ``inputs`` receives what the caller does (the stream's reader puts :class:`Keyed`, the digit listener
    :class:`Speaking` and :class:`Spoken`); ``say`` plays a prompt and returns when it was heard (or cut).
    """

    def __init__(
        self,
        store: Store,
        transport: AudioTransport,
        say: Callable[[str], Awaitable[object]],
        inputs: asyncio.Queue[PinInput],
        *,
        timeout_s: float = PIN_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.transport = transport
        self.say = say
        self.inputs = inputs
        self.timeout_s = timeout_s
        self.prompt: asyncio.Task[object] | None = None

    async def run_id(self, channel: Channel) -> str | None:
        """Ask until the PIN names an open run of ``channel`` (its id), at most ``PIN_TRIES`` times;
        None when every try failed (the caller has been told)."""
        prompt = ASK_PIN
        try:
            for _ in range(PIN_TRIES):
                await self._stop_prompt()  # what is left of the last prompt is not the news now
                self.prompt = asyncio.create_task(self._say(prompt))  # the caller may answer while it plays
                pin = await self._entry()
                if pin is not None and len(pin) == PIN_DIGITS:
                    run = await self.store.runs.run_by_pin(channel.id, pin)
                    if run is not None:
                        return run.id
                log.info("a caller to channel %s entered a PIN that names no open run", channel.id)
                prompt = WRONG_PIN
            await self._stop_prompt()
            await self.say(NO_PIN)
            return None
        finally:
            await self._stop_prompt()

    async def _say(self, text: str) -> object:
        return await self.say(text)

    async def _entry(self) -> str | None:
        """One try: what was entered, or None if nothing came before the timeout."""
        attempt = PinAttempt()
        while True:
            try:
                entry = await asyncio.wait_for(self.inputs.get(), self.timeout_s)
            except TimeoutError:
                return attempt.digits or None
            if isinstance(entry, Speaking):  # the caller talks over the prompt: it stops
                if self.prompt is not None and not self.prompt.done():
                    await self.transport.stop_playback()
                continue
            pin = attempt.add(entry)
            if pin is not None:
                return pin

    async def _stop_prompt(self) -> None:
        if self.prompt is not None and not self.prompt.done():
            await self.transport.stop_playback()
            self.prompt.cancel()
            await asyncio.gather(self.prompt, return_exceptions=True)
