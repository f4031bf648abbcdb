"""A model's proposal for the next step, read from a tool call or a JSON object, whole or streamed.

The model is asked to call ``respond`` with ``{"action", "text", "flag"?, "question"?}``
(or, where the server has no tools, to answer with that JSON object). What comes back
is read leniently, because weak models and servers differ: tool-call arguments, a JSON
object in the text (with or without code fences, Hermes-style ``<tool_call>`` tags, a
``respond(...)`` wrapper), common synonyms for the keys and the actions. Anything that
still does not parse is a :class:`DecisionError`, and the caller retries or falls back.

:class:`FieldReader` reads ``action`` and ``text`` out of JSON text while it streams, so
a reply's words can be previewed and spoken before the object is complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from runtime.types import StrEnum


class Action(StrEnum):
    FOLLOW_UP = "follow_up"  # one open follow-up question on the current question
    NEXT_QUESTION = "next_question"  # a brief neutral acknowledgement, then the next question
    REPHRASE = "rephrase"  # the current question in other words
    SKIP = "skip"  # the participant declined: acknowledge and move on
    END_INTERVIEW = "end_interview"  # the participant wants to stop
    REDIRECT = "redirect"  # off-topic or manipulative: politely back to the current question


_ACTION_SYNONYMS = {
    "follow_up": Action.FOLLOW_UP,
    "followup": Action.FOLLOW_UP,
    "follow-up": Action.FOLLOW_UP,
    "probe": Action.FOLLOW_UP,
    "ask_follow_up": Action.FOLLOW_UP,
    "next_question": Action.NEXT_QUESTION,
    "next": Action.NEXT_QUESTION,
    "move_on": Action.NEXT_QUESTION,
    "acknowledge": Action.NEXT_QUESTION,
    "rephrase": Action.REPHRASE,
    "clarify": Action.REPHRASE,
    "skip": Action.SKIP,
    "decline": Action.SKIP,
    "end_interview": Action.END_INTERVIEW,
    "end": Action.END_INTERVIEW,
    "stop": Action.END_INTERVIEW,
    "redirect": Action.REDIRECT,
    "off_topic": Action.REDIRECT,
}
_TEXT_KEYS = ("text", "message", "reply", "response", "utterance", "content")
_ACTION_KEYS = ("action", "decision", "type", "next_step")
FLAGS = ("off_topic", "manipulation", "abusive", "distress")


def action_named(name: object) -> Action | None:
    if not isinstance(name, str):
        return None
    return _ACTION_SYNONYMS.get(name.strip().lower().replace(" ", "_"))


@dataclass(frozen=True)
class Decision:
    action: Action
    text: str
    flag: str | None = None
    question: str | None = None  # the next question in the interviewer's words (non-verbatim questions only)


class DecisionError(ValueError):
    """The model's output is not a usable decision; the message says why (it goes back to the model once)."""


def parse_decision(arguments: str | None, content: str) -> Decision:
    """The decision in a tool call's ``arguments`` or, failing that, in the message ``content``."""
    errors: list[str] = []
    for source in (arguments, content):
        if not source or not source.strip():
            continue
        try:
            return _from_object(_json_object(source))
        except DecisionError as exc:
            errors.append(str(exc))
    if not errors:
        raise DecisionError("no tool call and no text")
    raise DecisionError(errors[0])


def _json_object(text: str) -> dict[str, Any]:
    text = re.sub(r"<think>.*?(</think>|$)", "", text, flags=re.DOTALL | re.IGNORECASE).strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        if start < 0:
            raise DecisionError("expected a JSON object with 'action' and 'text'") from None
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError as exc:
            raise DecisionError(f"the JSON object is malformed: {exc.msg}") from None
    if isinstance(value, dict) and isinstance(value.get("arguments"), dict | str):  # {"name": ..., "arguments": {...}}
        inner = value["arguments"]
        value = json.loads(inner) if isinstance(inner, str) else inner
    if not isinstance(value, dict):
        raise DecisionError("expected a JSON object with 'action' and 'text'")
    return value


def _from_object(obj: dict[str, Any]) -> Decision:
    raw_action = next((obj[k] for k in _ACTION_KEYS if k in obj), None)
    action = action_named(raw_action)
    if action is None:
        allowed = ", ".join(a.value for a in Action)
        raise DecisionError(f"'action' must be one of {allowed}; got {str(raw_action)[:40]!r}")
    text = next((obj[k] for k in _TEXT_KEYS if isinstance(obj.get(k), str)), None)
    if text is None:
        raise DecisionError("'text' (what to say) is missing")
    flag = obj.get("flag")
    flag = flag if isinstance(flag, str) and flag in FLAGS else None
    question = obj.get("question") or obj.get("next_question")
    return Decision(action, text, flag, question if isinstance(question, str) else None)


class FieldReader:
    """Streams the string values of a flat JSON object's keys as its text arrives.

    ``feed`` takes raw JSON text in any pieces and returns the new characters of the
    ``text`` value (decoded); :attr:`action` is set as soon as that value is complete.
    Nested values are skipped; text before the first ``{`` (a code fence, a tag) is ignored.
    """

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # complete string values, by key
        self._state = "before"  # before, key?, key, colon, value?, string, other, after
        self._key = ""
        self._current = ""
        self._escape = ""  # a pending backslash escape
        self._depth = 0
        self._in_nested_string = False

    @property
    def action(self) -> Action | None:
        return next((action_named(self.values[k]) for k in _ACTION_KEYS if k in self.values), None)

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            piece = self._step(ch)
            if piece:
                out.append(piece)
        return "".join(out)

    def _step(self, ch: str) -> str:
        state = self._state
        if state == "before":
            if ch == "{":
                self._state = "key?"
            return ""
        if state == "key?":
            if ch == '"':
                self._state, self._key = "key", ""
            elif ch == "}":
                self._state = "after"
            return ""
        if state == "key":
            if self._escape:
                self._key += ch
                self._escape = ""
            elif ch == "\\":
                self._escape = "\\"
            elif ch == '"':
                self._state = "colon"
            else:
                self._key += ch
            return ""
        if state == "colon":
            if ch == ":":
                self._state = "value?"
            return ""
        if state == "value?":
            if ch == '"':
                self._state, self._current = "string", ""
            elif ch in "{[":
                self._state, self._depth = "other", 1
            elif not ch.isspace():
                self._state, self._depth = "other", 0
            return ""
        if state == "string":
            return self._string_char(ch)
        if state == "other":
            return self._skip(ch)
        return ""

    def _string_char(self, ch: str) -> str:
        if self._escape:
            self._escape += ch
            if self._escape[1] == "u" and len(self._escape) < 6:
                return ""
            decoded = _unescape(self._escape)
            self._escape = ""
            self._current += decoded
            return decoded if self._key in _TEXT_KEYS[:1] else ""
        if ch == "\\":
            self._escape = "\\"
            return ""
        if ch == '"':
            self.values[self._key] = self._current
            self._state = "key?"
            return ""
        self._current += ch
        return ch if self._key == "text" else ""

    def _skip(self, ch: str) -> str:
        if self._in_nested_string:
            if self._escape:
                self._escape = ""
            elif ch == "\\":
                self._escape = "\\"
            elif ch == '"':
                self._in_nested_string = False
            return ""
        if ch == '"':
            self._in_nested_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            if self._depth == 0 and ch == "}":
                self._state = "after"
                return ""
            self._depth -= 1
        elif ch == "," and self._depth == 0:
            self._state = "key?"
        return ""


def _unescape(escape: str) -> str:
    try:
        return str(json.loads(f'"{escape}"'))
    except json.JSONDecodeError:
        return ""
