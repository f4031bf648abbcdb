"""A run's transcript as a downloadable file: JSON for programs, text for reading, WebVTT/SRT for players.

JSON is the API's message shape, every role included, so nothing is lost. The
other formats hold only what was said aloud or typed (assistant and user
messages), ordered by when it started, with times as offsets from the run's
start so that cues line up with the recording.

Messages come as readers see them: a participant message with an approved
correction (runtime/review.py) shows the correction; JSON keeps the recognised
text beside it (``original_content``) and plain text marks the line
``[corrected]``; captions (VTT, SRT) show the corrected words alone.

Cue formats are parsed line by line, so message text is cleaned before it goes
in: a blank line would end a cue early and ``-->`` would read as a timing line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.serialize import message_json
from runtime.types import Message, MessageRole, StrEnum


class TranscriptFormat(StrEnum):
    JSON = "json"
    TXT = "txt"
    VTT = "vtt"
    SRT = "srt"


MEDIA_TYPES: dict[TranscriptFormat, str] = {
    TranscriptFormat.JSON: "application/json",
    TranscriptFormat.TXT: "text/plain; charset=utf-8",
    TranscriptFormat.VTT: "text/vtt; charset=utf-8",
    TranscriptFormat.SRT: "application/x-subrip; charset=utf-8",
}

SPEAKERS = {MessageRole.ASSISTANT: "Interviewer", MessageRole.USER: "Participant"}

# Chat messages have no duration; their cues stay up until the next line, within these bounds.
MIN_CUE_MS = 1_000
MAX_CUE_MS = 5_000


def render_transcript(
    fmt: TranscriptFormat, *, run_id: str, run_started_at: float | None, messages: Sequence[Message]
) -> str:
    """Render ``messages`` (in stored order) as one file of format ``fmt``; raises ValueError for unknown formats."""
    fmt = TranscriptFormat(fmt)
    if fmt is TranscriptFormat.JSON:
        body = {
            "run_id": run_id,
            "object": "transcript",
            "messages": [message_json(m, run_started_at) for m in messages],
        }
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    lines = _spoken_lines(messages, run_started_at)
    if fmt is TranscriptFormat.TXT:
        return _txt(run_id, lines)
    if fmt is TranscriptFormat.VTT:
        return _vtt(lines)
    return _srt(lines)


# --- spoken lines -------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    speaker: str
    text: str  # cleaned: no blank lines, no leading/trailing whitespace
    start_ms: int  # offset from the run's start
    end_ms: int  # always >= start_ms
    interrupted: bool
    corrected: bool = False  # a reviewer's approved correction is shown


def _spoken_lines(messages: Sequence[Message], run_started_at: float | None) -> list[_Line]:
    """The assistant/user messages with text, sorted by start, each with a cue interval.

    Without a run start the first message is the origin; offsets are clamped at
    zero because cue formats cannot express negative times.
    """
    spoken = sorted((m for m in messages if m.role in SPEAKERS and _clean(m.content)), key=lambda m: m.started_at)
    if not spoken:
        return []
    origin = run_started_at if run_started_at is not None else messages[0].started_at

    def ms(ts: float) -> int:
        return max(0, round((ts - origin) * 1000))

    lines = []
    for i, m in enumerate(spoken):
        start = ms(m.started_at)
        if m.ended_at > m.started_at:
            end = ms(m.ended_at)
        else:
            gap = ms(spoken[i + 1].started_at) - start if i + 1 < len(spoken) else MAX_CUE_MS
            end = start + min(max(gap, MIN_CUE_MS), MAX_CUE_MS)
        corrected = m.original_content is not None
        lines.append(_Line(SPEAKERS[m.role], _clean(m.content), start, max(end, start), m.is_interrupted, corrected))
    return lines


def _clean(text: str) -> str:
    """Keep the text's line breaks but drop blank lines, which end a cue in VTT and SRT."""
    rows = (row.strip() for row in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(row for row in rows if row)


def _cue_safe(text: str) -> str:
    """Stop ``-->`` in what someone said from being read as a cue timing line."""
    return text.replace("-->", "→")


# --- formats ------------------------------------------------------------------


def _txt(run_id: str, lines: Sequence[_Line]) -> str:
    blocks = [f"Transcript of run {run_id}"]
    for line in lines:
        suffix = (" [interrupted]" if line.interrupted else "") + (" [corrected]" if line.corrected else "")
        blocks.append(f"[{_clock(line.start_ms)}] {line.speaker}: {line.text}{suffix}")
    return "\n\n".join(blocks) + "\n"


def _clock(ms: int) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on: short for the usual interview, unambiguous for long ones."""
    hours, rest = divmod(ms // 1000, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def _vtt(lines: Sequence[_Line]) -> str:
    cues = ["WEBVTT"]
    for n, line in enumerate(lines, start=1):
        timing = f"{_timestamp(line.start_ms, '.')} --> {_timestamp(line.end_ms, '.')}"
        cues.append(f"{n}\n{timing}\n<v {line.speaker}>{_vtt_escape(_cue_safe(line.text))}")
    return "\n\n".join(cues) + "\n"


def _vtt_escape(text: str) -> str:
    """Cue text is markup in WebVTT: escape it so that ``<script>`` or ``AT&T`` show as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _srt(lines: Sequence[_Line]) -> str:
    cues = []
    for n, line in enumerate(lines, start=1):
        timing = f"{_timestamp(line.start_ms, ',')} --> {_timestamp(line.end_ms, ',')}"
        cues.append(f"{n}\n{timing}\n{line.speaker}: {_cue_safe(line.text)}")
    return "".join(cue + "\n\n" for cue in cues)


def _timestamp(ms: int, separator: str) -> str:
    """``HH:MM:SS.mmm`` (VTT) or ``HH:MM:SS,mmm`` (SRT)."""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"
