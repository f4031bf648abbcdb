"""The vocabulary every other module builds on: states, roles, and domain records.

This module is a leaf: it imports nothing from the project. Records are frozen
dataclasses so that the sans-I/O state machines can pass them around without
worrying about aliasing; the storage layer turns rows into them and the API
turns them into JSON.

Times are wall-clock seconds since the epoch (``float``), because they are
stored and compared across process restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum as StrEnum  # re-exported: every state enum here is a StrEnum
from typing import Any

JSON = dict[str, Any]


class ChannelType(StrEnum):
    WEBRTC_VOICE = "webrtc_voice"
    TELEPHONY = "telephony"
    CHAT = "chat"
    CUSTOM = "custom"


class BlueprintStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"


class RunStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED)


class EndReason(StrEnum):
    COMPLETED = "completed"
    PARTICIPANT_ENDED = "participant_ended"  # the participant asked to stop; the closing was said
    PARTICIPANT_LEFT = "participant_left"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION = "max_duration"
    CANCELLED = "cancelled"
    JOIN_EXPIRED = "join_expired"
    ERROR = "error"
    # phone calls we placed that never became an interview (docs/telephony.md)
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    VOICEMAIL = "voicemail"  # an answering machine picked up
    FAILED = "failed"  # the call could not be placed or connected

    @property
    def run_status(self) -> RunStatus:
        """The terminal status a run takes when it ends for this reason."""
        if self is EndReason.CANCELLED:
            return RunStatus.CANCELLED
        if self in _FAILING:
            return RunStatus.FAILED
        return RunStatus.COMPLETED


_FAILING = frozenset(
    {
        EndReason.JOIN_EXPIRED,
        EndReason.ERROR,
        EndReason.BUSY,
        EndReason.NO_ANSWER,
        EndReason.VOICEMAIL,
        EndReason.FAILED,
    }
)


class SessionType(StrEnum):
    """How the participant was connected (as in HappyRobot's session object)."""

    TEXT = "text"  # the chat websocket
    VOICE = "voice"  # WebRTC, or the custom media socket
    INBOUND = "inbound"  # a phone call the participant made
    OUTBOUND = "outbound"  # a phone call we placed to the participant


class InboundCalls(StrEnum):
    """How a telephony channel matches an incoming call to a run."""

    PIN = "pin"  # the caller keys in (or says) the PIN of an existing run
    NEW_RUN = "new_run"  # every call is a new run of the channel's inbound blueprint


class SessionStatus(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class SessionEndReason(StrEnum):
    """Why one connection ended (the run may go on)."""

    PARTICIPANT_LEFT = "participant_left"  # socket closed or dropped
    REPLACED = "replaced"  # a newer connection to the same run took over
    RUN_ENDED = "run_ended"  # the run ended while the connection was live
    SERVER_RESTART = "server_restart"  # the process died with the session live, or handed the run over (drain)


@dataclass(frozen=True)
class Lease:
    """A server process's right to act for a run in progress (runtime/storage/leases.py).

    ``epoch`` is the fencing token: it grows with every change of hands, and a write made under a lease
    is refused (:class:`~runtime.errors.LeaseLost`) unless the run's row still names this owner and epoch.
    """

    run_id: str
    owner: str
    epoch: int


class MessageRole(StrEnum):
    ASSISTANT = "assistant"
    USER = "user"
    TOOL = "tool"
    EVENT = "event"


class UtteranceKind(StrEnum):
    """What an assistant utterance is for; stored so transcripts can be grouped."""

    GREETING = "greeting"
    QUESTION = "question"
    PROBE = "probe"  # a follow-up on the current question
    REPHRASE = "rephrase"  # the current question in other words (the participant asked what it meant)
    ACKNOWLEDGEMENT = "acknowledgement"  # voice: a brief neutral reaction spoken before the next step
    REDIRECT = "redirect"  # a polite return to the interview after an off-topic or manipulative answer
    REASK = "reask"  # the current question again: it was cut off before the participant heard it
    RESUME = "resume"
    REMINDER = "reminder"
    CLOSING = "closing"
    FILLER = "filler"

    @property
    def asks(self) -> bool:
        """Whether this utterance puts a question to the participant (what an answer answers)."""
        return self in _ASKING


_ASKING = frozenset(
    {
        UtteranceKind.QUESTION,
        UtteranceKind.PROBE,
        UtteranceKind.REPHRASE,
        UtteranceKind.REASK,
        UtteranceKind.RESUME,
        UtteranceKind.REMINDER,
    }
)


class EventType(StrEnum):
    RUN_CREATED = "run.created"
    RUN_STARTED = "run.started"
    SESSION_STARTED = "session.started"
    SESSION_ENDED = "session.ended"
    MESSAGE_CREATED = "message.created"
    MESSAGE_DELTA = "message.delta"
    MESSAGE_UPDATED = "message.updated"  # voice: timing, latency, or an interruption known after sending
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_RESULT_READY = "run.result_ready"  # the analysis job finished: summary (and result) stored
    RUN_ERASED = "run.erased"  # the participant's data was deleted; the run is kept as a tombstone
    # review (runtime/review.py): after the fact, by researchers
    RUN_ANNOTATED = "run.annotated"
    RUN_ISSUE_CREATED = "run.issue.created"
    RUN_ISSUE_UPDATED = "run.issue.updated"

    @classmethod
    def for_terminal(cls, status: RunStatus) -> EventType:
        return {
            RunStatus.COMPLETED: cls.RUN_COMPLETED,
            RunStatus.CANCELLED: cls.RUN_CANCELLED,
            RunStatus.FAILED: cls.RUN_FAILED,
        }[status]


TERMINAL_EVENTS = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED})


def is_last_event(event: Event) -> bool:
    """A run's last event: ``run.result_ready``, or the end of a run that never started (nothing to analyse)."""
    if event.type in (EventType.RUN_RESULT_READY, EventType.RUN_ERASED):
        return True
    return event.type in TERMINAL_EVENTS and event.data.get("started_at") is None


# --- blueprints -------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    probes: tuple[str, ...] = ()
    max_probes: int = 1
    objective: str | None = None  # what the researcher wants to learn: follow-ups aim at it
    verbatim: bool = True  # asked word for word; False lets the interviewer adapt the wording
    probe_instructions: str | None = None


class InterviewerType(StrEnum):
    SCRIPTED = "scripted"
    LLM = "llm"


@dataclass(frozen=True)
class InterviewerSettings:
    """Who moderates the interview. Frozen with the published version: every run of it gets the same."""

    type: InterviewerType = InterviewerType.SCRIPTED
    model: str | None = None  # resolved to the server's default model at publish
    instructions: str | None = None  # tone, persona, audience
    avoid: tuple[str, ...] = ()  # topics never to raise
    temperature: float = 0.3
    prompt_version: str | None = None  # the prompt template, set at publish


@dataclass(frozen=True)
class BlueprintContent:
    """One version of an interview guide: what the interviewer says, in order."""

    name: str
    greeting: str
    questions: tuple[Question, ...]
    closing: str
    language: str = "en"
    interviewer: InterviewerSettings = field(default_factory=InterviewerSettings)
    result_schema: JSON | None = None  # JSON Schema of the structured result wanted from each interview


@dataclass(frozen=True)
class Blueprint:
    id: str
    org_id: str
    version: int  # the latest version
    status: BlueprintStatus  # of the latest version
    published_version: int | None
    content: BlueprintContent
    created_at: float
    updated_at: float


# --- channels ---------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSettings:
    """Per-channel limits. Bounds are enforced by the API schema (see docs/api.md)."""

    recording: bool = False
    max_duration_s: int = 1800
    idle_timeout_s: int = 120
    # voice turn-taking
    eos_silence_ms: int = 500
    min_interruption_ms: int = 400
    filler_after_ms: int = 1500
    # telephony: the channel's numbers (E.164), and how an incoming call finds its run
    phone_numbers: tuple[str, ...] = ()
    inbound: InboundCalls = InboundCalls.PIN
    inbound_blueprint_id: str | None = None  # inbound new_run: the (published) blueprint each call is a run of


@dataclass(frozen=True)
class Channel:
    id: str
    org_id: str
    type: ChannelType
    name: str
    settings: ChannelSettings
    metadata: JSON
    created_at: float


# --- runs, sessions, messages ----------------------------------------------


@dataclass(frozen=True)
class Participant:
    external_id: str | None = None
    name: str | None = None
    email: str | None = None
    metadata: JSON = field(default_factory=dict)
    phone: str | None = None  # E.164; a telephony run's outbound call dials it


@dataclass(frozen=True)
class Position:
    """Where an interview stands; persisted with every assistant message.

    ``question_index`` is the question being asked (``-1`` before the greeting,
    ``len(questions)`` once the closing has been said); ``probes_used`` counts
    probes asked for that question.
    """

    question_index: int = -1
    probes_used: int = 0
    reminded: bool = False  # whether the idle reminder for this turn was given

    @property
    def started(self) -> bool:
        return self.question_index >= 0


@dataclass(frozen=True)
class RunUsage:
    """LLM use of one run, interview and analysis together."""

    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = 0.0  # None once any call's price was unknown


@dataclass(frozen=True)
class Run:
    id: str
    org_id: str
    blueprint_id: str
    blueprint_version: int
    channel_id: str | None
    connector_id: str | None
    participant: Participant
    metadata: JSON
    status: RunStatus
    end_reason: EndReason | None
    join_token: str
    position: Position
    created_at: float
    join_expires_at: float
    started_at: float | None
    ended_at: float | None
    idle_since: float | None  # start of the participant's current silent turn
    last_seq: int
    usage: RunUsage = field(default_factory=RunUsage)
    analysed_at: float | None = None  # when the analysis job stored its summary (and result)
    erased_at: float | None = None  # the participant's data was deleted then (a tombstone since)
    erased_by: str | None = None  # the API key that asked (key_...), or "retention"
    pin: str | None = None  # telephony: what a caller keys in to reach this run (unique among the channel's open runs)

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it: ended, and analysed if an interview took place (or erased)."""
        if self.erased_at is not None:
            return True
        return self.status.is_terminal and (self.started_at is None or self.analysed_at is not None)


@dataclass(frozen=True)
class Session:
    id: str
    run_id: str
    type: SessionType
    status: SessionStatus
    started_at: float
    ended_at: float | None
    end_reason: SessionEndReason | None
    user_number: str | None = None  # a phone call's caller (inbound) or callee (outbound), E.164

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


LATENCY_STAGES = ("network", "initial_wait", "transcriber", "eos", "eos_wait", "llm", "tts")


@dataclass(frozen=True)
class LatencyBreakdown:
    """Milliseconds per stage for one assistant message; None where a stage did not occur.

    Definitions live in docs/latency.md.
    """

    network: float | None = None
    initial_wait: float | None = None
    transcriber: float | None = None
    eos: float | None = None
    eos_wait: float | None = None
    llm: float | None = None
    tts: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in LATENCY_STAGES}


@dataclass(frozen=True)
class Message:
    id: str
    run_id: str
    session_id: str | None
    role: MessageRole
    content: str
    question_id: str | None
    kind: UtteranceKind | None
    is_filler: bool
    is_interrupted: bool
    started_at: float
    ended_at: float
    latency: LatencyBreakdown | None
    client_id: str | None = None
    # How an assistant message was made (model, prompt_version, action, fallback, usage, ttft_ms) and
    # flags on a participant message (off_topic, manipulation, abusive); see docs/interviewer.md.
    meta: JSON = field(default_factory=dict)
    # An approved transcriber correction (runtime/review.py) is read in place of ``content``, which it keeps here;
    # never stored on the message itself (the record stays as recognised), only set on the way out to readers.
    original_content: str | None = None
    correction_id: str | None = None  # the issue (iss_...) whose correction this is


@dataclass(frozen=True)
class Event:
    run_id: str
    seq: int
    type: EventType
    created_at: float
    data: JSON
