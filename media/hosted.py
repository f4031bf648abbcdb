"""Hosted speech engines: how one is reached, and how its failures read.

A hosted engine is configured per server (:class:`HostedEngine`: which service, its base URL, model,
voice, and the *name* of the environment variable holding its key). The key is read from the
environment when a request is made and goes only into that request's header: it is never stored in a
config record, written to the database, or logged (:class:`HostedEngine`'s ``repr`` names the variable,
not its value).

These engines are network-bound, not CPU-bound: they run as asyncio code on the server's event loop
(one shared :class:`aiohttp.ClientSession`), not in the speech worker processes. Every failure they can
meet (refused connection, timeout, an HTTP error status, an error close of a websocket, a malformed
answer) is raised as :class:`HostedError` with a reason a person can act on; the voice pipeline then
falls back to the embedded engine for that utterance (:mod:`media.fallback`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["DEFAULTS", "HostedEngine", "HostedError", "error_reason"]


class HostedError(RuntimeError):
    """A hosted engine could not do what was asked; the message says why (never the key)."""


#: Per service: (base URL, speech-to-text model, text-to-speech model, voice, key variable).
DEFAULTS: dict[str, dict[str, str]] = {
    "openai": {
        "url": "https://api.openai.com/v1",
        "stt_model": "whisper-1",
        "tts_model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "key_env": "OPENAI_API_KEY",
    },
    "deepgram": {
        "url": "wss://api.deepgram.com/v1/listen",
        "stt_model": "nova-3",
        "key_env": "DEEPGRAM_API_KEY",
    },
}


@dataclass(frozen=True)
class HostedEngine:
    """Where a hosted engine is and how to authenticate with it (see the module docs).

    ``service``: ``openai`` (any OpenAI-compatible server: OpenAI, Groq, speaches, vLLM, Kokoro-FastAPI...)
    or ``deepgram``. Unset fields take the service's defaults (:data:`DEFAULTS`).
    """

    service: str
    kind: str  # "stt" or "tts"
    url: str = ""
    model: str = ""
    voice: str = ""
    key_env: str = ""
    timeout_s: float = 8.0

    @classmethod
    def configured(cls, service: str, kind: str, **fields: Any) -> HostedEngine:
        """An engine with the service's defaults for every field not given (None or empty)."""
        if service not in DEFAULTS:
            raise ValueError(f"unknown hosted service {service!r}; known: {', '.join(sorted(DEFAULTS))}")
        if kind == "tts" and service != "openai":
            raise ValueError(f"hosted text-to-speech speaks the OpenAI protocol only, not {service!r}")
        defaults = DEFAULTS[service]
        given = {k: v for k, v in fields.items() if v not in (None, "")}
        return cls(
            service=service,
            kind=kind,
            url=str(given.get("url", defaults["url"])).rstrip("/"),
            model=str(given.get("model", defaults.get(f"{kind}_model", ""))),
            voice=str(given.get("voice", defaults.get("voice", ""))),
            key_env=str(given.get("key_env", defaults["key_env"])),
            timeout_s=float(given.get("timeout_s", 8.0)),
        )

    def api_key(self) -> str:
        """The key, from the environment now (an unset variable is an empty key: a local server may take none)."""
        return os.environ.get(self.key_env, "")

    def describe(self) -> str:
        """For logs: service, model and URL; never the key."""
        return f"{self.service} {self.kind} ({self.model or 'default model'} at {self.url})"


async def error_reason(response: aiohttp.ClientResponse) -> str:
    """A readable reason from an HTTP error answer: OpenAI's ``{"error": {"message", "type", "code"}}``,
    Deepgram's ``{"err_code", "err_msg"}``, or the start of whatever text came back."""
    body = await response.text(errors="replace")
    detail = body.strip()[:300]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            kind = error.get("type") or error.get("code")
            detail = f"{kind}: {error['message']}" if kind else str(error["message"])
        elif parsed.get("err_msg"):
            detail = f"{parsed.get('err_code', 'error')}: {parsed['err_msg']}"
    return f"HTTP {response.status}" + (f" ({detail})" if detail else "")
