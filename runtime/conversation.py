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

* A participant message arrives while the reply to their answer is being
  composed and nothing of it has been delivered: the participant was not done;
  that reply is cancelled and a new one composed for the whole answer (one reply
  per answer, never two). Once part of the reply is out, the message is kept as
  context: it answers the question that was being asked when it arrived.
* Every participant message answers the question the participant had heard when
  it arrived (:attr:`Conversation.heard_question`), never a question put after it:
  words typed during the greeting answer nothing, and an addition sent while the
  interviewer moved on belongs to the previous question, not the next one. If the
  current question was cut off before it was heard (a barge-in), it is asked again.
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

from collections import deque
from dataclasses import dataclass, field, replace

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
    """A participant answer (chat message or final voice transcript), when it arrived, and what it answers."""

    text: str
    received_at: float
    question_id: str | None = None  # the question the participant had heard when it arrived
    message_id: str | None = None  # as stored


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Compose:
    """Ask the interviewer for the next reply; feed its parts back with this ``turn_id``."""

    turn_id: int
    request: ReplyRequest
    answers: tuple[str, ...] = ()  # ids of the participant messages this reply answers (ANSWER)


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


@dataclass(frozen=True)
class Cancel:
    """The reply of this turn is obsolete: stop composing it (its late parts would be ignored anyway)."""

    turn_id: int


Action = Compose | Deliver | Persist | EndRun | StopPlayback | Cancel

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
    _queue: deque[Utterance] = field(default_factory=deque)  # delivered, not yet played; the head is playing
    _heard: str | None = None  # the question of the last asking utterance the participant heard
    _answering: list[Input] = field(default_factory=list)  # what the reply being composed answers
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
        conv._heard = conv._current_question()  # asked before the restart
        conv.pending = [p if p.question_id is not None else replace(p, question_id=conv._heard) for p in pending]
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
        if self._composing is not None or self._queue:
            return []  # a reply is on its way to the new connection
        if self._time_up_at is not None:
            return self._compose(Purpose.TIME_UP, now, trigger_at=now)
        if not self.position.started:
            return self._compose(Purpose.START, now, trigger_at=now)
        return (self._answer(now) if self.pending else []) or self._compose(Purpose.RESUME, now, trigger_at=now)

    def disconnect(self, now: float) -> list[Action]:
        if self.turn is Turn.ENDED or not self.connected:
            return []
        self.connected = False
        self.disconnected_since = now
        self._speaking = False
        self._queue.clear()  # nobody is listening to what was queued
        return self._after_delivery(now)

    @property
    def heard_question(self) -> str | None:
        """The question a participant message arriving now answers: the last one the participant heard
        (None during the greeting and after the closing). Stored with the message."""
        return self._heard

    def participant_text(
        self, text: str, now: float, *, received_at: float | None = None, message_id: str | None = None
    ) -> list[Action]:
        """A complete participant answer (chat message or final transcript), already stored."""
        if self.turn is Turn.ENDED:
            return []
        item = Input(text, now if received_at is None else received_at, self._heard, message_id)
        self.pending.append(item)
        self._mark_activity(now)
        actions: list[Action] = []
        if self.turn is Turn.PARTICIPANT and self._reminder_started is not None:
            # The reminder is obsolete; answer instead. Parts of it already
            # delivered still report playback, so the queue is left alone.
            if self._composing is Purpose.REMINDER:
                actions.append(Cancel(self._turn_id))
                self._turn_id += 1
                self._composing = None
            self._reminder_started = None
        if (
            self._composing is Purpose.ANSWER
            and not self._delivered_this_turn
            and item.question_id == self._current_question()
            and self._time_up_at is None
        ):
            # The participant was not done: answer the whole of it instead (keeping its first arrival).
            actions.append(Cancel(self._turn_id))
            self._composing = None
            self.pending = [*self._answering, *self.pending]
            return actions + self._answer(now, anchor_last=True)
        if self.turn is Turn.PARTICIPANT and self.connected and self._time_up_at is None:
            return actions + self._answer(now)
        return actions

    def speculative_request(self, text: str, now: float) -> ReplyRequest | None:
        """The request :meth:`participant_text` would make if ``text`` were stored now and ended the turn,
        or None if it would make none (not the participant's turn, a reply under way, time up, ...).

        Nothing changes: the driver may compose it ahead and offer it when the real request matches.
        """
        if (
            self.turn is not Turn.PARTICIPANT
            or not self.connected
            or self._composing is not None
            or self._queue
            or self._time_up_at is not None
            or self._current_question() is None
            or self._heard != self._current_question()
        ):
            return None
        answer = " ".join([*(i.text for i in self.pending if i.question_id == self._heard), text])
        return ReplyRequest(
            self.blueprint,
            self.position,
            Purpose.ANSWER,
            answer=answer,
            now=now,
            started_at=self.started_at,
            max_duration=self.timing.max_duration,
        )

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
        if self.turn is Turn.ENDED or not self._queue:
            return []
        if self._composing is not None:
            self._barged = True
        return [StopPlayback()]

    def playback_stopped(self, now: float) -> list[Action]:
        """Playback was cut short (barge-in): nothing is queued any more; what never started was not heard."""
        self._queue.clear()
        return self._after_delivery(now)

    def utterance_ready(self, turn_id: int, utterance: Utterance, now: float) -> list[Action]:
        if turn_id != self._turn_id or self._composing is None or self._barged:
            return []
        self._delivered_this_turn += 1
        if self.connected:
            self._enqueue(utterance)
        latency = LatencyBreakdown(
            initial_wait=_ms(self._compose_started - self._trigger_at),
            llm=_ms(now - self._compose_started),
        )
        return [Deliver(turn_id, utterance, latency)]

    def turn_ended(self, turn_id: int, end: TurnEnd, now: float) -> list[Action]:
        if turn_id != self._turn_id or self._composing is None:
            return []
        purpose, self._composing = self._composing, None
        self._answering = []
        self.position = end.position if purpose is not Purpose.REMINDER else self.position
        if end.completes:
            self._completes = True
            if end.end_reason is not None and self._time_up_at is None:
                self._end_reason = end.end_reason
        actions: list[Action] = [Persist(self.position, self.idle_since)]
        return actions + self._after_delivery(now)

    def playback_finished(self, now: float) -> list[Action]:
        if self._queue:
            self._queue.popleft()
            if self._queue:
                self._started(self._queue[0])
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
        filler = Utterance(text, UtteranceKind.FILLER)
        self._enqueue(filler)
        latency = LatencyBreakdown(
            initial_wait=_ms(self._compose_started - self._trigger_at), llm=_ms(now - self._compose_started)
        )
        return [Deliver(self._turn_id, filler, latency)]

    def _idle_clock_running(self) -> bool:
        return (
            self.connected
            and self.turn is Turn.PARTICIPANT
            and self._composing is None
            and not self._queue
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

    def _current_question(self) -> str | None:
        questions = self.blueprint.questions
        index = self.position.question_index
        return questions[index].id if 0 <= index < len(questions) else None

    def _enqueue(self, utterance: Utterance) -> None:
        self._queue.append(utterance)
        if len(self._queue) == 1:
            self._started(utterance)

    def _started(self, utterance: Utterance) -> None:
        """``utterance`` is being heard now (chat: sent; voice: its playback began)."""
        if utterance.kind.asks:
            self._heard = utterance.question_id
        elif utterance.kind is UtteranceKind.CLOSING:
            self._heard = None

    def _answer(self, now: float, *, anchor_last: bool = False) -> list[Action]:
        """Answer what the participant said to the current question; [] if nothing of it does.

        The reply's wait (``initial_wait``) runs from the first of the answer's parts, or, when an
        answer grew while its reply was composed (``anchor_last``), from the part that completed it.
        """
        current = self._current_question()
        answers = [item for item in self.pending if item.question_id == current]
        self.pending.clear()  # the rest is stored under the question it answers: context, not an answer
        if not answers:
            if current is not None and self._heard != current:
                return self._compose(Purpose.REASK, now, trigger_at=now)
            return []
        self._answering = answers
        answer = " ".join(item.text for item in answers)
        trigger = answers[-1] if anchor_last else answers[0]
        ids = tuple(i.message_id for i in answers if i.message_id is not None)
        return self._compose(Purpose.ANSWER, now, trigger_at=trigger.received_at, answer=answer, answers=ids)

    def _compose(
        self, purpose: Purpose, now: float, *, trigger_at: float, answer: str = "", answers: tuple[str, ...] = ()
    ) -> list[Action]:
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
        request = ReplyRequest(
            self.blueprint,
            self.position,
            purpose,
            answer=answer,
            now=now,
            started_at=self.started_at,
            max_duration=self.timing.max_duration,
        )
        return [Compose(self._turn_id, request, answers)]

    def _after_delivery(self, now: float) -> list[Action]:
        """Once a reply is composed and fully played, hand the turn over (or finish)."""
        if self.turn is Turn.ENDED or self._composing is not None or self._queue:
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
            answering = self._answer(now)
            if answering:
                return answering
        self.turn = Turn.PARTICIPANT
        self.idle_since = now
        self.position = Position(self.position.question_index, self.position.probes_used)
        return [Persist(self.position, self.idle_since)]
