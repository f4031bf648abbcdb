"""Message texts remembered between storing a message and sending it."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from runtime import serialize
from runtime.serialize import message_text, remember_text
from runtime.types import Message, MessageRole


def _message(n: int) -> Message:
    return Message(f"msg_{n}", "run_1", None, MessageRole.USER, f"answer {n}", None, None, False, False, 1.0, 2.0, None)


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialize, "_texts", OrderedDict())


def test_texts_are_kept_for_one_window_then_dropped_as_new_messages_are_stored() -> None:
    window = serialize._TEXT_KEPT_S
    old = [_message(n) for n in range(3)]
    for n, msg in enumerate(old):
        remember_text(msg, None, now=100.0 + n)
    assert list(serialize._texts) == [m.id for m in old]
    recent = _message(3)
    remember_text(recent, None, now=101.5 + window)  # the first two are older than the window
    assert list(serialize._texts) == [old[2].id, recent.id]
    assert message_text(old[0], None) == message_text(_message(0), None)  # not kept: encoded again, same text


def test_at_most_the_cap_is_kept_within_a_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialize, "_TEXTS_KEPT", 3)
    for n in range(10):
        remember_text(_message(n), None, now=100.0)
    assert list(serialize._texts) == ["msg_7", "msg_8", "msg_9"]
