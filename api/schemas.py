"""Request and response bodies, as pydantic models: the single source of validation and of /openapi.json.

Request models forbid unknown fields, so a typo is a 400 naming the field
instead of a silently ignored setting. Bounds on channel settings are the
documented limits (docs/api.md).

The document must say exactly what the server accepts (an outside fuzzer,
schemathesis, holds the two to each other): integers are JSON integers (not
``true``, not ``"5"``; ``5.0`` is one), booleans are ``true``/``false``, text that
must say something has a non-space character (:data:`api.errors.NOT_BLANK`), and metadata declares
its key pattern and limits. Strings are taken as sent, not stripped: a stripped
string would no longer be the one the document's length limits were checked on.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from api.errors import EMAIL, NOT_BLANK
from api.review_models import IssueOut
from runtime.types import (
    ChannelType,
    EndReason,
    InboundCalls,
    InterviewerType,
    MessageRole,
    RunStatus,
    SessionStatus,
    SessionType,
)

_META_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
MAX_METADATA_KEYS = 50
MAX_METADATA_VALUE = 500


META_KEY_PATTERN = r"^[A-Za-z0-9_.\-]{1,40}$"


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
    for key, item in value.items():
        if not _META_KEY.match(key):
            raise ValueError(f"metadata key {key[:50]!r} must be 1-40 characters of letters, digits, '_', '.', '-'")
        if len(item) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata value for {key!r} is longer than {MAX_METADATA_VALUE} characters")
    return value


Metadata = Annotated[
    dict[str, str],
    AfterValidator(_check_metadata),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_METADATA_KEYS,
            "propertyNames": {"pattern": META_KEY_PATTERN},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
            "description": f"String values; at most {MAX_METADATA_KEYS} keys of 1-40 letters, digits, '_', '.', '-'",
        }
    ),
]


def _json_integer(value: object) -> object:
    """A JSON integer: a bool or a numeric string is not one (pydantic's lax mode takes both); 5.0 is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def int_schema(minimum: int, maximum: int) -> WithJsonSchema:
    """For a bounded :data:`JsonInt` that may be null: inside ``| None`` pydantic writes its ``ge``/``le``
    keywords into the schema untranslated, so the bounds are stated here (beside ``Field(ge=, le=)``)."""
    return WithJsonSchema({"type": "integer", "minimum": minimum, "maximum": maximum})


def _json_number(value: object) -> object:
    """A JSON number: not a bool, not a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


JsonNumber = Annotated[float, BeforeValidator(_json_number)]
JsonBool = Annotated[bool, Field(strict=True)]


Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NOT_BLANK)]
Utterance = Annotated[str, Field(min_length=1, max_length=2000, pattern=NOT_BLANK)]
E164 = r"^\+[1-9][0-9]{6,14}$"  # ITU-T E.164: +, country code, at most 15 digits in all
PhoneNumber = Annotated[str, Field(pattern=E164, max_length=16, description="E.164, e.g. +14155550100")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- blueprints --------------------------------------------------------------


QUESTION_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"


class QuestionIn(Strict):
    id: str = Field(pattern=QUESTION_ID_PATTERN, description="Stable id, used in responses and messages")
    text: Utterance
    probes: list[Utterance] = Field(
        default_factory=list, max_length=10, description="Follow-ups the researcher wrote (scripted: asked in order)"
    )
    max_probes: JsonInt = Field(1, ge=0, le=5, description="At most this many follow-ups on this question")
    objective: str | None = Field(
        None, min_length=1, max_length=2000, description="What the researcher wants to learn; follow-ups aim at it"
    )
    verbatim: JsonBool = Field(True, description="Ask word for word; false lets the AI interviewer adapt the wording")
    probe_instructions: str | None = Field(None, min_length=1, max_length=2000, description="How to follow up")


class InterviewerIn(Strict):
    type: InterviewerType = Field(InterviewerType.SCRIPTED, description="scripted (default) or llm")
    model: str | None = Field(None, min_length=1, max_length=200, description="Default: the server's --llm-model")
    instructions: str | None = Field(None, min_length=1, max_length=4000, description="Tone, persona, audience")
    avoid: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=30, description="Topics never to raise"
    )
    temperature: JsonNumber = Field(0.3, ge=0.0, le=2.0)


MAX_RESULT_SCHEMA_BYTES = 32 * 1024


def _check_result_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(json.dumps(value)) > MAX_RESULT_SCHEMA_BYTES:
        raise ValueError(f"result_schema is larger than {MAX_RESULT_SCHEMA_BYTES} bytes")
    try:
        Draft202012Validator.check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise ValueError(f"result_schema is not a valid JSON Schema at {where}: {exc.message}") from None
    if value.get("type", "object") != "object":
        raise ValueError("result_schema must describe an object (type: object)")
    return value


class BlueprintIn(Strict):
    name: Name
    greeting: Utterance
    questions: list[QuestionIn] = Field(
        min_length=1, max_length=100, description="Question ids must be unique within the blueprint"
    )
    closing: Utterance
    language: str = Field("en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
    interviewer: InterviewerIn = Field(default_factory=InterviewerIn)
    result_schema: Annotated[dict[str, Any] | None, AfterValidator(_check_result_schema)] = Field(
        None, description="JSON Schema (2020-12) of the structured result extracted from each finished interview"
    )

    @field_validator("questions")
    @classmethod
    def _unique_ids(cls, questions: list[QuestionIn]) -> list[QuestionIn]:
        seen: set[str] = set()
        for q in questions:
            if q.id in seen:
                raise ValueError(f"question ids must be unique; {q.id!r} is used twice")
            seen.add(q.id)
        return questions


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The same fields, none required: what a JSON merge patch (RFC 7396) may carry.

    Derived rather than written out, so a field added to the blueprint can be patched too. The patch
    is checked against this (unknown fields, types, limits), then the merged document against the
    full model. Only a field with a default may be null (removed, so it takes its default again):
    removing a required one could never make a valid blueprint.
    """
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        annotation = info.annotation if info.is_required() else info.annotation | None  # type: ignore[operator]
        optional = copy.copy(info)
        optional.default, optional.default_factory = None, None
        fields[field_name] = (annotation, optional)
    doc = f"A JSON merge patch (RFC 7396) of {model.__name__}: members given replace, null removes (defaulted)."
    return create_model(name, __base__=Strict, __doc__=doc, **fields)


BlueprintPatch = _partial(BlueprintIn, "BlueprintPatch")


class QuestionOut(BaseModel):
    id: str
    text: str
    probes: list[str]
    max_probes: int
    objective: str | None
    verbatim: bool
    probe_instructions: str | None


class InterviewerOut(BaseModel):
    type: InterviewerType
    model: str | None = Field(description="Frozen at publish (the server's default model if none was named)")
    instructions: str | None
    avoid: list[str]
    temperature: float
    prompt_version: str | None = Field(description="The prompt template, frozen at publish")


class BlueprintOut(BaseModel):
    id: str
    object: Literal["blueprint"]
    version: int = Field(description="The latest version")
    status: Literal["draft", "published"] = Field(description="Status of the latest version")
    published_version: int | None = Field(description="The version new runs pin; null until published")
    name: str
    greeting: str
    questions: list[QuestionOut]
    closing: str
    language: str
    interviewer: InterviewerOut
    result_schema: dict[str, Any] | None
    created_at: str
    updated_at: str


# --- channels --------------------------------------------------------------------


class ChannelSettingsIn(Strict):
    recording: JsonBool = False
    max_duration_s: JsonInt = Field(
        1800, ge=10, le=43200, description="Run length limit, from the first session's start"
    )
    idle_timeout_s: JsonInt = Field(120, ge=5, le=3600, description="Participant silence before the run ends")
    eos_silence_ms: JsonInt = Field(500, ge=200, le=3000, description="Voice: silence that ends the participant's turn")
    min_interruption_ms: JsonInt = Field(
        400, ge=100, le=3000, description="Voice: speech that interrupts the interviewer while it speaks"
    )
    filler_after_ms: JsonInt = Field(1500, ge=300, le=10000, description="Voice: say a filler if a reply takes longer")
    phone_numbers: list[PhoneNumber] = Field(
        default_factory=list,
        max_length=20,
        description="Telephony: the channel's numbers (E.164, e.g. +14155550100): calls to them reach this channel, "
        "and outbound calls are placed from the first (docs/telephony.md)",
    )
    inbound: InboundCalls = Field(
        InboundCalls.PIN,
        description="Telephony: how an incoming call finds its run: the caller keys in (or says) a run's pin, "
        "or every call is a new run of inbound_blueprint_id",
    )
    inbound_blueprint_id: str | None = Field(
        None, max_length=64, description="Telephony, inbound new_run: the published blueprint each call is a run of"
    )


class ChannelIn(Strict):
    type: ChannelType
    name: Name
    settings: ChannelSettingsIn = Field(default_factory=ChannelSettingsIn)
    metadata: Metadata = Field(default_factory=dict)


class ChannelSettingsOut(BaseModel):
    recording: bool
    max_duration_s: int
    idle_timeout_s: int
    eos_silence_ms: int
    min_interruption_ms: int
    filler_after_ms: int
    phone_numbers: list[str]
    inbound: InboundCalls
    inbound_blueprint_id: str | None


class ChannelOut(BaseModel):
    id: str
    object: Literal["channel"]
    type: ChannelType
    name: str
    settings: ChannelSettingsOut
    metadata: dict[str, str]
    created_at: str


# --- runs -----------------------------------------------------------------------------


class ParticipantIn(Strict):
    external_id: str | None = Field(None, max_length=200)
    name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320, pattern=EMAIL)
    metadata: Metadata = Field(default_factory=dict)
    phone: PhoneNumber | None = Field(None, description="E.164; POST /v1/runs/{id}/call dials it (telephony)")


def _exactly_one_of(*names: str) -> dict[str, Any]:
    """JSON Schema for 'exactly one of these is a string' (null counts as absent, as the server reads it)."""
    return {"oneOf": [{"required": [name], "properties": {name: {"type": "string"}}} for name in names]}


class RunIn(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one_of("channel_id", "connector_id"))

    blueprint_id: str = Field(min_length=1, max_length=64)
    channel_id: str | None = Field(None, max_length=64, description="Exactly one of channel_id and connector_id")
    connector_id: str | None = Field(None, max_length=64)
    participant: ParticipantIn = Field(default_factory=ParticipantIn)
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_target(self) -> RunIn:
        if (self.channel_id is None) == (self.connector_id is None):
            raise ValueError("exactly one of channel_id and connector_id is required")
        return self


class ParticipantOut(BaseModel):
    external_id: str | None
    name: str | None
    email: str | None
    phone: str | None
    metadata: dict[str, str]


class LatencyOut(BaseModel):
    network: float | None
    initial_wait: float | None
    transcriber: float | None
    eos: float | None
    eos_wait: float | None
    llm: float | None
    tts: float | None


class GenerationOut(BaseModel):
    model: str | None
    prompt_version: str | None
    action: str | None = Field(description="follow_up, next_question, rephrase, skip, end_interview, redirect")
    rule: str | None = Field(description="Set when the runtime answered a plain request itself (stop, decline, ...)")
    fallback: bool = Field(description="The model's reply was not usable: the script's step was taken")
    fallback_reason: str | None
    attempts: int | None
    ttft_ms: float | None = Field(description="Time to the model's first token")


class MessageUsageOut(BaseModel):
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float | None = Field(description="null when the model's price is not configured")
    complete: bool = Field(description="false if a cut stream did not report its usage")


class MessageOut(BaseModel):
    id: str
    object: Literal["message"]
    run_id: str
    session_id: str | None
    role: MessageRole
    content: str
    question_id: str | None
    kind: str | None
    is_filler: bool
    is_interrupted: bool
    started_at: str
    ended_at: str
    start_offset_s: float | None
    end_offset_s: float | None
    latency_breakdown: LatencyOut | None
    client_id: str | None
    generation: GenerationOut | None = Field(description="Assistant: how it was made; null for the script alone")
    usage: MessageUsageOut | None = Field(description="Assistant, from an LLM: the turn's usage (on its last message)")
    flags: list[str] = Field(description="Participant: off_topic, manipulation, abusive, distress")
    original_content: str | None = Field(
        description="Participant: the recognised text, when an approved correction is shown as content"
    )
    correction_id: str | None = Field(description="The issue (iss_...) whose approved correction is content")


class SessionOut(BaseModel):
    id: str
    object: Literal["session"]
    run_id: str
    type: SessionType
    status: SessionStatus
    started_at: str
    ended_at: str | None
    duration_s: float | None
    end_reason: str | None
    user_number: str | None = Field(description="A phone call's caller (inbound) or callee (outbound), E.164")


class ResponseOut(BaseModel):
    question_id: str
    question: str
    answer: str
    original_answer: str | None = Field(
        description="The answer as recognised, when approved corrections changed it; else null"
    )
    message_ids: list[str]
    probes_asked: int
    declined: bool = Field(description="The participant chose not to answer")
    flags: list[str] = Field(description="Flags on the participant's messages to this question")


class RunUsageOut(BaseModel):
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float | None = Field(description="null once any call's price was unknown")


class ResultOut(BaseModel):
    status: Literal["pending", "ready", "failed"]
    summary: dict[str, Any] | None = Field(description="Researcher-facing summary, per question and overall")
    result: dict[str, Any] | None = Field(description="Validated against the blueprint's result_schema")
    result_error: str | None
    analysed_at: str | None


class StageStats(BaseModel):
    p50: float | None
    p95: float | None
    count: int


class RunOut(BaseModel):
    id: str
    object: Literal["run"]
    blueprint_id: str
    blueprint_version: int
    channel_id: str | None
    connector_id: str | None
    participant: ParticipantOut
    metadata: dict[str, str]
    status: RunStatus
    end_reason: EndReason | None
    join_url: str
    created_at: str
    join_expires_at: str
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    usage: RunUsageOut
    erased_at: str | None = Field(description="When the participant's data was erased (the run is a tombstone)")
    erased_by: str | None = Field(description="Who asked: the API key (key_...), or retention")
    annotation: Literal["correct", "incorrect", "critical"] | None = Field(
        description="A reviewer's verdict on the run (PATCH /v1/runs/{id})"
    )
    annotated_by: str | None = Field(description="The API key that set the annotation")
    annotated_at: str | None
    pin: str | None = Field(description="Telephony: the digits a caller keys in to reach this run")
    latency: dict[str, StageStats] = Field(description="p50/p95 per latency stage over assistant messages (ms)")
    blueprint: BlueprintOut | None = Field(None, description="With expand=blueprint (the pinned version)")
    channel: ChannelOut | None = Field(None, description="With expand=channel")
    connector: dict[str, Any] | None = Field(None, description="With expand=connector (connectors: later release)")
    sessions: list[SessionOut] | None = Field(None, description="With expand=sessions")
    transcript: list[MessageOut] | None = Field(None, description="With expand=transcript")
    responses: list[ResponseOut] | None = Field(None, description="With expand=responses")
    analysis: dict[str, Any] | None = Field(None, description="With expand=analysis")
    result: ResultOut | None = Field(None, description="With expand=result: the analysis job's output")
    issues: list[IssueOut] | None = Field(None, description="With expand=issues: every issue, newest first")


class EventOut(BaseModel):
    object: Literal["event"]
    run_id: str
    seq: int
    type: str
    created_at: str
    data: dict[str, Any]


class ListOut(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool


class ErrorDetail(BaseModel):
    param: str | None = Field(description="The field, as a dotted path (questions.0.text)")
    message: str


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None
    details: list[ErrorDetail] | None = Field(None, description="Validation errors: every problem found")


class ErrorOut(BaseModel):
    error: ErrorBody


class HealthOut(BaseModel):
    status: Literal["ok", "draining"] = Field(
        description="draining (HTTP 503): this process is handing its interviews over; route new ones elsewhere"
    )
    version: str
    process: str = Field(description="This server process (host, pid and a random part): which one answered")
    live_runs: int = Field(description="Runs this process acts for now (holds the lease of)")
    loop_lag_ms: dict[str, float | None] = Field(description="Event-loop lag over the last minute: p50, p99, max")


class KeyOut(BaseModel):
    api_key: str
