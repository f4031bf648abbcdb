"""The socket transports' outbound half (media/playout.py) and inbound half (media/transport.py)."""

from __future__ import annotations

import asyncio

import numpy as np

from media.playout import MARK_EVERY_FRAMES, PacedPlayout, Playback
from media.transport import InboundAudio

RATE = 8000
FRAME = RATE // 50


def speech(seconds: float) -> np.ndarray:
    return np.full(round(seconds * RATE), 1000, dtype=np.int16)


async def test_frames_go_out_whole_and_a_playback_without_marks_finishes_when_sent() -> None:
    sent: list[np.ndarray] = []
    finished: list[Playback] = []

    async def send(pcm: np.ndarray) -> None:
        sent.append(pcm.copy())

    playout = PacedPlayout(RATE, send)
    p = Playback("a", "one two", rate=RATE, on_finished=finished.append)
    p.append(speech(0.25))
    p.complete()
    playout.play(p)
    await asyncio.wait_for(p.done, 5)
    await playout.close()
    assert finished == [p] and not p.interrupted
    assert [len(f) for f in sent] == [FRAME] * 13  # 0.25 s: 12.5 frames, the last one padded with silence
    assert np.concatenate(sent)[: len(speech(0.25))].tolist() == speech(0.25).tolist()


async def test_with_marks_a_playback_finishes_only_when_the_far_end_confirms_it() -> None:
    marks: list[str] = []
    frames = 0

    async def send(pcm: np.ndarray) -> None:
        nonlocal frames
        frames += 1

    async def send_mark(name: str) -> None:
        marks.append(name)

    playout = PacedPlayout(RATE, send, send_mark=send_mark)
    p = Playback("a", "one two three four", rate=RATE)
    p.append(speech(0.5))  # 25 frames: marks after 10 and 20, and at the end
    p.complete()
    playout.play(p)
    while len(marks) < 3:
        await asyncio.sleep(0.01)
    assert frames == 25 and not p.done.done() and playout.pending == [p]  # all sent, not yet confirmed
    playout.marked("no-such-mark")  # ignored
    playout.marked(marks[0])
    assert not p.done.done()
    playout.marked(marks[2])  # the end mark
    assert p.done.done() and not p.interrupted and playout.pending == []
    await playout.close()


async def test_a_stop_rewinds_to_what_the_far_end_confirmed() -> None:
    marks: list[str] = []

    async def send(pcm: np.ndarray) -> None:
        pass

    async def send_mark(name: str) -> None:
        marks.append(name)

    playout = PacedPlayout(RATE, send, send_mark=send_mark)
    p = Playback("a", " ".join(["word"] * 10), rate=RATE)
    p.append(speech(1.0))
    p.complete()
    playout.play(p)
    while len(marks) < 2:
        await asyncio.sleep(0.01)
    playout.marked(marks[0])  # the far end has played the first 200 ms
    stopped = playout.stop()
    assert stopped == [p] and p.interrupted
    assert p.played_samples == MARK_EVERY_FRAMES * FRAME  # not what was sent: what was heard
    assert round(p.words_heard(10)) == 2
    await playout.close()


def test_inbound_audio_becomes_16_khz_frames_timed_by_their_samples() -> None:
    inbound = InboundAudio(8000)
    frames = []
    for i in range(50):  # one second of 20 ms chunks, arriving on time (a 100 ms stall in the middle)
        late = 0.1 if 20 <= i < 25 else 0.0
        frames += inbound.feed(speech(0.02), received_at=1000.0 + (i + 1) * 0.02 + late)
    assert all(len(f) == 320 and f.dtype == np.int16 for f, _ in frames)
    ends = [end for _, end in frames]
    assert len(frames) >= 48  # the resampler holds back a few samples of look-ahead
    # spaced exactly 20 ms apart, on the clock of the chunks that arrived on time (the stall is not in it)
    assert np.allclose(np.diff(ends), 0.02) and abs(ends[0] - 1000.02) < 1e-9
