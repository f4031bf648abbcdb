"""Transcript files as a researcher or a video player sees them."""

from __future__ import annotations

import json
import re

import pytest

from runtime.transcript import MEDIA_TYPES, TranscriptFormat, render_transcript
from runtime.types import Message, MessageRole, UtteranceKind

T0 = 1_700_000_000.0  # run start
TIMING = re.compile(r"^(\d{2}):(\d{2}):(\d{2})([.,])(\d{3}) --> (\d{2}):(\d{2}):(\d{2})([.,])(\d{3})$")


def msg(
    n: int,
    role: MessageRole,
    content: str,
    start: float,
    end: float | None = None,
    *,
    interrupted: bool = False,
) -> Message:
    """A message ``start``..``end`` seconds after T0; ``end=None`` makes it instantaneous, like chat."""
    return Message(
        id=f"msg_{n}",
        run_id="run_1",
        session_id="ses_1",
        role=role,
        content=content,
        question_id="q1" if role is MessageRole.ASSISTANT else None,
        kind=UtteranceKind.QUESTION if role is MessageRole.ASSISTANT else None,
        is_filler=False,
        is_interrupted=interrupted,
        started_at=T0 + start,
        ended_at=T0 + (start if end is None else end),
        latency=None,
    )


A, U = MessageRole.ASSISTANT, MessageRole.USER


def render(fmt: TranscriptFormat, messages: list[Message], run_started_at: float | None = T0) -> str:
    return render_transcript(fmt, run_id="run_1", run_started_at=run_started_at, messages=messages)


def seconds(groups: tuple[str, ...]) -> tuple[float, float]:
    h1, m1, s1, _, ms1, h2, m2, s2, _, ms2 = groups
    return (
        int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000,
        int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000,
    )


def parse_cues(text: str, *, header: str | None) -> list[tuple[int, float, float, list[str]]]:
    """A strict reader: blocks split at blank lines must each be `number / timing / text lines`."""
    blocks = text.rstrip("\n").split("\n\n")
    if header is not None:
        assert blocks.pop(0) == header
    cues = []
    for block in blocks:
        number, timing, *payload = block.split("\n")
        match = TIMING.match(timing)
        assert match, f"bad timing line {timing!r} in block {block!r}"
        assert payload, f"empty cue {block!r}"
        assert not any("-->" in line for line in payload)
        start, end = seconds(match.groups())
        cues.append((int(number), start, end, payload))
    return cues


def test_vtt_cues_are_numbered_in_order_with_voice_timings() -> None:
    messages = [
        msg(1, A, "Hello, what brought you here?", 1.0, 3.25),
        msg(2, MessageRole.EVENT, "session.started", 0.5),
        msg(3, U, "A friend told me.", 4.5, 6.0),
        msg(4, MessageRole.TOOL, "lookup()", 6.1),
        msg(5, A, "Thanks.", 3661.5, 3662.125),
    ]
    out = render(TranscriptFormat.VTT, messages)
    assert out.startswith("WEBVTT\n\n")
    assert "00:00:01.000 --> 00:00:03.250" in out
    assert "01:01:01.500 --> 01:01:02.125" in out
    cues = parse_cues(out, header="WEBVTT")
    assert [(n, start, end) for n, start, end, _ in cues] == [(1, 1.0, 3.25), (2, 4.5, 6.0), (3, 3661.5, 3662.125)]
    assert [payload for *_, payload in cues] == [
        ["<v Interviewer>Hello, what brought you here?"],
        ["<v Participant>A friend told me."],
        ["<v Interviewer>Thanks."],
    ]


def test_vtt_escapes_markup_and_arrows() -> None:
    out = render(TranscriptFormat.VTT, [msg(1, U, "<script>alert('x')</script> AT&T --> done", 1.0, 2.0)])
    assert "<script>" not in out
    [(_, _, _, payload)] = parse_cues(out, header="WEBVTT")
    assert payload == ["<v Participant>&lt;script&gt;alert('x')&lt;/script&gt; AT&amp;T → done"]


def test_blank_lines_in_text_do_not_split_a_cue() -> None:
    text = "first line\n\n  \r\nsecond line\r\n\nthird -->\n"
    for fmt, header in ((TranscriptFormat.VTT, "WEBVTT"), (TranscriptFormat.SRT, None)):
        cues = parse_cues(render(fmt, [msg(1, U, text, 1.0, 2.0), msg(2, A, "Next.", 3.0, 4.0)]), header=header)
        assert len(cues) == 2
        assert cues[0][3][1:] == ["second line", "third →"]


def test_chat_cues_last_until_next_message_within_one_to_five_seconds() -> None:
    messages = [
        msg(1, A, "Q1", 10.0),
        msg(2, U, "quick", 12.5),  # previous cue: 2.5 s, the gap
        msg(3, A, "Q2", 12.7),  # previous cue: 0.2 s gap, stretched to 1 s
        msg(4, U, "slow", 60.0),  # previous cue: 47.3 s gap, capped at 5 s
        msg(5, A, "Bye", 61.0),  # last cue: 5 s
    ]
    cues = parse_cues(render(TranscriptFormat.VTT, messages), header="WEBVTT")
    assert [(start, end) for _, start, end, _ in cues] == [
        (10.0, 12.5),
        (12.5, 13.5),
        (12.7, 17.7),
        (60.0, 61.0),
        (61.0, 66.0),
    ]


def test_cues_follow_start_time_and_never_go_negative() -> None:
    # Stored order is not start order when a participant interrupts; a clock skew can put a message before the run.
    messages = [msg(1, A, "Long question", 5.0, 9.0), msg(2, U, "early", -2.0, 1.0), msg(3, U, "barge", 7.0, 8.0)]
    cues = parse_cues(render(TranscriptFormat.VTT, messages), header="WEBVTT")
    assert [(n, start, end) for n, start, end, _ in cues] == [(1, 0.0, 1.0), (2, 5.0, 9.0), (3, 7.0, 8.0)]


def test_without_run_start_the_first_message_is_time_zero() -> None:
    messages = [msg(1, A, "Hi", 100.0, 101.5), msg(2, U, "Hello", 102.0, 103.0)]
    cues = parse_cues(render(TranscriptFormat.VTT, messages, run_started_at=None), header="WEBVTT")
    assert [(start, end) for _, start, end, _ in cues] == [(0.0, 1.5), (2.0, 3.0)]


def test_srt_numbering_timestamps_and_speaker_prefix() -> None:
    messages = [
        msg(1, A, "How was it?", 1.0, 2.5),
        msg(2, MessageRole.EVENT, "session.ended", 2.6),
        msg(3, U, "Good --> mostly", 3.0, 4.004),
    ]
    out = render(TranscriptFormat.SRT, messages)
    assert out.startswith("1\n00:00:01,000 --> 00:00:02,500\nInterviewer: How was it?\n\n2\n")
    assert "00:00:03,000 --> 00:00:04,004" in out
    cues = parse_cues(out, header=None)
    assert [n for n, *_ in cues] == [1, 2]
    assert cues[1][3] == ["Participant: Good → mostly"]


def test_txt_shows_offsets_speakers_and_interruptions() -> None:
    messages = [
        msg(1, A, "What do you do?", 5.4, 8.0, interrupted=True),
        msg(2, MessageRole.TOOL, "internal", 6.0),
        msg(3, U, "I teach.", 65.0, 66.0),
        msg(4, A, "Thank you.", 3723.9, 3725.0),
    ]
    out = render(TranscriptFormat.TXT, messages)
    assert out.splitlines()[0] == "Transcript of run run_1"
    assert "[00:05] Interviewer: What do you do? [interrupted]" in out
    assert "[01:05] Participant: I teach." in out
    assert "[1:02:03] Interviewer: Thank you." in out
    assert "internal" not in out


def test_json_keeps_every_message_in_stored_order() -> None:
    messages = [
        msg(1, A, "Café <b>?", 1.0, 2.0),
        msg(2, MessageRole.EVENT, "session.started", 0.5),
        msg(3, U, "Oui", 3.0, 4.0),
    ]
    out = render(TranscriptFormat.JSON, messages)
    assert "Café" in out  # not \u-escaped
    body = json.loads(out)
    assert body["run_id"] == "run_1"
    assert body["object"] == "transcript"
    assert [m["id"] for m in body["messages"]] == ["msg_1", "msg_2", "msg_3"]
    assert [m["role"] for m in body["messages"]] == ["assistant", "event", "user"]
    assert body["messages"][0]["content"] == "Café <b>?"
    assert body["messages"][2]["start_offset_s"] == 3.0


def test_empty_run_renders_valid_files() -> None:
    assert parse_cues(render(TranscriptFormat.VTT, []), header="WEBVTT") == []
    assert render(TranscriptFormat.SRT, []) == ""
    assert json.loads(render(TranscriptFormat.JSON, []))["messages"] == []


def test_media_types_cover_every_format() -> None:
    assert set(MEDIA_TYPES) == set(TranscriptFormat)
    assert MEDIA_TYPES[TranscriptFormat.VTT] == "text/vtt; charset=utf-8"
    assert MEDIA_TYPES[TranscriptFormat.SRT] == "application/x-subrip; charset=utf-8"


@pytest.mark.parametrize("fmt", list(TranscriptFormat))
def test_format_may_be_given_by_name(fmt: TranscriptFormat) -> None:
    messages = [msg(1, A, "Hi", 1.0, 2.0)]
    as_name = render_transcript(fmt.value, run_id="run_1", run_started_at=T0, messages=messages)  # type: ignore[arg-type]
    assert as_name == render(fmt, messages)


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        render_transcript("docx", run_id="run_1", run_started_at=T0, messages=[])  # type: ignore[arg-type]
