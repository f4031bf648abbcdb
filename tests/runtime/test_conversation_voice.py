"""Voice-only behaviour of the turn-taking machine: barge-in and fillers, on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.conversation import Action, Conversation, StopPlayback, Timing, Turn
from runtime.types import EndReason, UtteranceKind
from tests.runtime.test_conversation import BLUEPRINT, LONG, LONG2, Driver

VOICE = Timing(idle_timeout=60.0, max_duration=600.0, filler_after=1.0)


@dataclass
class VoiceDriver(Driver):
    stops: int = 0

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StopPlayback):
                self.stops += 1
                self.playing.clear()
                self.run(self.conv.playback_stopped(self.now))
            else:
                super().run([action])


def voice(*, hold: bool = False) -> VoiceDriver:
    d = VoiceDriver(Conversation(BLUEPRINT, VOICE), voice=True, hold=hold)
    d.connect()
    if hold:
        d.finish()
    while d.playing:
        d.play_out()
    return d


def test_barge_in_stops_playback_and_hands_the_turn_to_the_participant() -> None:
    d = voice()
    d.say(LONG)  # "Thank you. What do you enjoy most...?" starts playing
    assert len(d.playing) == 1 and d.conv.turn is Turn.ASSISTANT
    d.advance(0.5)
    d.conv.speech_started(d.now)
    d.run(d.conv.speech_interrupting(d.now))
    assert d.stops == 1 and d.playing == []
    assert d.conv.turn is Turn.PARTICIPANT
    # the interrupted question was asked: the answer moves the interview on
    d.conv.speech_ended(d.now + 1)
    d.say(LONG2)
    assert d.last().question_id == "q3"


def test_speech_without_playback_is_not_an_interruption() -> None:
    d = voice()
    d.conv.speech_started(d.now)
    assert d.conv.speech_interrupting(d.now) == []


def test_barge_in_while_a_reply_is_still_composing_drops_its_remaining_utterances() -> None:
    d = voice(hold=True)
    d.say(LONG)
    compose = d.composes[-1]
    d.advance(1.0)  # the filler starts playing
    assert d.kinds()[-1] is UtteranceKind.FILLER and d.sent[-1].utterance.text
    d.conv.speech_started(d.now)
    d.run(d.conv.speech_interrupting(d.now))
    assert d.stops == 1
    d.finish(compose)  # the real reply arrives after the participant interrupted
    assert d.kinds()[-1] is UtteranceKind.FILLER, "the reply's utterances are dropped"
    assert d.conv.position.question_index == 1, "but the interview still moved on"
    assert d.conv.turn is Turn.PARTICIPANT


def test_a_slow_reply_gets_one_filler_then_the_reply_plays_after_it() -> None:
    d = voice(hold=True)
    d.say(LONG)
    compose = d.composes[-1]
    d.advance(0.9)
    assert UtteranceKind.FILLER not in d.kinds()
    d.advance(0.2)
    assert d.kinds().count(UtteranceKind.FILLER) == 1
    filler = d.sent[-1]
    assert filler.latency.llm is not None and filler.latency.llm >= 1000.0
    d.advance(5.0)
    assert d.kinds().count(UtteranceKind.FILLER) == 1, "one filler per turn"
    d.finish(compose)
    assert d.kinds()[-1] is UtteranceKind.QUESTION and len(d.playing) == 2
    d.play_out()
    assert d.conv.turn is Turn.ASSISTANT, "still speaking the question queued behind the filler"
    d.play_out()
    assert d.conv.turn is Turn.PARTICIPANT and d.ended == []


def test_a_fast_reply_gets_no_filler() -> None:
    d = voice(hold=True)
    d.say(LONG)
    d.finish(after=0.5)
    d.advance(5.0)
    assert UtteranceKind.FILLER not in d.kinds()


def test_interrupting_the_closing_still_completes_the_run() -> None:
    d = voice()
    for answer in (LONG, LONG2, LONG):
        d.say(answer)
        if d.last().kind is not UtteranceKind.CLOSING:
            while d.playing:
                d.play_out()
    assert d.last().kind is UtteranceKind.CLOSING
    d.conv.speech_started(d.now)
    d.run(d.conv.speech_interrupting(d.now))
    assert d.ended == [EndReason.COMPLETED]
