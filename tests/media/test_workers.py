"""media.workers.SpeechWorkers: worker processes (and the in-process thread mode) behind one asyncio API.

The fake engines below are top-level so that worker processes can unpickle them: a spawned worker imports
this module by name to do so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import media.workers
from media.audio import PCM
from media.stt.base import Recognizer
from media.tts.base import Synthesizer
from media.workers import RemoteError, SpeechWorkers, WorkerDied, WorkerError, WorkerTimeout

if not media.workers.IN_WORKER_PROCESS:
    from tests.conftest import UNIT
else:  # imported by a speech worker process to unpickle the fake engines: skip the server fixtures' imports
    UNIT = float(os.environ.get("VIVAVOCE_TEST_UNIT", "1.0"))

HANG = 7777  # a frame of this value makes CountingRecognizer.finish() hang
FAIL = -7777  # ... and this one makes feed() raise


class CountingRecognizer(Recognizer):
    """Partial: how many samples were fed; final: "<samples>:<sum of samples>"."""

    name = "counting"

    def __init__(self, *, feed_delay: float = 0.0) -> None:
        self.feed_delay = feed_delay
        self.samples = 0
        self.total = 0
        self.hang = False

    def start(self) -> None:
        self.samples = 0
        self.total = 0
        self.hang = False

    def feed(self, pcm: PCM) -> str:
        if self.feed_delay:
            time.sleep(self.feed_delay)
        if len(pcm) and pcm[0] == FAIL:
            raise ValueError("bad audio")
        if len(pcm) and pcm[0] == HANG:
            self.hang = True
        self.samples += len(pcm)
        self.total += int(pcm.astype(np.int64).sum())
        return str(self.samples)

    def finish(self) -> str:
        if self.hang:
            time.sleep(5 * UNIT)
        return f"{self.samples}:{self.total}"


class WholeRecognizer(Recognizer):
    """An engine that decodes on demand and can take back a finish (as Whisper does): the final covers the
    whole utterance, "<language>:<samples>", and partial() decodes afresh ("fresh <samples>")."""

    name = "whole"

    def __init__(self, *, language: str = "default") -> None:
        self.language = language
        self.samples = 0

    def start(self) -> None:
        self.samples = 0

    def feed(self, pcm: PCM) -> str:
        self.samples += len(pcm)
        return "stale"

    def partial(self) -> str | None:
        return f"fresh {self.samples}"

    def finish(self) -> str:
        return f"{self.language}:{self.samples}"

    def resume(self) -> bool:
        return True


class SineSynthesizer(Synthesizer):
    """One chunk per word: a sine whose pitch and length depend on the word; "boom" raises."""

    name = "sine"
    sample_rate = 22_050

    def __init__(self, *, chunk_delay: float = 0.0) -> None:
        self.chunk_delay = chunk_delay

    def synthesize(self, text: str) -> Iterator[PCM]:
        for i, word in enumerate(text.split()):
            if word == "boom":
                raise ValueError("cannot say boom")
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
            t = np.arange(441 * len(word)) / self.sample_rate
            yield np.round(5000 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.int16)


def slow_synthesizer() -> Synthesizer:
    return SineSynthesizer(chunk_delay=0.05)


def slow_recognizer() -> Recognizer:
    return CountingRecognizer(feed_delay=0.005)


MODES = ["process", "inprocess"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeWorkers = Callable[..., SpeechWorkers]


@pytest.fixture
async def make_workers(mode: str) -> AsyncIterator[MakeWorkers]:
    """Build pools in the test's mode; each is closed at the end."""
    pools: list[SpeechWorkers] = []

    def make(**options: Any) -> SpeechWorkers:
        options.setdefault("recognizer", CountingRecognizer)
        options.setdefault("synthesizer", SineSynthesizer)
        options.setdefault("stop_timeout", 0.5 * UNIT)  # a thread stuck in a HANG call is not waited for
        pool = SpeechWorkers(inprocess=mode == "inprocess", **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def frames(value: int, count: int, size: int = 320) -> list[PCM]:
    return [np.full(size, value, dtype=np.int16) for _ in range(count)]


def noise(seconds: float, seed: int = 0) -> PCM:
    return np.random.default_rng(seed).integers(-3000, 3000, size=int(seconds * 16_000), dtype=np.int16)


async def collect(pool: SpeechWorkers, text: str) -> list[tuple[PCM, int]]:
    return [chunk async for chunk in pool.synthesize(text)]


# --- results ---------------------------------------------------------------------------------------


async def test_recognition_equals_calling_the_engine(make_workers: MakeWorkers) -> None:
    pool = make_workers()
    await pool.start()
    audio = noise(1.0)
    direct = CountingRecognizer()
    direct.start()
    expected_partials = []
    async with pool.recognition() as stream:
        await stream.start()
        for i in range(0, len(audio), 320):
            chunk = audio[i : i + 320]
            expected = direct.feed(chunk)
            await stream.feed(chunk)
            if i % 3200 == 0:
                assert await stream.partial() == expected
                expected_partials.append(expected)
        assert await stream.finish() == direct.finish()
        # the same stream, a second utterance
        await stream.start()
        await stream.feed(audio[:800])
        assert await stream.finish() == f"800:{int(audio[:800].astype(np.int64).sum())}"
    assert len(expected_partials) == 5


async def test_a_resumed_utterance_keeps_its_text_before_the_pause(make_workers: MakeWorkers) -> None:
    """An engine that cannot resume starts afresh and the worker puts the text before the pause in front."""
    pool = make_workers()
    async with pool.recognition() as stream:
        await stream.start()
        await stream.feed(frames(1, 1)[0])
        assert await stream.finish() == "320:320"  # early, at a pause
        await stream.resume()
        await stream.feed(frames(2, 2)[0])
        assert await stream.partial() == "320:320 320"
        assert await stream.finish() == "320:320 320:640"
        await stream.start()  # a new answer forgets the old one's parts
        await stream.feed(frames(3, 1)[0])
        assert await stream.finish() == "320:960"


async def test_an_engine_that_resumes_and_decodes_on_demand(make_workers: MakeWorkers) -> None:
    pool = make_workers(recognizer=WholeRecognizer)
    async with pool.recognition() as stream:
        await stream.start()
        await stream.feed(frames(1, 1)[0])
        assert await stream.finish() == "default:320"
        await stream.resume()
        await stream.feed(frames(1, 1)[0])
        assert await stream.partial() == "fresh 640"  # the engine's own caption, not feed()'s
        assert await stream.finish() == "default:640"  # one text for the whole answer


async def test_streams_get_recognisers_for_their_language(make_workers: MakeWorkers) -> None:
    pool = make_workers(recognizer=WholeRecognizer)
    streams = {lang: pool.recognition(lang) for lang in (None, "en-GB", "de", "fr-CA")}
    for stream in streams.values():
        await stream.start()
    assert [await s.finish() for s in streams.values()] == ["default:0", "default:0", "de:0", "fr-CA:0"]
    for stream in streams.values():
        await stream.close()


async def test_synthesis_equals_calling_the_engine(make_workers: MakeWorkers) -> None:
    pool = make_workers()
    text = "hello there this is a test"
    chunks = await collect(pool, text)  # not started explicitly: the worker starts on demand
    expected = list(SineSynthesizer().synthesize(text))
    assert [rate for _, rate in chunks] == [22_050] * len(expected)
    assert len(chunks) == len(expected)
    for (got, _), want in zip(chunks, expected, strict=True):
        assert got.dtype == np.int16 and np.array_equal(got, want)
    got[0] = 1  # chunks are writable arrays of their own
    assert await collect(pool, "   ") == []


async def test_engine_options_and_names_are_resolved_in_the_worker(make_workers: MakeWorkers) -> None:
    pool = make_workers(recognizer_options={"feed_delay": 0.0}, synthesizer_options={"chunk_delay": 0.0})
    assert len(await collect(pool, "one two")) == 2
    bad = make_workers(recognizer="no-such-engine", warm=True)
    with pytest.raises(RemoteError, match="unknown recognizer"):
        await bad.start()


async def test_engine_errors_are_reported_and_the_stream_recovers(make_workers: MakeWorkers) -> None:
    pool = make_workers()
    with pytest.raises(RemoteError, match="cannot say boom") as info:
        await collect(pool, "say boom now")
    assert info.value.remote_type == "ValueError" and "synthesize" in info.value.remote_traceback
    async with pool.recognition() as stream:
        await stream.start()
        await stream.feed(frames(FAIL, 1)[0])
        await stream.feed(frames(1, 1)[0])
        with pytest.raises(RemoteError, match="bad audio"):
            await stream.partial()
        with pytest.raises(RemoteError, match="bad audio"):
            await stream.finish()
        await stream.start()  # a new utterance works again
        await stream.feed(frames(2, 1)[0])
        assert await stream.finish() == "320:640"
    with pytest.raises(RuntimeError, match="start"):
        await pool.recognition().feed(frames(1, 1)[0])


# --- concurrency -----------------------------------------------------------------------------------


async def test_parallel_streams_keep_their_audio_separate(make_workers: MakeWorkers) -> None:
    pool = make_workers(processes=2)
    await pool.start()
    streams = [pool.recognition() for _ in range(12)]
    assert sorted(pool.loads) == [6, 6]  # least loaded placement

    async def talk(k: int) -> list[str]:
        results = []
        stream = streams[k]
        for utterance in range(3):
            await stream.start()
            for frame in frames(k * 10 + utterance, 20 + k):
                await stream.feed(frame)
                await asyncio.sleep(0)  # interleave with the other streams
            results.append(await stream.finish())
        await stream.close()
        return results

    async def speak(i: int) -> list[tuple[PCM, int]]:
        return await collect(pool, " ".join(["word"] * (i + 1)))

    results, speech = await asyncio.gather(
        asyncio.gather(*(talk(k) for k in range(12))), asyncio.gather(*(speak(i) for i in range(4)))
    )
    for k, per_stream in enumerate(results):
        n = 320 * (20 + k)
        assert per_stream == [f"{n}:{n * (k * 10 + u)}" for u in range(3)]
    assert [len(chunks) for chunks in speech] == [1, 2, 3, 4]
    assert pool.loads == [0, 0]


async def test_feed_does_not_wait_for_the_worker(make_workers: MakeWorkers) -> None:
    pool = make_workers(recognizer=slow_recognizer)  # 5 ms per feed() call in the worker
    await pool.start()
    async with pool.recognition() as stream:
        await stream.start()
        started = time.perf_counter()
        for frame in frames(1, 200):
            await stream.feed(frame)
        feeding = time.perf_counter() - started
        assert await stream.finish() == f"{200 * 320}:{200 * 320}"
        total = time.perf_counter() - started
    # 200 round trips would take >= 1 s; pipelined feeding takes a few ms, and the worker merges the
    # backlog into a few engine calls, so even the total is far below 200 * 5 ms
    assert feeding < 0.2 * UNIT
    assert total < 0.8 * UNIT


async def test_breaking_off_a_synthesis_cancels_it(make_workers: MakeWorkers) -> None:
    pool = make_workers(synthesizer=slow_synthesizer)  # 50 ms per chunk
    await pool.start()
    started = time.perf_counter()
    async for _chunk, _rate in pool.synthesize(" ".join(["word"] * 100)):  # 5 s if it ran to the end
        break
    assert len(await collect(pool, "next")) == 1  # runs after the cancelled one on the same worker
    assert time.perf_counter() - started < 1.5 * UNIT


# --- failures --------------------------------------------------------------------------------------


async def test_a_killed_worker_fails_pending_calls_and_is_replaced(make_workers: MakeWorkers, mode: str) -> None:
    pool = make_workers(processes=1)
    await pool.start()
    old_pid = pool.pids[0]
    stream = pool.recognition()
    await stream.start()
    await stream.feed(frames(HANG, 1)[0])
    finishing = asyncio.ensure_future(stream.finish())  # hangs in the worker
    synthesis = asyncio.ensure_future(collect(pool, "queued behind the hang"))
    await asyncio.sleep(0.2 * UNIT)
    assert not finishing.done() and not synthesis.done()

    killed_at = time.perf_counter()
    pool.kill_worker(0)
    with pytest.raises(WorkerDied, match="killed"):
        await asyncio.wait_for(finishing, 2 * UNIT)
    with pytest.raises(WorkerDied):
        await asyncio.wait_for(synthesis, 2 * UNIT)
    assert time.perf_counter() - killed_at < 2 * UNIT
    # the utterance that was running there is lost ...
    with pytest.raises(WorkerDied):
        await stream.feed(frames(1, 1)[0])
    with pytest.raises(WorkerDied):
        await stream.partial()
    # ... but the stream's next utterance, new streams and syntheses get a new worker
    await stream.start()
    await stream.feed(frames(3, 2)[0])
    assert await stream.finish() == "320:960"
    if mode == "process":
        assert pool.pids[0] not in (None, old_pid)
    async with pool.recognition() as fresh:
        await fresh.start()
        await fresh.feed(frames(1, 1)[0])
        assert await fresh.finish() == "320:320"
    assert len(await collect(pool, "still talking")) == 2
    await stream.close()


async def test_a_worker_process_that_dies_fails_pending_calls() -> None:
    """Not killed through the pool: the process just exits (a crash), which the pool notices on its socket."""
    pool = SpeechWorkers(recognizer=CountingRecognizer, synthesizer=SineSynthesizer)
    try:
        await pool.start()
        pid = pool.pids[0]
        assert pid is not None
        async with pool.recognition() as stream:
            await stream.start()
            await stream.feed(frames(HANG, 1)[0])
            finishing = asyncio.ensure_future(stream.finish())
            await asyncio.sleep(0.2 * UNIT)
            killed_at = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(WorkerDied, match="exited unexpectedly"):
                await asyncio.wait_for(finishing, 2 * UNIT)
            assert time.perf_counter() - killed_at < 2 * UNIT
            await stream.start()
            assert await stream.finish() == "0:0"
            assert pool.pids[0] not in (None, pid)
    finally:
        await pool.close()


async def test_a_killed_idle_worker_is_restarted_for_new_streams(make_workers: MakeWorkers) -> None:
    pool = make_workers(processes=2)
    await pool.start()
    pids = list(pool.pids)
    stream = pool.recognition()  # on worker 0
    await stream.start()
    pool.kill_worker(0)
    deadline = time.perf_counter() + 2 * UNIT
    while pool.pids[0] is not None and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    assert pool.pids[0] is None and pool.pids[1] == pids[1]
    with pytest.raises(WorkerDied):
        await stream.finish()
    await stream.start()  # moved to the least loaded worker: the live one
    assert stream.worker == 1
    await stream.feed(frames(5, 1)[0])
    assert await stream.finish() == "320:1600"
    await stream.close()
    assert await pool.ping()  # restarts worker 0
    assert pool.pids[0] is not None


async def test_an_unresponsive_worker_times_out_and_is_killed() -> None:
    pool = SpeechWorkers(recognizer=CountingRecognizer, synthesizer=SineSynthesizer, reply_timeout=0.5 * UNIT)
    try:
        await pool.start()
        async with pool.recognition() as stream:
            await stream.start()
            await stream.feed(frames(HANG, 1)[0])
            started = time.perf_counter()
            with pytest.raises(WorkerTimeout):
                await stream.finish()
            assert time.perf_counter() - started < 2 * UNIT
            await stream.start()  # on a new worker process
            assert await stream.finish() == "0:0"
    finally:
        await pool.close()


async def test_close_leaves_no_child_processes_or_threads(make_workers: MakeWorkers, mode: str) -> None:
    pool = make_workers(processes=2)
    await pool.start()
    stream = pool.recognition()
    await stream.start()
    pending = asyncio.ensure_future(collect(pool, " ".join(["word"] * 5)))
    pids = [pid for pid in pool.pids if pid is not None]
    await pool.close()
    # anything still waiting fails instead of hanging
    with pytest.raises(WorkerError):
        await asyncio.wait_for(pending, 2 * UNIT)
    with pytest.raises(WorkerError):
        await stream.finish()
    with pytest.raises(WorkerError):
        pool.recognition()
    if mode == "process":
        assert len(pids) == 2 and os.getpid() not in pids
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists()  # exited and reaped (no zombie left)
        assert not set(pids) & child_pids()
    else:
        assert not [t for t in threading.enumerate() if t.name.startswith("speech-worker")]


def child_pids() -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(FileNotFoundError), open(task / "children") as f:  # the thread may just have ended
            pids.update(int(p) for p in f.read().split())
    return pids


# --- real time ---------------------------------------------------------------------------------


async def measure_lag(
    pool: SpeechWorkers, streams: int, seconds: float, latencies: dict[str, list[float]] | None = None
) -> list[float]:
    """Feed ``streams`` streams 20 ms frames in real time (a partial every 300 ms); sample event-loop lag.

    ``latencies`` collects how long each ``partial()`` and ``finish()`` took."""
    lags: list[float] = []
    latencies = latencies if latencies is not None else {}
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    async def talk(k: int) -> None:
        audio = noise(seconds, seed=k)
        async with pool.recognition() as stream:
            await stream.start()
            start = time.perf_counter()
            for i, offset in enumerate(range(0, len(audio), 320)):
                delay = start + i * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await stream.feed(audio[offset : offset + 320])
                if i % 15 == 14:
                    t = time.perf_counter()
                    await stream.partial()
                    latencies.setdefault("partial", []).append(time.perf_counter() - t)
            t = time.perf_counter()
            await stream.finish()
            latencies.setdefault("finish", []).append(time.perf_counter() - t)

    tick = asyncio.ensure_future(ticker())
    await asyncio.gather(*(talk(k) for k in range(streams)))
    stop.set()
    await tick
    return lags


async def test_event_loop_stays_responsive_with_ten_real_time_streams(make_workers: MakeWorkers) -> None:
    pool = make_workers(processes=2)
    await pool.start()
    lags = await measure_lag(pool, 10, 2.0)
    assert statistics.median(lags) < 0.01 * UNIT
    assert max(lags) < 0.25 * UNIT  # scheduling hiccups on a loaded 2-core machine; a blocked loop is far worse


# --- real engines ----------------------------------------------------------------------------------


def real_engines_available() -> bool:
    try:
        from media import stt, tts
    except ImportError:
        return False
    return hasattr(stt, "create_recognizer") and hasattr(tts, "create_synthesizer")


@pytest.mark.skipif(not real_engines_available(), reason="media.tts.create_synthesizer not available yet")
async def test_real_engines_in_a_worker_process_match_in_process_results() -> None:
    """eSpeak speaks a sentence in the worker; Whisper there transcribes it, as it does when called directly."""
    from media import stt, tts
    from media.resample import resample
    from media.stt.wer import normalize_words, word_error_rate

    text = "thank you that is really helpful"
    async with SpeechWorkers() as pool:
        chunks = await collect(pool, text)
        rate = chunks[0][1]
        speech = np.concatenate([c for c, _ in chunks])
        direct_speech = np.concatenate(list(tts.create_synthesizer("espeak").synthesize(text)))  # type: ignore[attr-defined]
        # eSpeak keeps some state between calls in a process, so another process may differ by a sample
        assert abs(len(speech) - len(direct_speech)) <= 0.01 * len(direct_speech)
        audio = resample(speech, rate, 16_000)
        async with pool.recognition() as stream:
            await stream.start()
            for i in range(0, len(audio), 320):
                await stream.feed(audio[i : i + 320])
            transcript = await stream.finish()
    direct = stt.create_recognizer()  # Whisper, as in the worker
    direct.start()
    for i in range(0, len(audio), 320):
        direct.feed(audio[i : i + 320])
    assert transcript == direct.finish()
    assert word_error_rate(text, transcript) <= 0.34, transcript
    assert {"thank", "you"} <= set(normalize_words(transcript))


# --- measurements (VIVAVOCE_BENCH=1 pytest tests/media/test_workers.py -k bench -s) -------------------------


@pytest.mark.skipif(not os.environ.get("VIVAVOCE_BENCH"), reason="measurement; set VIVAVOCE_BENCH=1")
async def test_bench_overheads() -> None:
    frame = noise(0.02)
    for inprocess in (False, True):
        label = "in-process" if inprocess else "process   "
        fake: dict[str, Any] = {"recognizer": CountingRecognizer, "synthesizer": SineSynthesizer}
        async with SpeechWorkers(inprocess=inprocess, **fake) as pool:
            async with pool.recognition() as stream:
                await stream.start()
                n = 2000
                t = time.perf_counter()
                for _ in range(n):
                    await stream.feed(frame)
                feed = (time.perf_counter() - t) / n
                await stream.partial()
                round_trips = []
                for _ in range(500):
                    t = time.perf_counter()
                    await stream.feed(frame)
                    await stream.partial()
                    round_trips.append(time.perf_counter() - t)
            firsts = []
            for _ in range(200):
                t = time.perf_counter()
                async for _chunk in pool.synthesize("hello"):
                    firsts.append(time.perf_counter() - t)
                    break
        print(
            f"\n{label}: feed() {feed * 1e6:.1f} us on the loop; feed+partial round trip median "
            f"{statistics.median(round_trips) * 1e6:.0f} us (p99 {np.percentile(round_trips, 99) * 1e6:.0f}); "
            f"synthesize first chunk median {statistics.median(firsts) * 1e6:.0f} us"
        )
    direct = CountingRecognizer()
    direct.start()
    t = time.perf_counter()
    for _ in range(2000):
        direct.feed(frame)
        direct.finish()
    print(f"direct call (fake engine): {(time.perf_counter() - t) / 2000 * 1e6:.1f} us")
    for processes, recognizer in ((2, CountingRecognizer), (2, "pocketsphinx")):
        async with SpeechWorkers(processes=processes, recognizer=recognizer, synthesizer=SineSynthesizer) as pool:
            latencies: dict[str, list[float]] = {}
            cpu = time.process_time()
            lags = await measure_lag(pool, 10, 5.0, latencies)
            cpu = time.process_time() - cpu
            partial, finish = latencies["partial"], latencies["finish"]
            print(
                f"  parent CPU {cpu / 5.0 * 100:.0f}% of a core; partial() median"
                f" {statistics.median(partial) * 1e3:.1f} ms"
                f" p99 {np.percentile(partial, 99) * 1e3:.1f} ms; finish() median"
                f" {statistics.median(finish) * 1e3:.1f} ms"
                f" max {max(finish) * 1e3:.1f} ms"
            )
            print(
                f"10 real-time streams, {processes} workers, {recognizer if isinstance(recognizer, str) else 'fake'}: "
                f"loop lag median {statistics.median(lags) * 1e3:.2f} ms, p99 {np.percentile(lags, 99) * 1e3:.2f} ms, "
                f"max {max(lags) * 1e3:.2f} ms"
            )
