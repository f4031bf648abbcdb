"""Server configuration: one frozen record, filled from flags and ``VIVAVOCE_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


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
    synthesis_inprocess: bool = True  # synthesis in threads here (eSpeak releases the GIL), recognition in workers
    vad: str = "webrtc"
    recognizer: str = "whisper"  # or "pocketsphinx" (light, English only, ~4.5x the word errors)
    # a CTranslate2 Whisper model folder (or tiny.en / base) for every stream; default: tiny.en for English
    # blueprints, base for other languages
    recognizer_model: str | None = None
    # longest pause inside an answer whose words so far are unfinished (runtime/turn_end.py); at or
    # below a channel's eos_silence_ms, silence alone ends turns
    turn_max_silence_ms: float = 2000.0
    synthesizer: str = "espeak"
    # Multiplies every runtime duration (timeouts, join window, sweeps, heartbeats).
    # 1.0 in production; tests use a small value so timeouts fire in milliseconds.
    time_scale: float = 1.0

    @property
    def recognizer_options(self) -> dict[str, object]:
        return {"model": self.recognizer_model} if self.recognizer_model else {}

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'vivavoce.db').resolve()}"

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
        if "VIVAVOCE_RECOGNIZER" in env:
            values["recognizer"] = env["VIVAVOCE_RECOGNIZER"]
        if "VIVAVOCE_RECOGNIZER_MODEL" in env:
            values["recognizer_model"] = env["VIVAVOCE_RECOGNIZER_MODEL"]
        if "VIVAVOCE_TURN_MAX_SILENCE_MS" in env:
            values["turn_max_silence_ms"] = float(env["VIVAVOCE_TURN_MAX_SILENCE_MS"])
        if "VIVAVOCE_SQLITE_SYNCHRONOUS" in env:
            values["sqlite_synchronous"] = env["VIVAVOCE_SQLITE_SYNCHRONOUS"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
