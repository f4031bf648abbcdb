"""OpenAI-compatible speech-to-text: ``POST {url}/audio/transcriptions`` once per utterance.

Spoken by OpenAI, Groq, faster-whisper-server/speaches and vLLM. The request is multipart form data:
``file`` (the utterance as a 16 kHz mono 16-bit WAV), ``model``, ``language`` (ISO 639-1, from the
blueprint) and ``response_format`` (``json`` -> ``{"text": ...}``; ``verbose_json`` adds segments,
duration and language). Errors come back as ``{"error": {"message", "type", "param", "code"}}`` with a
4xx/5xx status. There are no interim results: :meth:`partial` is empty, and the whole utterance is
sent when it ends (these services decode a short answer in a fraction of a second).
"""

from __future__ import annotations

import io

import aiohttp
import numpy as np
import soundfile as sf

from media.audio import PCM, SAMPLE_RATE
from media.hosted import HostedEngine, HostedError, error_reason
from media.stt.base import HostedRecognizer

MAX_UTTERANCE_S = 600  # the services take files up to 25 MB; 10 min of 16 kHz 16-bit audio is 19 MB


def wav_bytes(pcm: PCM) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class OpenAITranscription(HostedRecognizer):
    """One participant's utterances, each transcribed by one request (see the module docs)."""

    name = "openai"

    def __init__(
        self,
        *,
        engine: HostedEngine,
        session: aiohttp.ClientSession,
        language: str = "en",
        response_format: str = "json",
    ) -> None:
        if response_format not in ("json", "verbose_json"):
            raise ValueError(f"response_format must be json or verbose_json, not {response_format!r}")
        self.engine = engine
        self.session = session
        self.language = language.split("-", 1)[0].lower()
        self.response_format = response_format
        self._audio: list[PCM] = []
        self._samples = 0

    async def start(self) -> None:
        self._audio, self._samples = [], 0

    async def feed(self, pcm: PCM) -> None:
        if self._samples + len(pcm) <= MAX_UTTERANCE_S * SAMPLE_RATE:
            self._audio.append(pcm)
            self._samples += len(pcm)

    async def partial(self) -> str:
        return ""

    async def finish(self) -> str:
        audio, self._audio, self._samples = self._audio, [], 0
        if not audio:
            return ""
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(np.concatenate(audio)), filename="answer.wav", content_type="audio/wav")
        form.add_field("model", self.engine.model)
        form.add_field("language", self.language)
        form.add_field("response_format", self.response_format)
        headers = {"Authorization": f"Bearer {self.engine.api_key()}"}
        url = f"{self.engine.url}/audio/transcriptions"
        try:
            async with self.session.post(
                url, data=form, headers=headers, timeout=aiohttp.ClientTimeout(total=self.engine.timeout_s)
            ) as response:
                if response.status != 200:
                    raise HostedError(f"transcription refused: {await error_reason(response)}")
                body = await response.json(content_type=None)
        except TimeoutError:
            raise HostedError(f"no transcription within {self.engine.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise HostedError(f"transcription request failed: {exc!r}") from None
        except ValueError:
            raise HostedError("the transcription answer is not JSON") from None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise HostedError("the transcription answer has no 'text'")
        return text.strip()
