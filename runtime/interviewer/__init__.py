"""Interviewers: what is said next, given the guide, where the interview stands, and what was said.

* :mod:`~runtime.interviewer.protocol`: the streaming :class:`Interviewer` protocol and its records;
* :mod:`~runtime.interviewer.policy`: the rules the runtime keeps whoever writes the words;
* :mod:`~runtime.interviewer.scripted`: the deterministic default, also every turn's fallback;
* :mod:`~runtime.interviewer.llm`: the AI interviewer (a model proposes, the runtime disposes),
  with its prompt template in :mod:`~runtime.interviewer.prompt`, its reading of the model's
  decisions in :mod:`~runtime.interviewer.decisions` and its checks of what may be said in
  :mod:`~runtime.interviewer.speech`.
"""

from __future__ import annotations

from runtime.interviewer.protocol import (
    Delta,
    Exchange,
    Interviewer,
    Purpose,
    ReplyPart,
    ReplyRequest,
    TurnEnd,
    Utterance,
    word_count,
)
from runtime.interviewer.scripted import ScriptedInterviewer

__all__ = [
    "Delta",
    "Exchange",
    "Interviewer",
    "Purpose",
    "ReplyPart",
    "ReplyRequest",
    "ScriptedInterviewer",
    "TurnEnd",
    "Utterance",
    "word_count",
]
