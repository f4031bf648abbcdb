"""The turn-taking core of one run: events in, actions out, ``now`` passed in.

A :class:`Conversation` lives as long as its run is in progress, across the
run's sessions (connections). It knows whose turn it is and which timers are
running; it never touches a socket, a clock or the database. Its driver
(``api.live``) feeds it events, executes the actions it returns, and calls
:meth:`Conversation.tick` no later than :meth:`Conversation.deadline`.

The same machine serves chat and voice: a chat driver reports
:meth:`playback_finished` as soon as a message is sent; a voice driver reports
it when the last audio frame has been played.

Races it guards against:

* A participant message arrives while a reply is being composed: it is queued
  and answered as soon as the current reply has been delivered (its wait is the
  ``initial_wait`` stage), never dropped and never answered twice.
* A reply finishes after something made it obsolete (the participant answered
  during a reminder, the time limit struck, the run was cancelled): every
  :class:`Compose` carries a ``turn_id`` and late parts of stale turns are
  ignored.
* The idle reminder and the idle timeout fire only while it is the
  participant's turn, a participant is connected and not speaking; time spent
  delivering the reminder does not count.
* The participant drops and rejoins: answers that were stored but not yet
  answered (say, after a crash) are answered on rejoin; otherwise the current
  question is asked again. A reply already being composed is delivered to the
  new connection instead.
* The participant barges in while the interviewer speaks (voice): playback
  stops, utterances of that reply still to come are dropped, but its
  :class:`TurnEnd` still moves the interview on, so the answer is taken as an
  answer to what was being asked.
* A reply is slow (voice): one filler per turn after ``filler_after``; a
  reply that arrives while the filler plays is queued behind it.
* The time limit strikes while the participant is away: the run ends at once;
  while connected, the closing is delivered first, with a hard stop after
  ``closing_grace`` in case delivery never finishes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.interviewer import Purpose, ReplyRequest, TurnEnd, Utterance
from runtime.types import BlueprintContent, EndReason, LatencyBreakdown, Position, StrEnum, UtteranceKind


class Turn(StrEnum):
    ASSISTANT = "assistant"  # composing or delivering a reply
    PARTICIPANT = "participant"  # waiting for the participant
    ENDED = "ended"


@dataclass(frozen=True)
class Timing:
    """Durations in seconds, already scaled by the driver."""

    idle_timeout: float
    max_duration: float
    closing_grace: float = 30.0
    filler_after: float | None = None  # voice: say a filler if a reply takes longer than this


@dataclass(frozen=True)
class Input:
    """A participant answer (chat message or final voice transcript) and when it arrived."""

    text: str
    received_at: float


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Compose:
    """Ask the interviewer for the next reply; feed its parts back with this ``turn_id``."""

    turn_id: int
    request: ReplyRequest


@dataclass(frozen=True)
class Deliver:
    """Store this utterance as an assistant message, then send or play it."""

    turn_id: int
    utterance: Utterance
    latency: LatencyBreakdown


@dataclass(frozen=True)
class Persist:
    """Save where the interview stands, so a restarted server can pick it up."""

    position: Position
    idle_since: float | None


@dataclass(frozen=True)
class EndRun:
    reason: EndReason


@dataclass(frozen=True)
class StopPlayback:
    """The participant barged in: stop speaking now, then report :meth:`Conversation.playback_stopped`."""


Action = Compose | Deliver | Persist | EndRun | StopPlayback

FILLERS = ("Hmm, let me think.", "One moment.", "Okay, just a second.")


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000.0, 3)


@dataclass
class Conversation:
    blueprint: BlueprintContent
    timing: Timing
    position: Position = field(default_factory=Position)
    started_at: float | None = None
    idle_since: float | None = None
    turn: Turn = Turn.ASSISTANT
    connected: bool = False
    disconnected_since: float | None = None
    pending: list[Input] = field(default_factory=list)

    # the reply in flight
    _turn_id: int = 0
    _composing: Purpose | None = None
    _compose_started: float = 0.0
    _trigger_at: float = 0.0  # when what this reply answers happened (initial_wait anchor)
    _undelivered: int = 0
    _completes: bool = False
    _end_reason: EndReason = EndReason.COMPLETED
    _time_up_at: float | None = None
    _speaking: bool = False
    _reminder_started: float | None = None
    _barged: bool = False  # the participant interrupted this reply: drop its remaining utterances
    _delivered_this_turn: int = 0
    _filler_given: bool = False
    _fillers_said: int = 0
    _connected_at: float = 0.0

    # --- restoring ------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        blueprint: BlueprintContent,
        timing: Timing,
        *,
        position: Position,
        started_at: float | None,
        idle_since: float | None,
        pending: list[Input],
        last_seen: float | None,
    ) -> Conversation:
        """Rebuild a conversation whose participant is not connected (new process, or first join)."""
        conv = cls(blueprint, timing, position=position, started_at=started_at, idle_since=idle_since)
        conv.pending = list(pending)
        conv.turn = Turn.PARTICIPANT if position.started else Turn.ASSISTANT
        conv.disconnected_since = last_seen if started_at is not None else None
        return conv

    # --- events -----------------------------------------------------------------

    def connect(self, now: float) -> list[Action]:
        """A participant connection is live (first join or rejoin)."""
        if self.turn is Turn.ENDED:
            return []
        self.connected = True
        self.disconnected_since = None
        self._connected_at = now
        self._speaking = False
        if self.started_at is None:
            self.started_at = now
        if self._composing is not None or self._undelivered:
            return []  # a reply is on its way to the new connection
        if self._time_up_at is not None:
            return self._compose(Purpose.TIME_UP, now, trigger_at=now)
        if not self.position.started:
            return self._compose(Purpose.START, now, trigger_at=now)
        if self.pending:
            return self._answer(now)
        return self._compose(Purpose.RESUME, now, trigger_at=now)

    def disconnect(self, now: float) -> list[Action]:
        if self.turn is Turn.ENDED or not self.connected:
            return []
        self.connected = False
        self.disconnected_since = now
        self._speaking = False
        self._undelivered = 0  # nobody is listening to what was queued
        return self._after_delivery(now)

    def participant_text(self, text: str, now: float, *, received_at: float | None = None) -> list[Action]:
        """A complete participant answer (chat message or final transcript), already stored."""
        if self.turn is Turn.ENDED:
            return []
        self.pending.append(Input(text, now if received_at is None else received_at))
        self._mark_activity(now)
        if self.turn is Turn.PARTICIPANT and self._reminder_started is not None:
            # The reminder is obsolete; answer instead. Parts of it already
            # delivered still report playback, so _undelivered is left alone.
            if self._composing is Purpose.REMINDER:
                self._turn_id += 1
                self._composing = None
            self._reminder_started = None
        if self.turn is Turn.PARTICIPANT and self.connected and self._time_up_at is None:
            return self._answer(now)
        return []

    def participant_activity(self, now: float) -> None:
        """Typing, or any sign of life that is not an answer: restarts the idle clock."""
        self._mark_activity(now)

    def speech_started(self, now: float) -> None:
        self._speaking = True

    def speech_ended(self, now: float) -> None:
        self._speaking = False
        self._mark_activity(now)

    def speech_interrupting(self, now: float) -> list[Action]:
        """The participant has spoken long enough to count as an interruption (voice)."""
        if self.turn is Turn.ENDED or not self._undelivered:
            return []
        if self._composing is not None:
            self._barged = True
        return [StopPlayback()]

    def playback_stopped(self, now: float) -> list[Action]:
        """Playback was cut short (barge-in): nothing is queued any more."""
        self._undelivered = 0
        return self._after_delivery(now)

    def utterance_ready(self, turn_id: int, utterance: Utterance, now: float) -> list[Action]:
        if turn_id != self._turn_id or self._composing is None or self._barged:
            return []
        self._delivered_this_turn += 1
        self._undelivered += 1 if self.connected else 0
        latency = LatencyBreakdown(
            initial_wait=_ms(self._compose_started - self._trigger_at),
            llm=_ms(now - self._compose_started),
        )
        return [Deliver(turn_id, utterance, latency)]

    def turn_ended(self, turn_id: int, end: TurnEnd, now: float) -> list[Action]:
        if turn_id != self._turn_id or self._composing is None:
            return []
        purpose, self._composing = self._composing, None
        self.position = end.position if purpose is not Purpose.REMINDER else self.position
        if end.completes:
            self._completes = True
        actions: list[Action] = [Persist(self.position, self.idle_since)]
        return actions + self._after_delivery(now)

    def playback_finished(self, now: float) -> list[Action]:
        if self._undelivered:
            self._undelivered -= 1
        return self._after_delivery(now)

    def end(self, reason: EndReason) -> list[Action]:
        """End from outside (cancel through the API, server error)."""
        if self.turn is Turn.ENDED:
            return []
        self.turn = Turn.ENDED
        self._turn_id += 1
        return [EndRun(reason)]

    # --- time -------------------------------------------------------------------

    def deadline(self) -> float | None:
        """The next moment :meth:`tick` has something to do, or None."""
        if self.turn is Turn.ENDED or self.started_at is None:
            return None
        t = self.timing
        candidates = []
        if self._time_up_at is None:
            candidates.append(self.started_at + t.max_duration)
        else:
            candidates.append(self._time_up_at + t.closing_grace)
        if t.filler_after is not None and self._composing is Purpose.ANSWER and not self._filler_given:
            candidates.append(self._compose_started + t.filler_after)
        if not self.connected and self.disconnected_since is not None:
            candidates.append(self.disconnected_since + t.idle_timeout)
        elif self._idle_clock_running():
            assert self.idle_since is not None
            if not self.position.reminded:
                candidates.append(self.idle_since + t.idle_timeout / 2)
            candidates.append(self.idle_since + t.idle_timeout)
        return min(candidates)

    def tick(self, now: float) -> list[Action]:
        if self.turn is Turn.ENDED or self.started_at is None:
            return []
        t = self.timing
        if self._time_up_at is None and now >= self.started_at + t.max_duration:
            self._time_up_at = now
            if self._completes:
                return []  # the interview's own closing is already under way
            self._end_reason = EndReason.MAX_DURATION
            self.pending.clear()
            if not self.connected:
                return self.end(EndReason.MAX_DURATION)
            # What is already playing plays out; the closing is queued behind it.
            return self._compose(Purpose.TIME_UP, now, trigger_at=now)
        if self._time_up_at is not None and now >= self._time_up_at + t.closing_grace:
            return self.end(self._end_reason)
        if self._filler_due(now):
            return self._filler(now)
        if not self.connected:
            if self.disconnected_since is not None and now >= self.disconnected_since + t.idle_timeout:
                return self.end(EndReason.PARTICIPANT_LEFT)
            return []
        if self._idle_clock_running():
            assert self.idle_since is not None
            if now >= self.idle_since + t.idle_timeout:
                return self.end(EndReason.IDLE_TIMEOUT)
            if not self.position.reminded and now >= self.idle_since + t.idle_timeout / 2:
                self.position = Position(self.position.question_index, self.position.probes_used, reminded=True)
                return self._compose(Purpose.REMINDER, now, trigger_at=now)
        return []

    # --- internals ----------------------------------------------------------------

    def _filler_due(self, now: float) -> bool:
        after = self.timing.filler_after
        return (
            after is not None
            and self.connected
            and self._composing is Purpose.ANSWER
            and not self._filler_given
            and not self._delivered_this_turn
            and now >= self._compose_started + after
        )

    def _filler(self, now: float) -> list[Action]:
        self._filler_given = True
        text = FILLERS[self._fillers_said % len(FILLERS)]
        self._fillers_said += 1
        self._undelivered += 1
        latency = LatencyBreakdown(
            initial_wait=_ms(self._compose_started - self._trigger_at), llm=_ms(now - self._compose_started)
        )
        return [Deliver(self._turn_id, Utterance(text, UtteranceKind.FILLER), latency)]

    def _idle_clock_running(self) -> bool:
        return (
            self.connected
            and self.turn is Turn.PARTICIPANT
            and self._composing is None
            and not self._undelivered
            and not self._speaking
            and self.idle_since is not None
        )

    def _mark_activity(self, now: float) -> None:
        if self.turn is Turn.PARTICIPANT:
            self.idle_since = now
            if self._reminder_started is not None:
                self._reminder_started = now  # the clock restarts once the reminder has played
            if self.position.reminded:
                self.position = Position(self.position.question_index, self.position.probes_used)

    def _answer(self, now: float) -> list[Action]:
        answer = " ".join(item.text for item in self.pending)
        trigger_at = self.pending[0].received_at
        self.pending.clear()
        return self._compose(Purpose.ANSWER, now, trigger_at=trigger_at, answer=answer)

    def _compose(self, purpose: Purpose, now: float, *, trigger_at: float, answer: str = "") -> list[Action]:
        self._turn_id += 1
        self._composing = purpose
        self._barged = False
        self._delivered_this_turn = 0
        self._filler_given = False
        self._compose_started = now
        self._trigger_at = trigger_at
        if purpose is Purpose.REMINDER:
            self._reminder_started = now
        else:
            self.turn = Turn.ASSISTANT
        request = ReplyRequest(self.blueprint, self.position, purpose, answer=answer)
        return [Compose(self._turn_id, request)]

    def _after_delivery(self, now: float) -> list[Action]:
        """Once a reply is composed and fully played, hand the turn over (or finish)."""
        if self.turn is Turn.ENDED or self._composing is not None or self._undelivered:
            return []
        if self._completes:
            return self.end(self._end_reason)
        if self.turn is Turn.PARTICIPANT:
            # A reminder was delivered and the participant's turn goes on; the
            # time spent composing and playing it was not the participant's silence.
            if self._reminder_started is not None and self.idle_since is not None:
                self.idle_since += now - self._reminder_started
            self._reminder_started = None
            return [Persist(self.position, self.idle_since)]
        if not self.connected:
            self.turn = Turn.PARTICIPANT
            return []
        if self.pending:
            return self._answer(now)
        self.turn = Turn.PARTICIPANT
        self.idle_since = now
        self.position = Position(self.position.question_index, self.position.probes_used)
        return [Persist(self.position, self.idle_since)]
