"""What a load test does and where it may send traffic.

Safety rules, enforced before any request is made:

* Every request goes to the origin (scheme, host, port) of ``--url``: the REST
  calls, and every participant websocket. A join URL returned by the server or
  read from a file with any other origin is refused (``ConfigError``), and HTTP
  redirects are never followed.
* The origin must be a loopback address (``127.0.0.0/8``, ``::1`` or the name
  ``localhost``) unless ``allow_remote`` is set.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yarl import URL


class ConfigError(ValueError):
    """The load test was asked to do something it refuses to do; the message says what and why."""


# --- the target ------------------------------------------------------------------------------

_HTTP_FOR = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_FOR = {"http": "ws", "https": "wss"}


@dataclass(frozen=True)
class Origin:
    scheme: str  # http or https
    host: str  # lower case; IPv6 without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def ws_scheme(self) -> str:
        return _WS_FOR[self.scheme]


def origin_of(url: str) -> Origin:
    """The origin of an http(s) or ws(s) URL, websocket schemes mapped to their HTTP twins."""
    parsed = URL(url)
    scheme = (parsed.scheme or "").lower()
    if scheme not in _HTTP_FOR:
        raise ConfigError(f"{url!r}: only http, https, ws and wss URLs are supported")
    if not parsed.host:
        raise ConfigError(f"{url!r} has no host")
    port = parsed.port
    if port is None:  # yarl fills in 80/443 for http(s); ws(s) may need it here
        port = 443 if scheme in ("https", "wss") else 80
    return Origin(_HTTP_FOR[scheme], parsed.host.lower().strip("[]"), port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: it could resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_target(url: str, *, allow_remote: bool) -> Origin:
    """The origin to pin every request to; refuses a non-loopback host unless ``allow_remote``."""
    origin = origin_of(url)
    if URL(url).scheme.lower() not in ("http", "https"):
        raise ConfigError(f"--url must be the server's http(s) base URL, not {url!r}")
    if not allow_remote and not is_loopback(origin.host):
        raise ConfigError(
            f"refusing to load-test {origin}: only loopback hosts (127.0.0.0/8, localhost, ::1) are allowed "
            "by default; pass --allow-remote if you really mean to load a remote server"
        )
    return origin


def join_ws_url(join_url: str, origin: Origin, *, source: str = "join URL") -> str:
    """The participant websocket URL for a join URL, refused unless it is on ``origin``."""
    got = origin_of(join_url)
    if got != origin:
        raise ConfigError(
            f"refusing {source} {join_url!r}: its origin {got} is not the target {origin}; "
            "a load test only sends traffic to the --url it was given"
        )
    parsed = URL(join_url)
    path = parsed.path.rstrip("/")
    if not path.startswith("/join/"):
        raise ConfigError(f"{source} {join_url!r} is not a /join/<token> URL")
    if not path.endswith("/ws"):
        path += "/ws"
    return str(URL.build(scheme=origin.ws_scheme, host=parsed.host or origin.host, port=origin.port, path=path))


def read_join_urls(path: Path, origin: Origin) -> list[str]:
    """One join URL per line (blank lines and ``#`` comments skipped); every one must be on ``origin``."""
    urls: list[str] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        join_ws_url(line, origin, source=f"join URL on line {n} of {path}")
        urls.append(line)
    if not urls:
        raise ConfigError(f"{path} holds no join URLs")
    return urls


# --- personas -----------------------------------------------------------------------------------

DISTRIBUTIONS = ("fixed", "uniform", "normal", "lognormal", "exponential")


@dataclass(frozen=True)
class Delay:
    """A random delay in milliseconds, clamped to ``[min, max]``."""

    distribution: str = "lognormal"
    median: float = 800.0  # lognormal
    sigma: float = 0.5  # lognormal (of the log), normal (ms)
    mean: float = 800.0  # normal, exponential
    value: float = 800.0  # fixed
    low: float = 0.0  # uniform
    high: float = 0.0  # uniform
    min: float = 0.0
    max: float = 60_000.0

    def sample(self, rng: random.Random) -> float:
        d = self.distribution
        if d == "fixed":
            x = self.value
        elif d == "uniform":
            x = rng.uniform(self.low, self.high)
        elif d == "normal":
            x = rng.gauss(self.mean, self.sigma)
        elif d == "lognormal":
            x = rng.lognormvariate(math.log(max(self.median, 1e-3)), self.sigma)
        else:  # exponential
            x = rng.expovariate(1.0 / max(self.mean, 1e-3))
        return min(max(x, self.min), self.max)

    @classmethod
    def from_json(cls, data: Any, *, name: str = "typing_delay_ms") -> Delay:
        """A number (fixed delay) or ``{"distribution": ..., params}``; ``min``/``max`` clamp (uniform: the range)."""
        if isinstance(data, int | float) and not isinstance(data, bool):
            if data < 0:
                raise ConfigError(f"{name} must not be negative")
            return cls(distribution="fixed", value=float(data))
        if not isinstance(data, dict):
            raise ConfigError(f"{name} must be a number or an object with a 'distribution'")
        params = dict(data)
        dist = params.pop("distribution", "lognormal")
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"unknown distribution {dist!r}; expected one of {', '.join(DISTRIBUTIONS)}")
        allowed = {
            "fixed": {"value"},
            "uniform": {"min", "max"},
            "normal": {"mean", "sigma", "min", "max"},
            "lognormal": {"median", "sigma", "min", "max"},
            "exponential": {"mean", "min", "max"},
        }[dist]
        unknown = set(params) - allowed
        if unknown:
            raise ConfigError(
                f"{name} ({dist}): unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(allowed))}"
            )
        values: dict[str, float] = {}
        for k, v in params.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} ({dist}): {k} must be a non-negative number")
            values[k] = float(v)
        if dist == "uniform":
            if "min" not in values or "max" not in values or values["max"] < values["min"]:
                raise ConfigError(f"{name} (uniform) needs min and max, with max >= min")
            values["low"], values["high"] = values["min"], values["max"]
        if values.get("max", math.inf) < values.get("min", 0.0):
            raise ConfigError(f"{name} ({dist}): max must be at least min")
        return cls(distribution=dist, **values)

    def as_json(self) -> dict[str, Any]:
        d = self.distribution
        params = {
            "fixed": {"value": self.value},
            "uniform": {"min": self.low, "max": self.high},
            "normal": {"mean": self.mean, "sigma": self.sigma},
            "lognormal": {"median": self.median, "sigma": self.sigma},
            "exponential": {"mean": self.mean},
        }[d]
        if d in ("normal", "lognormal", "exponential"):
            params.update(min=self.min, max=self.max)
        return {"distribution": d, **params}


DEFAULT_ANSWERS = (
    "I usually wake up around seven and the first thing I do is make a cup of coffee.",
    "Most days I have porridge with some fruit and a glass of orange juice before work.",
    "I would like to have more time in the morning so that I could go for a short run.",
    "Honestly it depends on the week, but I try to keep the same routine every day.",
    "I think it is mostly habit, my parents always did it that way when I was a child.",
    "It is quite different at the weekend because I sleep longer and cook a bigger breakfast.",
)
DEFAULT_SHORT_ANSWERS = ("Not really.", "I guess so.", "Coffee.", "Yes.", "Hard to say.")


DEFAULT_VOICE_ANSWERS_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "answers"
DEFAULT_VOICE_ANSWERS = ("job", "home", "breakfast", "favorite", "commute")
DEFAULT_VOICE_SHORT_ANSWERS = ("yes", "unsure")


def _uniform(low: float, high: float) -> Delay:
    return Delay(distribution="uniform", low=low, high=high, min=low, max=high)


@dataclass(frozen=True)
class Persona:
    """How a simulated participant behaves: how long it types or pauses, what it answers, when it interrupts.

    Chat callers use ``typing_delay_ms``, ``answers``, ``short_answers`` and ``typing_indicator``.
    Voice callers speak pre-rendered answers (``voice_answers_dir``: an ``answers.json`` manifest and its
    16 kHz WAV files, default ``fixtures/answers``; ``voice_answers`` / ``voice_short_answers``: manifest
    ids), wait for the interviewer to finish, then ``think_ms`` (or, with ``pause_probability``, a longer
    ``pause_ms``) before speaking; with ``barge_in_probability`` they instead start speaking
    ``barge_in_after_ms`` after the interviewer's voice begins, over it. ``short_answer_ratio`` is shared.
    """

    typing_delay_ms: Delay = field(default_factory=Delay)
    answers: tuple[str, ...] = DEFAULT_ANSWERS
    short_answers: tuple[str, ...] = DEFAULT_SHORT_ANSWERS
    short_answer_ratio: float = 0.2  # a short answer (< 6 words) usually earns a probe
    typing_indicator: bool = True  # send ``typing`` every 2 s while a delay lasts longer than that
    name: str = "default"
    # voice
    voice_answers_dir: Path = DEFAULT_VOICE_ANSWERS_DIR
    voice_answers: tuple[str, ...] = DEFAULT_VOICE_ANSWERS
    voice_short_answers: tuple[str, ...] = DEFAULT_VOICE_SHORT_ANSWERS
    think_ms: Delay = field(default_factory=lambda: _uniform(200, 800))
    pause_probability: float = 0.1
    pause_ms: Delay = field(default_factory=lambda: _uniform(1500, 3000))
    barge_in_probability: float = 0.1
    barge_in_after_ms: Delay = field(default_factory=lambda: _uniform(300, 1200))
    # synthetic participants: with a model (loadtest --llm-base-url), chat answers are written from this
    description: str | None = None

    def answer(self, rng: random.Random) -> str:
        if self.short_answers and rng.random() < self.short_answer_ratio:
            return rng.choice(self.short_answers)
        return rng.choice(self.answers)

    def voice_answer(self, rng: random.Random) -> str:
        """The id of a pre-rendered answer to speak."""
        if self.voice_short_answers and rng.random() < self.short_answer_ratio:
            return rng.choice(self.voice_short_answers)
        return rng.choice(self.voice_answers)

    def think(self, rng: random.Random) -> float:
        """Milliseconds between the interviewer's end and the caller's answer (sometimes a longer pause)."""
        if self.pause_probability and rng.random() < self.pause_probability:
            return self.pause_ms.sample(rng)
        return self.think_ms.sample(rng)

    @classmethod
    def load(cls, path: Path) -> Persona:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read persona file {path}: {exc}") from None
        return cls.from_json(data, name=path.stem, base_dir=path.parent)

    @classmethod
    def from_json(cls, data: Any, *, name: str = "custom", base_dir: Path | None = None) -> Persona:
        """``base_dir``: what a relative ``voice_answers_dir`` is relative to (the persona file's folder)."""
        if not isinstance(data, dict):
            raise ConfigError("a persona is a JSON object")
        delays = ("typing_delay_ms", "think_ms", "pause_ms", "barge_in_after_ms")
        ratios = ("short_answer_ratio", "pause_probability", "barge_in_probability")
        lists = ("answers", "short_answers", "voice_answers", "voice_short_answers")
        known = {*delays, *ratios, *lists, "typing_indicator", "name", "voice_answers_dir", "description"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"persona: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {"name": str(data.get("name", name))}
        for key in delays:
            if key in data:
                kwargs[key] = Delay.from_json(data[key], name=key)
        for key in lists:
            if key in data:
                value = data[key]
                if not isinstance(value, list) or not all(isinstance(a, str) and a.strip() for a in value):
                    raise ConfigError(f"persona: {key} must be a list of non-empty strings")
                kwargs[key] = tuple(value)
        for key in ("answers", "voice_answers"):
            if key in kwargs and not kwargs[key]:
                raise ConfigError(f"persona: {key} must not be empty")
        for key in ratios:
            if key in data:
                ratio = data[key]
                if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
                    raise ConfigError(f"persona: {key} must be a number in 0..1")
                kwargs[key] = float(ratio)
        if "typing_indicator" in data:
            kwargs["typing_indicator"] = bool(data["typing_indicator"])
        if "description" in data:
            description = data["description"]
            if not isinstance(description, str) or not description.strip() or len(description) > 4000:
                raise ConfigError("persona: description must be a non-empty text of at most 4000 characters")
            kwargs["description"] = description.strip()
        if "voice_answers_dir" in data:
            folder = data["voice_answers_dir"]
            if not isinstance(folder, str) or not folder.strip():
                raise ConfigError("persona: voice_answers_dir must be a path")
            path = Path(folder).expanduser()
            kwargs["voice_answers_dir"] = path if path.is_absolute() or base_dir is None else base_dir / path
        return cls(**kwargs)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "typing_delay_ms": self.typing_delay_ms.as_json(),
            "answers": list(self.answers),
            "short_answers": list(self.short_answers),
            "short_answer_ratio": self.short_answer_ratio,
            "typing_indicator": self.typing_indicator,
            "description": self.description,
            "voice_answers_dir": str(self.voice_answers_dir),
            "voice_answers": list(self.voice_answers),
            "voice_short_answers": list(self.voice_short_answers),
            "think_ms": self.think_ms.as_json(),
            "pause_probability": self.pause_probability,
            "pause_ms": self.pause_ms.as_json(),
            "barge_in_probability": self.barge_in_probability,
            "barge_in_after_ms": self.barge_in_after_ms.as_json(),
        }


# --- SLOs ---------------------------------------------------------------------------------------

SLO_STATS = ("p50", "p95", "p99")
SLO_MEASURES = ("join_ms", "first_message_ms", "turn_ms", "first_audio_ms", "barge_in_ms")


@dataclass(frozen=True)
class Slo:
    """``{stat}_{measure} <= threshold``, e.g. ``p95_turn_ms=900``."""

    stat: str
    measure: str
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.stat}_{self.measure}"

    @classmethod
    def parse(cls, text: str) -> Slo:
        key, sep, value = text.partition("=")
        key = key.strip()
        stat, _, measure = key.partition("_")
        if not sep or stat not in SLO_STATS or measure not in SLO_MEASURES:
            keys = ", ".join(f"{s}_{m}" for m in SLO_MEASURES for s in SLO_STATS)
            raise ConfigError(f"bad SLO {text!r}: expected KEY=MILLISECONDS with KEY one of {keys}")
        try:
            threshold = float(value)
        except ValueError:
            raise ConfigError(f"bad SLO {text!r}: {value!r} is not a number of milliseconds") from None
        if not math.isfinite(threshold) or threshold < 0:
            raise ConfigError(f"bad SLO {text!r}: the threshold must be a non-negative number")
        return cls(stat, measure, threshold)


# --- the whole configuration --------------------------------------------------------------------

CALLER_KINDS = ("chat", "voice")  # see api.loadtest.callers.caller_class
KINDS = ("auto", *CALLER_KINDS)  # auto: from each channel's type (chat with --join-urls)
CHANNEL_KINDS = {"chat": "chat", "webrtc_voice": "voice"}  # channel type → caller kind


@dataclass(frozen=True)
class LoadtestConfig:
    url: str
    api_key: str | None = None
    channel_id: str | None = None
    blueprint_id: str | None = None
    more_channel_ids: tuple[str, ...] = ()  # further channels: caller i uses channel_ids[i % len]
    callers: int = 1
    ramp_s: float = 0.0
    duration_s: float | None = None  # keep starting runs until then (else: a run budget)
    runs: int | None = None  # total runs across callers; default: one per caller
    persona: Persona = field(default_factory=Persona)
    join_urls: tuple[str, ...] | None = None  # take runs from these instead of creating them
    slos: tuple[Slo, ...] = ()
    allow_remote: bool = False
    kind: str = "auto"  # or chat / voice: must then match every channel's type
    connect_timeout_s: float = 10.0  # TCP + websocket handshake, and each REST call's connect
    request_timeout_s: float = 30.0  # a whole REST call
    read_timeout_s: float = 60.0  # nothing at all from the server for this long drops the connection
    reconnect_window_s: float = 15.0  # a dropped session tries to reconnect this long, then fails
    media_timeout_s: float = 5.0  # voice: no audio frame from the server for this long drops the connection
    max_consecutive_failures: int = 3  # a caller that failed this many sessions in a row stops
    grace_s: float = 60.0  # with duration_s: how long runs still in progress may finish
    deadline_s: float | None = None  # hard overall limit; default duration_s + grace_s, else 600
    max_turns_per_run: int = 200
    sync_start: bool = False  # callers answer only once every first session is ready
    verify: bool = True  # compare against the server's stored transcripts at the end
    verify_concurrency: int = 8
    seed: int | None = None
    # synthetic participants: the persona's description answered by this model (OpenAI-compatible)
    llm_base_url: str | None = None
    llm_api_key: str | None = field(default=None, repr=False)
    llm_model: str | None = None

    def __post_init__(self) -> None:
        if self.callers < 1:
            raise ConfigError("--callers must be at least 1")
        if self.ramp_s < 0:
            raise ConfigError("--ramp-s must not be negative")
        if self.duration_s is not None and self.runs is not None:
            raise ConfigError("give --duration-s or --runs, not both")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError("--duration-s must be positive")
        if self.runs is not None and self.runs < 1:
            raise ConfigError("--runs must be at least 1")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ConfigError("--deadline-s must be positive")
        if self.kind not in KINDS:
            raise ConfigError(f"unknown caller kind {self.kind!r}; available: {', '.join(KINDS)}")
        if self.join_urls is None:
            if not self.api_key:
                raise ConfigError("--api-key is needed to create runs (or pass --join-urls)")
            if not self.channel_id:
                raise ConfigError("--channel is needed to create runs (or pass --join-urls)")
        if self.more_channel_ids and self.join_urls is not None:
            raise ConfigError("several channels only make sense when creating runs, not with --join-urls")
        timeouts = ("connect_timeout_s", "request_timeout_s", "read_timeout_s", "reconnect_window_s", "media_timeout_s")
        for name in timeouts:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")

    @property
    def channel_ids(self) -> tuple[str, ...]:
        """Every channel runs are created on (caller ``i`` uses ``channel_ids[i % len]``)."""
        return tuple(c for c in (self.channel_id, *self.more_channel_ids) if c)

    @property
    def total_runs(self) -> int | None:
        """The run budget (None: as many as fit in the duration)."""
        if self.duration_s is not None:
            return len(self.join_urls) if self.join_urls is not None else None
        runs = self.runs if self.runs is not None else self.callers
        return min(runs, len(self.join_urls)) if self.join_urls is not None else runs

    @property
    def hard_deadline_s(self) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        if self.duration_s is not None:
            return self.duration_s + self.grace_s
        return 600.0

    def as_json(self) -> dict[str, Any]:
        """For the report: everything but the API key."""
        return {
            "url": self.url,
            "api_key": "***" if self.api_key else None,
            "channel_id": self.channel_id,
            "channel_ids": list(self.channel_ids),
            "blueprint_id": self.blueprint_id,
            "kind": self.kind,
            "callers": self.callers,
            "ramp_s": self.ramp_s,
            "duration_s": self.duration_s,
            "runs": self.total_runs,
            "join_urls": len(self.join_urls) if self.join_urls is not None else None,
            "persona": self.persona.as_json(),
            "slos": {s.key: s.threshold for s in self.slos},
            "allow_remote": self.allow_remote,
            "connect_timeout_s": self.connect_timeout_s,
            "request_timeout_s": self.request_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "reconnect_window_s": self.reconnect_window_s,
            "media_timeout_s": self.media_timeout_s,
            "max_consecutive_failures": self.max_consecutive_failures,
            "deadline_s": self.hard_deadline_s,
            "max_turns_per_run": self.max_turns_per_run,
            "sync_start": self.sync_start,
            "verify": self.verify,
            "seed": self.seed,
        }
