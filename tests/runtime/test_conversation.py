"""The turn-taking state machine, driven by a fake clock and a small in-test driver.

The driver executes actions the way ``api.live`` would: a ``Compose`` runs the
scripted interviewer and feeds its parts back, a ``Deliver`` is "sent" (and, for
chat, reported played at once), and time only moves when a test advances it;
whenever it does, ``tick`` is called at every ``deadline()`` on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.conversation import (
    Action,
    Cancel,
    Compose,
    Conversation,
    Deliver,
    EndRun,
    Input,
    Persist,
    StopPlayback,
    Timing,
    Turn,
)
from runtime.interviewer import Purpose, ReplyPart, ScriptedInterviewer, TurnEnd, Utterance
from runtime.types import BlueprintContent, EndReason, LatencyBreakdown, Position, Question, UtteranceKind

BLUEPRINT = BlueprintContent(
    name="Work",
    greeting="Hello, thanks for joining.",
    questions=(
        Question("q1", "What do you do for a living?", probes=("What does a typical day look like?",), max_probes=2),
        Question("q2", "What do you enjoy most about it?"),
        Question("q3", "What would you change about it?", max_probes=0),
    ),
    closing="That is all, thank you for your time.",
)
TIMING = Timing(idle_timeout=60.0, max_duration=600.0, closing_grace=30.0)
SHORT_LIMIT = Timing(idle_timeout=1000.0, max_duration=100.0, closing_grace=30.0)  # time runs out before idling

LONG = "I have been a nurse for ten years"
LONG2 = "Helping people get better every single day"
LONG3 = "I would like shorter shifts and more staff"
SHORT = "Nursing."


@dataclass
class Driver:
    """Executes a conversation's actions like a driver would, on a fake clock.

    Chat (default): every delivery is played at once. ``voice=True``: deliveries
    play until :meth:`play_out`. ``hold=True``: composes wait for :meth:`finish`.
    """

    conv: Conversation
    voice: bool = False
    hold: bool = False
    now: float = 0.0
    composes: list[Compose] = field(default_factory=list)
    held: dict[int, list[ReplyPart]] = field(default_factory=dict)  # turn_id -> parts not yet produced
    sent: list[Deliver] = field(default_factory=list)
    playing: list[Deliver] = field(default_factory=list)
    persisted: list[Persist] = field(default_factory=list)
    ended: list[EndReason] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    # --- executing actions

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Compose):
                self.composes.append(action)
                self.held[action.turn_id] = ScriptedInterviewer().plan(action.request)
                if not self.hold:
                    self.finish(action)
            elif isinstance(action, Deliver):
                self.sent.append(action)
                if self.voice:
                    self.playing.append(action)
                else:
                    self.run(self.conv.playback_finished(self.now))
            elif isinstance(action, Persist):
                self.persisted.append(action)
            elif isinstance(action, Cancel):
                self.cancelled.append(action.turn_id)
                self.held.pop(action.turn_id, None)  # the driver stops the interviewer's task
            else:
                assert isinstance(action, EndRun)
                self.ended.append(action.reason)

    def feed_one(self, compose: Compose | None = None) -> None:
        """The interviewer produces the next part of a held reply (the oldest by default)."""
        turn_id = compose.turn_id if compose else min(self.held)
        part = self.held[turn_id].pop(0)
        if not self.held[turn_id]:
            del self.held[turn_id]
        if isinstance(part, Utterance):
            self.run(self.conv.utterance_ready(turn_id, part, self.now))
        else:
            assert isinstance(part, TurnEnd)
            self.run(self.conv.turn_ended(turn_id, part, self.now))

    def finish(self, compose: Compose | None = None, *, after: float = 0.0) -> None:
        """``after`` seconds from now, the interviewer produces the rest of a held reply (the oldest by default)."""
        self.advance(after)
        compose = compose or next(c for c in self.composes if c.turn_id == min(self.held))
        while compose.turn_id in self.held:
            self.feed_one(compose)

    def play_out(self) -> None:
        """Voice: the oldest delivery still playing has been fully played."""
        self.playing.pop(0)
        self.run(self.conv.playback_finished(self.now))

    # --- time

    def advance_to(self, t: float) -> None:
        for _ in range(100):
            deadline = self.conv.deadline()
            if deadline is None or deadline > t:
                break
            self.now = max(self.now, deadline)
            self.run(self.conv.tick(self.now))
        else:
            raise AssertionError("deadline() keeps asking for a tick that does nothing")
        self.now = t

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)

    # --- participant events

    def connect(self) -> None:
        self.run(self.conv.connect(self.now))

    def disconnect(self) -> None:
        self.run(self.conv.disconnect(self.now))

    def say(self, text: str, *, received_at: float | None = None) -> None:
        self.run(self.conv.participant_text(text, self.now, received_at=received_at))

    def type(self) -> None:
        self.conv.participant_activity(self.now)

    # --- what the participant noticed

    def kinds(self) -> list[UtteranceKind]:
        return [d.utterance.kind for d in self.sent]

    def texts(self) -> list[str]:
        return [d.utterance.text for d in self.sent]

    def purposes(self) -> list[Purpose]:
        return [c.request.purpose for c in self.composes]

    def last(self) -> Utterance:
        return self.sent[-1].utterance


def started(*, timing: Timing = TIMING, voice: bool = False) -> Driver:
    """A run whose participant joined at t=0 and has heard the greeting and the first question."""
    d = Driver(Conversation(BLUEPRINT, timing), voice=voice)
    d.connect()
    while d.playing:
        d.play_out()
    return d


def at_last_question(*, timing: Timing = TIMING, voice: bool = False) -> Driver:
    d = started(timing=timing, voice=voice)
    for answer in (LONG, LONG2):
        d.say(answer)
        while d.playing:
            d.play_out()
    assert d.last().question_id == "q3"
    return d


# --- a whole interview ----------------------------------------------------------


def test_connect_greets_and_asks_the_first_question() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), now=5.0)
    d.connect()

    assert d.purposes() == [Purpose.START]
    assert d.kinds() == [UtteranceKind.GREETING, UtteranceKind.QUESTION]
    assert d.texts() == [BLUEPRINT.greeting, "What do you do for a living?"]
    assert d.last().question_id == "q1"
    assert d.conv.turn is Turn.PARTICIPANT
    assert d.conv.started_at == 5.0
    assert d.persisted[-1] == Persist(Position(0), idle_since=5.0)
    assert d.ended == []


def test_full_interview_moves_on_with_acknowledgements_and_completes() -> None:
    d = started()
    for t, answer in ((10.0, LONG), (20.0, LONG2), (30.0, LONG3)):
        d.advance_to(t)
        d.say(answer)

    assert d.kinds() == [
        UtteranceKind.GREETING,
        UtteranceKind.QUESTION,
        UtteranceKind.QUESTION,
        UtteranceKind.QUESTION,
        UtteranceKind.CLOSING,
    ]
    assert d.texts()[2:] == [
        "Thank you. What do you enjoy most about it?",
        "Thanks, that's helpful. What would you change about it?",
        "I see, thank you. That is all, thank you for your time.",
    ]
    assert [c.request.answer for c in d.composes if c.request.purpose is Purpose.ANSWER] == [LONG, LONG2, LONG3]
    assert d.ended == [EndReason.COMPLETED]
    assert d.conv.turn is Turn.ENDED
    assert d.conv.deadline() is None
    assert d.persisted[-1].position == Position(len(BLUEPRINT.questions))


def test_each_answer_hands_the_turn_back_with_the_new_position_persisted() -> None:
    d = started()
    d.advance_to(12.0)
    d.say(LONG)

    assert d.conv.turn is Turn.PARTICIPANT
    assert d.persisted[-1] == Persist(Position(1), idle_since=12.0)


def test_voice_run_completes_only_once_the_closing_has_been_played() -> None:
    d = at_last_question(voice=True)
    d.advance_to(20.0)
    d.say(LONG3)

    assert d.last().kind is UtteranceKind.CLOSING
    assert d.ended == []
    d.advance_to(25.0)
    assert d.ended == []
    d.play_out()
    assert d.ended == [EndReason.COMPLETED]


def test_nothing_happens_before_the_participant_connects() -> None:
    conv = Conversation(BLUEPRINT, TIMING)

    assert conv.deadline() is None
    assert conv.tick(1e9) == []
    assert conv.participant_text(LONG, 1.0) == []  # stored, but no question had been asked
    d = Driver(conv, now=2.0)
    d.connect()
    assert d.purposes() == [Purpose.START]  # it answers nothing: the first question waits for its answer
    assert d.texts()[-1] == "What do you do for a living?"
    assert d.conv.turn is Turn.PARTICIPANT


# --- probes -----------------------------------------------------------------------


def test_short_answers_get_the_questions_probes_then_the_generic_probe_then_move_on() -> None:
    d = started()
    d.say(SHORT)
    assert d.last() == Utterance("What does a typical day look like?", UtteranceKind.PROBE, "q1")
    d.say("Mostly night shifts.")
    assert d.last() == Utterance(ScriptedInterviewer.GENERIC_PROBE, UtteranceKind.PROBE, "q1")
    d.say("Busy.")  # max_probes=2 used up

    assert d.last() == Utterance("Thank you. What do you enjoy most about it?", UtteranceKind.QUESTION, "q2")
    assert d.kinds().count(UtteranceKind.PROBE) == 2


def test_probe_budget_is_per_question() -> None:
    d = started()
    d.say(SHORT)
    d.say(SHORT)
    d.say(SHORT)  # q1 done
    d.say("The people.")

    assert d.last() == Utterance(ScriptedInterviewer.GENERIC_PROBE, UtteranceKind.PROBE, "q2")
    d.say("The people, mostly.")  # q2 allows one probe
    assert d.last().question_id == "q3"
    assert d.last().kind is UtteranceKind.QUESTION


def test_question_without_probe_budget_moves_on_after_a_short_answer() -> None:
    d = at_last_question()
    d.say("Nothing.")

    assert d.last().kind is UtteranceKind.CLOSING
    assert d.ended == [EndReason.COMPLETED]


def test_a_long_enough_answer_is_not_probed() -> None:
    d = started()
    d.say("I work as a hospital nurse")  # exactly six words

    assert d.last().question_id == "q2"
    assert UtteranceKind.PROBE not in d.kinds()


# --- latency ----------------------------------------------------------------------


def test_greeting_latency_is_anchored_at_connect() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), hold=True, now=5.0)
    d.connect()
    d.finish(after=0.25)

    greeting, question = d.sent
    assert greeting.latency == LatencyBreakdown(initial_wait=0.0, llm=250.0)
    assert question.latency == LatencyBreakdown(initial_wait=0.0, llm=250.0)


def test_answer_latency_splits_waiting_from_composing() -> None:
    d = started()
    d.hold = True
    d.advance_to(10.0)
    d.say(LONG, received_at=9.5)  # stored half a second before the machine heard of it
    d.finish(after=1.5)

    assert d.sent[-1].latency == LatencyBreakdown(initial_wait=500.0, llm=1500.0)


def test_llm_stage_is_measured_per_utterance() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), hold=True)
    d.connect()
    d.advance(0.5)
    d.feed_one()  # greeting
    d.advance(0.25)
    d.finish()

    assert [s.latency.llm for s in d.sent] == [500.0, 750.0]


# --- answers racing replies ---------------------------------------------------------


def test_an_addition_while_the_reply_is_composed_gets_one_reply_to_the_whole_answer() -> None:
    d = started()
    d.hold = True
    d.advance_to(10.0)
    d.say(LONG)
    d.advance_to(11.0)
    d.say(LONG2)  # the participant was not done while the reply to LONG was being composed

    first, second = [c for c in d.composes if c.request.purpose is Purpose.ANSWER]
    assert d.cancelled == [first.turn_id]
    assert second.request.answer == f"{LONG} {LONG2}"
    d.finish(after=1.0)

    assert d.texts()[-1] == "Thank you. What do you enjoy most about it?"  # one reply, to both parts
    assert d.kinds().count(UtteranceKind.QUESTION) == 2
    assert d.sent[-1].latency == LatencyBreakdown(initial_wait=0.0, llm=1000.0)  # from the part that completed it
    assert d.conv.turn is Turn.PARTICIPANT
    assert d.held == {}


def test_two_quick_answers_are_joined_into_one() -> None:
    d = started()
    d.hold = True
    d.say(LONG)
    d.say("Also I")
    d.say("work part time now")
    d.finish()

    answers = [c.request.answer for c in d.composes if c.request.purpose is Purpose.ANSWER]
    assert answers[-1] == f"{LONG} Also I work part time now"
    assert len(d.cancelled) == 2
    assert d.last().question_id == "q2"  # one answer to q1, one reply


def test_words_typed_during_the_greeting_answer_nothing() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), hold=True)
    d.connect()
    assert d.conv.heard_question is None
    d.say("hi there, ready when you are")
    d.finish()

    assert d.kinds() == [UtteranceKind.GREETING, UtteranceKind.QUESTION]
    assert d.purposes() == [Purpose.START]  # not taken as the first answer
    assert d.conv.heard_question == "q1"
    d.say(LONG)
    d.finish()
    assert d.last().question_id == "q2"


def test_an_addition_after_the_interviewer_moved_on_belongs_to_the_earlier_question() -> None:
    d = started(voice=True)
    d.hold = True
    d.say(LONG)
    [reply] = [c for c in d.composes if c.request.purpose is Purpose.ANSWER]
    d.held[reply.turn_id] = [
        Utterance("Thanks for explaining.", UtteranceKind.ACKNOWLEDGEMENT, "q1"),
        Utterance("What do you enjoy most about it?", UtteranceKind.QUESTION, "q2"),
        TurnEnd(Position(1)),
    ]
    d.feed_one(reply)  # the acknowledgement is out and playing; the next question is still being written
    d.say("and nights too")  # heard under q1: it belongs there
    assert d.conv.pending[-1].question_id == "q1"
    d.finish(reply)
    d.play_out()
    d.play_out()

    assert d.purposes().count(Purpose.ANSWER) == 1  # not taken as the answer to q2
    assert d.conv.turn is Turn.PARTICIPANT and d.conv.heard_question == "q2"


def test_a_question_cut_off_before_it_was_heard_is_asked_again() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), voice=True)
    d.connect()  # greeting playing, first question queued behind it
    assert d.conv.speech_interrupting(d.now) == [StopPlayback()]  # the participant talks over the greeting
    d.run(d.conv.playback_stopped(d.now))
    d.playing.clear()
    d.say("hello")

    assert d.purposes() == [Purpose.START, Purpose.REASK]
    assert d.last() == Utterance("What do you do for a living?", UtteranceKind.REASK, "q1")


def test_voice_answer_while_the_question_plays_is_answered_after_playback() -> None:
    d = started(voice=True)
    d.say(LONG)
    assert d.last().question_id == "q2"  # playing

    d.advance(3.0)
    d.say(LONG2)  # barge-in while q2 plays
    assert d.purposes().count(Purpose.ANSWER) == 1
    d.play_out()

    assert d.purposes().count(Purpose.ANSWER) == 2
    assert d.last().question_id == "q3"


# --- idle ---------------------------------------------------------------------------


def test_silence_earns_one_reminder_then_ends_the_run() -> None:
    d = started()  # question asked at t=0
    assert d.conv.deadline() == 30.0
    d.advance_to(29.5)
    assert d.purposes() == [Purpose.START]

    d.advance_to(30.0)
    assert d.purposes() == [Purpose.START, Purpose.REMINDER]
    assert d.last() == Utterance(
        "Are you still there? Take your time. What do you do for a living?", UtteranceKind.REMINDER, "q1"
    )
    assert d.conv.deadline() == 60.0

    d.advance_to(59.5)
    assert d.ended == []
    d.advance_to(60.0)
    assert d.ended == [EndReason.IDLE_TIMEOUT]
    assert d.purposes().count(Purpose.REMINDER) == 1
    assert d.conv.deadline() is None


def test_typing_restarts_the_idle_clock() -> None:
    d = started()
    d.advance_to(20.0)
    d.type()
    assert d.conv.deadline() == 50.0

    d.advance_to(49.0)
    assert Purpose.REMINDER not in d.purposes()
    d.advance_to(50.0)
    assert d.purposes()[-1] is Purpose.REMINDER
    d.advance_to(70.0)
    d.type()  # after the reminder
    d.advance_to(129.0)
    assert d.ended == []
    d.advance_to(130.0)
    assert d.ended == [EndReason.IDLE_TIMEOUT]


def test_answer_after_the_reminder_restarts_the_turn() -> None:
    d = started()
    d.advance_to(40.0)  # reminded at 30
    d.say(LONG)
    assert d.last().question_id == "q2"

    assert d.conv.deadline() == 70.0  # a fresh turn: a reminder again at half the timeout
    d.advance_to(70.0)
    assert d.purposes().count(Purpose.REMINDER) == 2
    assert d.last().kind is UtteranceKind.REMINDER


def test_idle_clock_does_not_run_while_a_reply_is_composed() -> None:
    d = started()
    d.hold = True
    d.advance_to(10.0)
    d.say(LONG)
    d.advance_to(200.0)  # a very slow interviewer

    assert d.ended == []
    assert Purpose.REMINDER not in d.purposes()
    d.finish()
    assert d.conv.deadline() == 230.0


def test_idle_clock_does_not_run_while_the_participant_speaks() -> None:
    d = started(voice=True)
    d.advance_to(10.0)
    d.conv.speech_started(d.now)
    assert d.conv.deadline() == TIMING.max_duration

    d.advance_to(200.0)
    assert d.ended == []
    assert Purpose.REMINDER not in d.purposes()
    d.conv.speech_ended(d.now)
    assert d.conv.deadline() == 230.0


def test_voice_idle_clock_starts_once_the_question_has_been_played() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), voice=True)
    d.connect()
    d.play_out()  # greeting
    d.advance_to(100.0)  # the question is still playing

    assert d.ended == []
    assert Purpose.REMINDER not in d.purposes()
    d.play_out()
    assert d.conv.deadline() == 130.0


def test_voice_reminder_playback_is_not_counted_as_silence() -> None:
    d = started(voice=True)  # question played at t=0
    d.advance_to(30.0)
    assert d.last().kind is UtteranceKind.REMINDER
    d.advance_to(38.0)  # the reminder takes 8 s to play
    d.play_out()

    assert d.conv.deadline() == 68.0
    d.advance_to(67.5)
    assert d.ended == []
    d.advance_to(68.0)
    assert d.ended == [EndReason.IDLE_TIMEOUT]
    assert d.purposes().count(Purpose.REMINDER) == 1


def test_answer_while_the_reminder_is_composed_makes_it_obsolete() -> None:
    d = started()
    d.hold = True
    d.advance_to(30.0)
    [reminder] = [c for c in d.composes if c.request.purpose is Purpose.REMINDER]
    d.advance_to(31.0)
    d.say(LONG)
    d.finish(reminder)  # its parts arrive late

    assert UtteranceKind.REMINDER not in d.kinds()
    d.finish()
    assert d.last().question_id == "q2"
    assert d.purposes().count(Purpose.ANSWER) == 1
    assert d.conv.turn is Turn.PARTICIPANT
    assert d.conv.deadline() == 61.0


def test_deadline_in_each_state() -> None:
    d = Driver(Conversation(BLUEPRINT, TIMING), hold=True, now=10.0)
    assert d.conv.deadline() is None  # nobody joined yet

    d.connect()
    assert d.conv.deadline() == 610.0  # composing the greeting: only the time limit
    d.finish()
    assert d.conv.deadline() == 40.0  # participant's turn: the reminder

    d.advance_to(40.0)
    assert d.conv.deadline() == 610.0  # composing the reminder
    d.finish()
    assert d.conv.deadline() == 70.0  # reminded: the idle timeout

    d.advance_to(45.0)
    d.conv.speech_started(d.now)
    assert d.conv.deadline() == 610.0
    d.advance_to(50.0)
    d.conv.speech_ended(d.now)
    assert d.conv.deadline() == 80.0

    d.advance_to(55.0)
    d.disconnect()
    assert d.conv.deadline() == 115.0  # waiting for a rejoin
    d.advance_to(60.0)
    d.connect()
    assert d.conv.deadline() == 610.0  # composing the resume
    d.finish()
    assert d.conv.deadline() == 90.0

    for t in range(70, 610, 20):
        d.advance_to(float(t))
        d.type()
    d.advance_to(610.0)
    assert d.purposes()[-1] is Purpose.TIME_UP
    assert d.conv.deadline() == 640.0  # the hard stop

    d.run(d.conv.end(EndReason.CANCELLED))
    assert d.conv.deadline() is None


def test_tick_before_the_deadline_does_nothing() -> None:
    d = started()
    assert d.conv.tick(29.0) == []
    assert d.conv.tick(0.0) == []


# --- time limit -----------------------------------------------------------------------


def test_time_up_while_connected_says_the_closing_then_ends() -> None:
    d = started(timing=SHORT_LIMIT)
    d.advance_to(50.0)
    d.say(LONG)
    d.advance_to(99.0)
    assert d.ended == []

    d.advance_to(100.0)
    assert d.purposes()[-1] is Purpose.TIME_UP
    assert d.last() == Utterance(
        f"We have reached the time we have for this interview. {BLUEPRINT.closing}", UtteranceKind.CLOSING
    )
    assert d.ended == [EndReason.MAX_DURATION]


def test_time_up_voice_ends_after_the_closing_is_played() -> None:
    d = started(timing=SHORT_LIMIT, voice=True)
    d.advance_to(100.0)
    assert d.last().kind is UtteranceKind.CLOSING
    assert d.ended == []

    d.advance_to(105.0)
    d.play_out()
    assert d.ended == [EndReason.MAX_DURATION]


def test_time_up_while_disconnected_ends_at_once() -> None:
    d = started(timing=SHORT_LIMIT)
    d.advance_to(50.0)
    d.disconnect()
    d.advance_to(100.0)

    assert d.ended == [EndReason.MAX_DURATION]
    assert Purpose.TIME_UP not in d.purposes()


def test_reply_composing_when_time_runs_out_is_ignored() -> None:
    d = started(timing=SHORT_LIMIT)
    d.hold = True
    d.advance_to(95.0)
    d.say(LONG)
    [stale] = [c for c in d.composes if c.request.purpose is Purpose.ANSWER]
    d.advance_to(100.0)
    assert d.purposes()[-1] is Purpose.TIME_UP

    sent, persisted = len(d.sent), len(d.persisted)
    d.finish(stale)
    assert len(d.sent) == sent
    assert len(d.persisted) == persisted
    d.finish()
    assert d.kinds()[-1] is UtteranceKind.CLOSING
    assert "What do you enjoy most" not in " ".join(d.texts())
    assert d.ended == [EndReason.MAX_DURATION]


def test_answer_after_time_up_is_not_answered() -> None:
    d = started(timing=SHORT_LIMIT)
    d.hold = True
    d.advance_to(100.0)
    d.say(LONG)
    assert Purpose.ANSWER not in d.purposes()
    d.finish()
    assert d.ended == [EndReason.MAX_DURATION]


def test_closing_never_played_ends_at_the_hard_stop() -> None:
    d = started(timing=SHORT_LIMIT, voice=True)
    d.advance_to(100.0)
    assert d.last().kind is UtteranceKind.CLOSING
    assert d.conv.deadline() == 130.0

    d.advance_to(129.5)
    assert d.ended == []
    d.advance_to(130.0)
    assert d.ended == [EndReason.MAX_DURATION]


def test_closing_never_composed_ends_at_the_hard_stop() -> None:
    d = started(timing=SHORT_LIMIT)
    d.hold = True
    d.advance_to(130.0)
    assert d.ended == [EndReason.MAX_DURATION]


def test_time_up_during_playback_ends_only_after_the_closing_is_played() -> None:
    d = started(timing=SHORT_LIMIT, voice=True)
    d.advance_to(95.0)
    d.say(LONG)  # "Thank you. What do you enjoy...?" starts playing
    d.advance_to(100.0)  # time is up while it plays
    assert d.last().kind is UtteranceKind.CLOSING
    assert len(d.playing) == 2

    d.advance_to(102.0)
    d.play_out()  # the question has been played; the closing has not
    assert d.ended == []
    d.advance_to(106.0)
    d.play_out()
    assert d.ended == [EndReason.MAX_DURATION]


def test_time_up_while_the_final_closing_plays_keeps_the_interview_completed() -> None:
    d = at_last_question(timing=SHORT_LIMIT, voice=True)
    d.advance_to(95.0)
    d.say(LONG3)  # the closing starts playing
    assert d.last().kind is UtteranceKind.CLOSING
    d.advance_to(100.0)  # time is up while it plays

    assert Purpose.TIME_UP not in d.purposes()
    assert d.kinds().count(UtteranceKind.CLOSING) == 1
    d.advance_to(103.0)
    d.play_out()
    assert d.ended == [EndReason.COMPLETED]


# --- disconnect and rejoin --------------------------------------------------------


def test_rejoin_resumes_the_current_question() -> None:
    d = started()
    d.say(LONG)
    d.advance_to(10.0)
    d.disconnect()
    d.advance_to(40.0)
    d.connect()

    assert d.purposes()[-1] is Purpose.RESUME
    assert d.last() == Utterance("Welcome back. What do you enjoy most about it?", UtteranceKind.RESUME, "q2")
    assert d.conv.turn is Turn.PARTICIPANT
    assert d.conv.deadline() == 70.0  # a fresh idle clock from the rejoin


def test_no_rejoin_within_the_idle_timeout_ends_the_run() -> None:
    d = started()
    d.advance_to(10.0)
    d.disconnect()
    assert d.conv.deadline() == 70.0

    d.advance_to(69.5)
    assert d.ended == []
    d.advance_to(70.0)
    assert d.ended == [EndReason.PARTICIPANT_LEFT]
    assert Purpose.REMINDER not in d.purposes()


def test_rejoin_in_time_keeps_the_run_going() -> None:
    d = started()
    d.advance_to(10.0)
    d.disconnect()
    d.advance_to(69.0)
    d.connect()
    d.advance_to(80.0)

    assert d.ended == []
    assert d.last().kind is UtteranceKind.RESUME


def test_reply_in_flight_when_the_participant_drops_goes_to_the_new_connection() -> None:
    d = started()
    d.hold = True
    d.say(LONG)
    d.advance_to(5.0)
    d.disconnect()
    d.advance_to(8.0)
    d.connect()

    assert Purpose.RESUME not in d.purposes()
    d.finish()
    assert d.last().question_id == "q2"
    assert UtteranceKind.RESUME not in d.kinds()
    assert d.conv.turn is Turn.PARTICIPANT
    assert d.conv.deadline() == 38.0


def test_reply_finished_while_away_is_resumed_on_rejoin() -> None:
    d = started()
    d.hold = True
    d.say(LONG)
    d.disconnect()
    d.finish()  # composed while nobody was connected
    d.hold = False
    d.advance_to(20.0)
    d.connect()

    assert d.last() == Utterance("Welcome back. What do you enjoy most about it?", UtteranceKind.RESUME, "q2")


def test_answer_stored_while_away_is_answered_on_rejoin() -> None:
    d = started()
    d.advance_to(10.0)
    d.disconnect()
    d.say(LONG)  # e.g. sent over HTTP
    assert Purpose.ANSWER not in d.purposes()
    d.advance_to(15.0)
    d.connect()

    assert Purpose.RESUME not in d.purposes()
    assert d.last().question_id == "q2"
    assert d.sent[-1].latency.initial_wait == 5000.0


def test_voice_drop_while_the_closing_plays_completes_the_run() -> None:
    d = at_last_question(voice=True)
    d.say(LONG3)
    d.disconnect()

    assert d.ended == [EndReason.COMPLETED]


# --- restore ---------------------------------------------------------------------------


def restored(position: Position, *, pending: list[Input], started_at: float | None = 0.0) -> Driver:
    conv = Conversation.restore(
        BLUEPRINT,
        TIMING,
        position=position,
        started_at=started_at,
        idle_since=None if started_at is None else 40.0,
        pending=pending,
        last_seen=None if started_at is None else 45.0,
    )
    return Driver(conv, now=50.0)


def test_restore_with_pending_answer_answers_it_on_connect() -> None:
    d = restored(Position(0), pending=[Input(LONG, 42.0)])
    d.connect()

    assert d.purposes() == [Purpose.ANSWER]
    assert d.composes[0].request.answer == LONG
    assert d.last() == Utterance("Thank you. What do you enjoy most about it?", UtteranceKind.QUESTION, "q2")
    assert UtteranceKind.RESUME not in d.kinds()
    assert d.sent[-1].latency.initial_wait == 8000.0
    assert d.conv.started_at == 0.0


def test_restore_without_pending_resumes_on_connect() -> None:
    d = restored(Position(1), pending=[])
    d.connect()

    assert d.purposes() == [Purpose.RESUME]
    assert d.last().question_id == "q2"


def test_restore_before_the_greeting_greets_on_connect() -> None:
    d = restored(Position(), pending=[], started_at=None)
    assert d.conv.deadline() is None
    d.connect()

    assert d.purposes() == [Purpose.START]
    assert d.kinds() == [UtteranceKind.GREETING, UtteranceKind.QUESTION]
    assert d.conv.started_at == 50.0


def test_restored_run_nobody_rejoins_ends_participant_left() -> None:
    d = restored(Position(1), pending=[])
    assert d.conv.deadline() == 105.0  # last seen at 45
    d.advance_to(105.0)
    assert d.ended == [EndReason.PARTICIPANT_LEFT]


def test_restored_run_past_its_time_limit_ends_at_once() -> None:
    d = restored(Position(1), pending=[Input(LONG, 42.0)], started_at=-600.0)
    d.advance_to(50.0)
    assert d.ended == [EndReason.MAX_DURATION]
    assert d.composes == []


# --- ending ---------------------------------------------------------------------------


def test_cancel_ends_once() -> None:
    d = started()
    assert d.conv.end(EndReason.CANCELLED) == [EndRun(EndReason.CANCELLED)]
    assert d.conv.end(EndReason.CANCELLED) == []
    assert d.conv.end(EndReason.ERROR) == []
    assert d.conv.turn is Turn.ENDED


def test_events_after_the_end_produce_nothing() -> None:
    d = started()
    d.run(d.conv.end(EndReason.CANCELLED))
    conv, now = d.conv, 10.0

    assert conv.participant_text(LONG, now) == []
    conv.participant_activity(now)
    conv.speech_started(now)
    conv.speech_ended(now)
    assert conv.playback_finished(now) == []
    assert conv.disconnect(now) == []
    assert conv.connect(now) == []
    assert conv.tick(1e9) == []
    assert conv.deadline() is None
    assert d.ended == [EndReason.CANCELLED]


def test_late_reply_after_cancel_is_ignored() -> None:
    d = started()
    d.hold = True
    d.say(LONG)
    d.run(d.conv.end(EndReason.CANCELLED))
    sent = len(d.sent)
    d.finish()

    assert len(d.sent) == sent
    assert d.ended == [EndReason.CANCELLED]


def test_completed_run_cannot_end_again() -> None:
    d = at_last_question()
    d.say(LONG3)
    assert d.ended == [EndReason.COMPLETED]

    d.run(d.conv.end(EndReason.CANCELLED))
    d.advance_to(10_000.0)
    assert d.ended == [EndReason.COMPLETED]


# --- known gaps ---------------------------------------------------------------------------


def test_obsolete_reminder_still_playing_does_not_cut_off_the_closing() -> None:
    d = at_last_question(voice=True)
    d.hold = True
    d.advance_to(30.0)
    [reminder] = [c for c in d.composes if c.request.purpose is Purpose.REMINDER]
    d.feed_one(reminder)  # the reminder's utterance starts playing; its TurnEnd is not there yet
    assert d.last().kind is UtteranceKind.REMINDER
    d.advance_to(31.0)
    d.say(LONG3)  # answers the last question over the reminder
    d.finish(reminder)  # stale
    d.finish()  # the closing, queued behind the reminder's audio
    assert d.last().kind is UtteranceKind.CLOSING

    d.advance_to(33.0)
    d.play_out()  # the reminder's audio ends; the closing has not been played
    assert d.ended == []
    d.advance_to(37.0)
    d.play_out()
    assert d.ended == [EndReason.COMPLETED]


def test_typing_while_the_reminder_plays_restarts_the_idle_clock() -> None:
    d = started(voice=True)
    d.advance_to(30.0)  # the reminder starts playing
    d.advance_to(34.0)
    d.type()
    d.advance_to(38.0)
    d.play_out()

    d.advance_to(93.5)  # less than a full idle timeout after the typing
    assert d.ended == []
