"""End-of-speech decisions from per-frame voice activity, replayed with made-up times."""

from __future__ import annotations

from runtime.endpointing import (
    FRAME_S,
    Endpointer,
    EndpointSettings,
    Interrupting,
    Noise,
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
    started, interrupting, ended = decisions
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
