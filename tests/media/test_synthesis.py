"""Embedded synthesis on threads (media/synthesis.py): engines by language, fair scheduling, failures."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from media.synthesis import SpeechChunk, SynthesisThreads

LONG = " ".join(f"This is sentence number {n} of a long reply that goes on for a while." for n in range(6))


@pytest.fixture
async def threads() -> SynthesisThreads:
    pool = SynthesisThreads(threads=1)
    await pool.start()
    await pool.warmed()
    yield pool  # type: ignore[misc]
    await pool.close()


async def collect(pool: SynthesisThreads, text: str, language: str = "en") -> list[SpeechChunk]:
    return [item async for item in pool.synthesize(text, language=language)]


async def test_english_is_spoken_by_piper_other_languages_by_espeak(threads: SynthesisThreads) -> None:
    assert threads.engine_key("en")[0] == "piper"
    assert threads.engine_key("de") == ("espeak", (("voice", "de"),))
    english = await collect(threads, "Thank you, that helps. Where do you live?")
    german = await collect(threads, "Danke, das hilft. Wo wohnen Sie?", "de")
    assert len(english) == 3  # one chunk per piece: "Thank you," / "that helps." / the question
    assert len(german) >= 1
    for chunks in (english, german):
        assert all(c.rate == 22_050 and c.pcm.dtype == np.int16 for c in chunks)
        assert sum(len(c.pcm) for c in chunks) / 22_050 > 1.0
    assert [c.words for c in english] == [2, 2, 4]  # Piper counts each piece's words; eSpeak's chunks do not
    assert sum(c.words for c in german) == 0


async def test_a_new_reply_goes_ahead_of_one_far_ahead_of_its_playback(threads: SynthesisThreads) -> None:
    """One thread, earliest deadline first: a second reply's first piece does not wait for the whole first
    reply (FIFO would make it wait for all 7 pieces of ``LONG``)."""
    order: list[str] = []
    first_of_a = asyncio.Event()

    async def consume(name: str, text: str) -> None:
        async for _ in threads.synthesize(text):
            order.append(name)
            first_of_a.set()

    a = asyncio.create_task(consume("a", LONG))
    await first_of_a.wait()
    await consume("b", "Okay.")
    await a
    pieces_of_a = order.count("a")
    assert pieces_of_a == 7
    assert order.index("b") <= 2  # after the piece of ``a`` being made when ``b`` arrived, at most


async def test_stopping_early_cancels_the_rest(threads: SynthesisThreads) -> None:
    got = 0
    async for _ in threads.synthesize(LONG):
        got += 1
        break
    for _ in range(200):
        if threads.pending == 0:
            break
        await asyncio.sleep(0.05)
    assert got == 1
    assert threads.pending == 0  # dropped after the piece in progress, not made to the end


async def test_a_voice_that_cannot_load_falls_back_to_espeak(caplog: pytest.LogCaptureFixture) -> None:
    pool = SynthesisThreads(options={"piper": {"model": "/nonexistent/voice.onnx"}}, warm=())
    try:
        with caplog.at_level(logging.ERROR, logger="vivavoce.synthesis"):
            chunks = await collect(pool, "Hello there, how are you?")
        assert sum(len(c.pcm) for c in chunks) > 0
        assert "could not be loaded" in caplog.text and "Piper voice file not found" in caplog.text
        unknown = await collect(pool, "Salve", "xx-nope")  # no eSpeak NG voice for it either
        assert sum(len(c.pcm) for c in unknown) > 0
    finally:
        await pool.close()


async def test_close_ends_pending_syntheses(threads: SynthesisThreads) -> None:
    async def consume() -> int:
        return len([c async for c in threads.synthesize(LONG)])

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await threads.close()
    got = await asyncio.wait_for(task, 30)
    assert got < 7
    with pytest.raises(RuntimeError, match="closed"):
        await collect(threads, "Hello.")
