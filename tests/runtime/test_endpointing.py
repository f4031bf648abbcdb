"""End-of-speech decisions from per-frame voice activity, replayed with made-up times."""

from __future__ import annotations

from runtime.endpointing import (
    FRAME_S,
    Endpointer,
    EndpointSettings,
    Interrupting,
    Noise,
    Pausing,
    Resumed,
    SpeechEnded,
    SpeechStarted,
)


def run(pattern: str, settings: EndpointSettings | None = None, start: float = 100.0) -> list[object]:
    """Feed frames: '#' voiced, '.' silent, one char per 20 ms; returns every decision."""
    ep = Endpointer(settings or EndpointSettings())
    out: list[object] = []
    for i, ch in enumerate(pattern):
        out += ep.frame(start + (i + 1) * FRAME_S, 1.0 if ch == "#" else 0.0)
    return out


def test_an_answer_ends_after_the_silence_window_with_t0_at_the_last_voiced_frame() -> None:
    decisions = run("." * 5 + "#" * 50 + "." * 30)
    started, interrupting, pausing, ended = decisions
    assert isinstance(pausing, Pausing)
    assert isinstance(started, SpeechStarted) and isinstance(interrupting, Interrupting)
    assert isinstance(ended, SpeechEnded)
    assert abs(ended.onset_at - (100.0 + 5 * FRAME_S)) < 1e-9
    assert abs(ended.last_voiced_at - (100.0 + 55 * FRAME_S)) < 1e-9
    # eos = decision - T0 = the 500 ms silence window
    assert abs((ended.decided_at - ended.last_voiced_at) - 0.5) < 1e-9


def test_a_pause_shorter_than_the_window_does_not_end_the_turn() -> None:
    decisions = run("#" * 20 + "." * 20 + "#" * 20 + "." * 26)
    ended = [d for d in decisions if isinstance(d, SpeechEnded)]
    assert len(ended) == 1 and abs(ended[0].last_voiced_at - (100.0 + 60 * FRAME_S)) < 1e-9
    assert sum(isinstance(d, SpeechStarted) for d in decisions) == 1


def test_short_noises_are_not_turns() -> None:
    decisions = run("...###..........")  # 60 ms click
    assert [type(d) for d in decisions] == [Noise]


def test_interruption_needs_min_interruption_ms_of_voice() -> None:
    settings = EndpointSettings(min_interruption_ms=400)
    assert not any(isinstance(d, Interrupting) for d in run("#" * 19 + "." * 30, settings))
    assert any(isinstance(d, Interrupting) for d in run("#" * 20 + "." * 30, settings))


def test_eos_window_is_a_setting() -> None:
    settings = EndpointSettings(eos_silence_ms=800)
    ended = [d for d in run("#" * 20 + "." * 39, settings) if isinstance(d, SpeechEnded)]
    assert ended == []
    ended = [d for d in run("#" * 20 + "." * 40, settings) if isinstance(d, SpeechEnded)]
    assert len(ended) == 1 and abs(ended[0].decided_at - ended[0].last_voiced_at - 0.8) < 1e-9


def test_a_pause_in_speech_is_announced_before_the_window_closes() -> None:
    decisions = run("#" * 20 + "." * 30, EndpointSettings(eos_silence_ms=500, finalize_after_ms=200))
    kinds = [type(d) for d in decisions]
    assert kinds == [SpeechStarted, Interrupting, Pausing, SpeechEnded]
    pausing, ended = decisions[2], decisions[3]
    assert isinstance(pausing, Pausing) and isinstance(ended, SpeechEnded)
    assert pausing.last_voiced_at == ended.last_voiced_at
    assert abs(pausing.decided_at - pausing.last_voiced_at - 0.2) < 1e-9


def test_speaking_again_after_a_pause_resumes_the_same_answer() -> None:
    decisions = run("#" * 20 + "." * 15 + "#" * 10 + "." * 30, EndpointSettings(finalize_after_ms=200))
    kinds = [type(d) for d in decisions]
    assert kinds == [SpeechStarted, Interrupting, Pausing, Resumed, Pausing, SpeechEnded]
    resumed, ended = decisions[3], decisions[5]
    assert isinstance(resumed, Resumed) and isinstance(ended, SpeechEnded)
    assert abs(resumed.at - (100.0 + 36 * FRAME_S)) < 1e-9
    assert abs(ended.last_voiced_at - (100.0 + 45 * FRAME_S)) < 1e-9


def test_no_early_finish_for_noise_or_when_disabled() -> None:
    assert not any(isinstance(d, Pausing) for d in run("...###" + "." * 30))
    for never in (None, 500.0, 800.0):
        decisions = run("#" * 20 + "." * 30, EndpointSettings(finalize_after_ms=never))
        assert not any(isinstance(d, Pausing) for d in decisions)


def feed(ep: Endpointer, pattern: str, start: float) -> list[object]:
    out: list[object] = []
    for i, ch in enumerate(pattern):
        out += ep.frame(start + (i + 1) * FRAME_S, 1.0 if ch == "#" else 0.0)
    return out


def test_a_hold_lengthens_this_pause_only() -> None:
    """The driver holds a pause open (the words were unfinished); speaking again forgets the hold."""
    ep = Endpointer(EndpointSettings(eos_silence_ms=500, finalize_after_ms=200))
    decisions = feed(ep, "#" * 20 + "." * 10, 100.0)
    assert isinstance(decisions[-1], Pausing)
    ep.hold(2000)
    assert ep.window_ms == 2000
    assert not any(isinstance(d, SpeechEnded) for d in feed(ep, "." * 80, 100.6))  # 1.8 s of pause in all
    assert isinstance(feed(ep, "#", 102.2)[0], Resumed)
    assert ep.window_ms == 500
    ended = [d for d in feed(ep, "#" * 10 + "." * 25, 102.22) if isinstance(d, SpeechEnded)]
    assert len(ended) == 1 and abs(ended[0].decided_at - ended[0].last_voiced_at - 0.5) < 1e-9


def test_a_hold_shorter_than_the_silence_heard_ends_the_turn_at_the_next_frame() -> None:
    ep = Endpointer(EndpointSettings(eos_silence_ms=500, finalize_after_ms=200))
    feed(ep, "#" * 20, 100.0)
    ep.hold(2000)  # waiting for the words
    assert not any(isinstance(d, SpeechEnded) for d in feed(ep, "." * 35, 100.4))  # 700 ms
    ep.hold(500)  # they read as complete, late
    (ended,) = feed(ep, ".", 101.1)
    assert isinstance(ended, SpeechEnded)
    assert abs(ended.decided_at - ended.last_voiced_at - 0.72) < 1e-9  # the wait shows in eos, honestly


def test_hold_outside_speech_is_ignored() -> None:
    ep = Endpointer()
    ep.hold(2000)
    assert ep.window_ms == ep.settings.eos_silence_ms
