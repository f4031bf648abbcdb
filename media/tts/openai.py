"""OpenAI-compatible text-to-speech: ``POST {url}/audio/speech``, the audio streamed back as raw PCM.

Spoken by OpenAI, Kokoro-FastAPI and others. The request is JSON ``{"model", "input", "voice",
"response_format": "pcm"}``; the answer's body is 24 kHz signed 16-bit little-endian mono samples,
sent in chunks as they are made (a chunk may end mid-sample: the odd byte waits for the next). Errors
come back as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import numpy as np

from media.audio import PCM
from media.hosted import HostedEngine, HostedError, error_reason
from media.tts.base import HostedSynthesizer

PCM_RATE = 24_000  # what "response_format": "pcm" means in this API
READ_BYTES = 4800  # 100 ms


class OpenAISpeech(HostedSynthesizer):
    name = "openai"
    sample_rate = PCM_RATE

    def __init__(self, *, engine: HostedEngine, session: aiohttp.ClientSession) -> None:
        self.engine = engine
        self.session = session

    async def stream(self, text: str) -> AsyncIterator[PCM]:
        """The audio of ``text`` as it arrives; the first chunk within ``timeout_s``, each next one too."""
        if not text.strip():
            return
        body = {"model": self.engine.model, "input": text, "voice": self.engine.voice, "response_format": "pcm"}
        headers = {"Authorization": f"Bearer {self.engine.api_key()}"}
        timeout = aiohttp.ClientTimeout(sock_connect=self.engine.timeout_s, sock_read=self.engine.timeout_s)
        leftover = b""
        try:
            async with self.session.post(
                f"{self.engine.url}/audio/speech", json=body, headers=headers, timeout=timeout
            ) as response:
                if response.status != 200:
                    raise HostedError(f"speech refused: {await error_reason(response)}")
                async for data in response.content.iter_chunked(READ_BYTES):
                    data = leftover + data
                    whole = len(data) - len(data) % 2
                    leftover = data[whole:]
                    if whole:
                        yield np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
        except TimeoutError:
            raise HostedError(f"no speech audio within {self.engine.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise HostedError(f"speech request failed: {exc!r}") from None
