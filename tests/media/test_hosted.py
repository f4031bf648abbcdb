"""Hosted speech engines against local services speaking their real protocols (tests/speech_services.py),
their failures, and the fallback to the embedded engines.

WER: the fake services recognise with PocketSphinx, which scores ~0.1 on the eSpeak fixture answers
(tests/media/test_stt.py); asserted <= 0.35 per answer, as in the voice tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from media.fallback import FallbackRecognition, FallbackSpeaker
from media.hosted import HostedEngine, HostedError
from media.resample import resample
from media.stt import create_hosted_recognizer, create_recognizer
from media.stt.deepgram import DeepgramRecognition
from media.stt.openai import OpenAITranscription
from media.stt.wer import word_error_rate
from media.synthesis import SynthesisThreads
from media.tts import create_hosted_synthesizer
from media.tts.openai import PCM_RATE, OpenAISpeech
from media.workers import SpeechWorkers
from tests.conftest import ANSWERS, spoken_answer
from tests.speech_services import KEY, SpeechServices, start_services

WER = 0.35


@pytest.fixture
async def services(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[SpeechServices, str]]:
    monkeypatch.setenv("TEST_SPEECH_KEY", KEY)
    fake = SpeechServices()
    runner, url = await start_services(fake)
    yield fake, url
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def openai(url: str, kind: str, **fields: object) -> HostedEngine:
    return HostedEngine.configured("openai", kind, url=f"{url}/v1", key_env="TEST_SPEECH_KEY", **fields)  # type: ignore[arg-type]


def deepgram(url: str, **fields: object) -> HostedEngine:
    ws = url.replace("http://", "ws://") + "/v1/listen"
    return HostedEngine.configured("deepgram", "stt", url=ws, key_env="TEST_SPEECH_KEY", **fields)  # type: ignore[arg-type]


async def say(recognizer: object, answer_id: str) -> str:
    pcm = spoken_answer(answer_id)
    await recognizer.start()  # type: ignore[attr-defined]
    for i in range(0, len(pcm), 960):  # 60 ms batches, as the voice pipeline feeds them
        await recognizer.feed(pcm[i : i + 960])  # type: ignore[attr-defined]
    return str(await recognizer.finish())  # type: ignore[attr-defined]


def heard(pcm: np.ndarray, rate: int) -> str:
    recognizer = create_recognizer("pocketsphinx")
    recognizer.start()
    recognizer.feed(np.asarray(resample(pcm, rate, 16_000), dtype=np.int16))
    return recognizer.finish()


# --- configuration ------------------------------------------------------------------------------------


def test_engines_take_the_service_defaults_and_never_show_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    stt = HostedEngine.configured("openai", "stt")
    assert (stt.url, stt.model, stt.key_env) == ("https://api.openai.com/v1", "whisper-1", "OPENAI_API_KEY")
    assert HostedEngine.configured("deepgram", "stt", model="nova-2").model == "nova-2"
    assert stt.api_key() == "sk-secret-value"
    assert "sk-secret" not in repr(stt) and "sk-secret" not in stt.describe()
    with pytest.raises(ValueError, match="unknown hosted service"):
        HostedEngine.configured("acme", "stt")
    with pytest.raises(ValueError, match="OpenAI protocol only"):
        HostedEngine.configured("deepgram", "tts")
    with pytest.raises(ValueError, match="unknown hosted recognizer"):
        create_hosted_recognizer("acme")


# --- OpenAI-compatible transcriptions ---------------------------------------------------------------


async def test_openai_transcription_sends_the_utterance_as_multipart(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession
) -> None:
    fake, url = services
    recognizer = create_hosted_recognizer("openai", engine=openai(url, "stt"), session=http, language="en-GB")
    assert isinstance(recognizer, OpenAITranscription)
    text = await say(recognizer, "job")
    assert word_error_rate(ANSWERS["job"]["text"], text) <= WER, text
    assert text[0].isupper() and text.endswith(".")  # the service's text, kept as it wrote it
    assert await recognizer.partial() == ""  # no interim results in this API
    request = fake.requests[-1]
    assert request["model"] == "whisper-1" and request["language"] == "en"
    assert request["response_format"] == "json"
    assert request["filename"] == "answer.wav" and request["content_type"] == "audio/wav"
    verbose = OpenAITranscription(engine=openai(url, "stt"), session=http, response_format="verbose_json")
    assert word_error_rate(ANSWERS["home"]["text"], await say(verbose, "home")) <= WER
    await recognizer.start()
    assert await recognizer.finish() == ""  # nothing said: no request
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        (503, r"HTTP 503 \(server_error: The server had an error"),
        ("bad_audio", r"HTTP 400 \(invalid_request_error: Invalid file format"),
        ("hang", r"no transcription within 0.5 s"),
    ],
)
async def test_openai_transcription_failures_say_why(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession, how: int | str, reason: str
) -> None:
    fake, url = services
    fake.fail_next("transcriptions", how)
    recognizer = OpenAITranscription(engine=openai(url, "stt", timeout_s=0.5), session=http)
    with pytest.raises(HostedError, match=reason):
        await say(recognizer, "job")


async def test_a_wrong_key_is_refused_without_showing_it(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = services
    monkeypatch.setenv("TEST_SPEECH_KEY", "sk-wrong-secret")
    with pytest.raises(HostedError, match="HTTP 401") as refused:
        await say(OpenAITranscription(engine=openai(url, "stt"), session=http), "job")
    assert "sk-wrong-secret" not in str(refused.value)
    with pytest.raises(HostedError, match=r"HTTP 401 \(Invalid credentials.\)") as refused:
        await say(DeepgramRecognition(engine=deepgram(url), session=http), "job")
    assert "sk-wrong-secret" not in str(refused.value)


# --- Deepgram live ----------------------------------------------------------------------------------


async def test_deepgram_streams_audio_and_gives_interim_results(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession
) -> None:
    fake, url = services
    recognizer = create_hosted_recognizer("deepgram", engine=deepgram(url), session=http, language="en")
    pcm = spoken_answer("job")
    await recognizer.start()
    partials = []
    for i in range(0, len(pcm), 960):
        await recognizer.feed(pcm[i : i + 960])
        await asyncio.sleep(0.005)  # let the socket carry it, as real-time speech would
        partials.append(await recognizer.partial())
    await recognizer.feed(np.zeros(0, dtype=np.int16))  # never sent: an empty frame would end the stream
    for _ in range(100):
        if any(partials):
            break
        await asyncio.sleep(0.02)
        partials.append(await recognizer.partial())
    final = await recognizer.finish()
    assert any(partials), "no interim result while the answer was streamed"
    assert word_error_rate(ANSWERS["job"]["text"], final) <= WER, final
    query = fake.requests[-1]
    assert query["encoding"] == "linear16" and query["sample_rate"] == "16000"
    assert query["interim_results"] == "true" and query["model"] == "nova-3"
    assert word_error_rate(ANSWERS["home"]["text"], await say(recognizer, "home")) <= WER  # a second utterance
    await recognizer.close()


@pytest.mark.parametrize(
    ("how", "reason"), [(1011, r"closed by the service: 1011 NET-0000"), ("hang", r"within 0.5 s")]
)
async def test_deepgram_failures_say_why(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession, how: int | str, reason: str
) -> None:
    fake, url = services
    fake.fail_next("listen", how)
    recognizer = DeepgramRecognition(engine=deepgram(url, timeout_s=0.5), session=http)
    with pytest.raises(HostedError, match=reason):
        await say(recognizer, "job")
    await recognizer.close()


# --- OpenAI-compatible speech -------------------------------------------------------------------------


async def test_openai_speech_streams_24_khz_pcm(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession
) -> None:
    fake, url = services
    voice = create_hosted_synthesizer("openai", engine=openai(url, "tts", voice="nova"), session=http)
    assert isinstance(voice, OpenAISpeech) and voice.sample_rate == PCM_RATE == 24_000
    text = "Thank you. Where do you live?"
    chunks = [pcm async for pcm in voice.stream(text)]
    assert len(chunks) > 1 and all(c.dtype == np.int16 for c in chunks)
    assert word_error_rate(text, heard(np.concatenate(chunks), PCM_RATE)) <= WER
    assert fake.requests[-1] == {
        "route": "speech", "model": "gpt-4o-mini-tts", "input": text, "voice": "nova", "response_format": "pcm"
    }  # fmt: skip


@pytest.mark.parametrize(("how", "reason"), [(500, r"HTTP 500 \(server_error"), ("hang", r"within 0.5 s")])
async def test_openai_speech_failures_say_why(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession, how: int | str, reason: str
) -> None:
    fake, url = services
    fake.fail_next("speech", how)
    voice = OpenAISpeech(engine=openai(url, "tts", timeout_s=0.5), session=http)
    with pytest.raises(HostedError, match=reason):
        _ = [pcm async for pcm in voice.stream("Hello there.")]


# --- falling back -----------------------------------------------------------------------------------


async def test_a_failed_utterance_is_recognised_by_the_embedded_engine(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = services
    engine = openai(url, "stt")
    async with SpeechWorkers(inprocess=True, synthesizer="espeak") as workers:  # the embedded default: Whisper
        recognition = FallbackRecognition(
            OpenAITranscription(engine=engine, session=http), workers.recognition, what=engine.describe()
        )
        fake.fail_next("transcriptions", 503)
        with caplog.at_level(logging.WARNING, logger="vivavoce.hosted"):
            first = await say(recognition, "job")
        assert word_error_rate(ANSWERS["job"]["text"], first) <= WER  # heard by the embedded engine (counted below)
        assert recognition.fallbacks == 1
        assert "HTTP 503" in caplog.text and "recognised by the embedded engine" in caplog.text
        second = await say(recognition, "home")  # the service is tried again for the next answer
        assert second.endswith(".") and recognition.fallbacks == 1
        assert len([r for r in fake.requests if r["route"] == "transcriptions"]) == 2
        await recognition.close()


async def test_a_failed_sentence_is_spoken_by_the_embedded_voice(
    services: tuple[SpeechServices, str], http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = services
    engine = openai(url, "tts")
    threads = SynthesisThreads(synthesizer="espeak", warm=())
    try:
        speaker = FallbackSpeaker(OpenAISpeech(engine=engine, session=http), threads.speaker("en"), what="openai tts")
        text = "Thank you for that. Where do you live? And since when?"
        whole = [c async for c in speaker.synthesize(text)]
        assert {c.rate for c in whole} == {PCM_RATE} and sum(c.words for c in whole) == 11
        assert len([r for r in fake.requests if r["route"] == "speech"]) == 3  # one request per sentence
        # the second sentence fails: the first is the service's, the rest the embedded voice's
        fake.fail_next("speech", 0)  # 0: answer normally
        fake.fail_next("speech", 503)
        with caplog.at_level(logging.WARNING, logger="vivavoce.hosted"):
            mixed = [c async for c in speaker.synthesize(text)]
        rates = [c.rate for c in mixed]
        assert rates[0] == PCM_RATE and rates[-1] == 22_050 and rates == sorted(rates, reverse=True)
        assert sum(c.words for c in mixed if c.rate == PCM_RATE) == 4  # "Thank you for that."
        assert speaker.fallbacks == 1 and "HTTP 503" in caplog.text and "embedded voice speaks the rest" in caplog.text
        embedded = np.concatenate([c.pcm for c in mixed if c.rate == 22_050])
        assert word_error_rate("Where do you live? And since when?", heard(embedded, 22_050)) <= 0.5
    finally:
        await threads.close()
