"""Where an interview stands when another process (or this one, restarted) picks it up from the database.

The interview's position is stored when a reply's turn ends, one write after the
reply's last message. A process that dies between the two leaves a transcript one
step ahead of the stored position: the next question was said (and maybe heard),
but the position still points at the question it followed. Resuming from that
position would put the answered question again and take a second answer to it.
:func:`caught_up` moves the position to what the transcript says was asked last.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.types import BlueprintContent, Position, UtteranceKind

Said = tuple[UtteranceKind | None, str | None]  # an assistant message: its kind and question id


def caught_up(blueprint: BlueprintContent, stored: Position, said: Sequence[Said]) -> Position:
    """``stored``, or the position the interviewer's last asking message (or closing) shows it had reached.

    ``said`` is every assistant message of the run, oldest first. Only ever moves forward: a position
    the transcript does not contradict is kept as stored (with its reminder flag)."""
    ids = [q.id for q in blueprint.questions]
    for index in range(len(said) - 1, -1, -1):
        kind, question_id = said[index]
        if kind is UtteranceKind.CLOSING:
            closed = Position(question_index=len(ids))
            return closed if stored.question_index < closed.question_index else stored
        if kind is None or not kind.asks or question_id not in ids:
            continue
        asked = ids.index(question_id)
        if asked < stored.question_index:
            return stored
        probes = _probes_since_asked(said[: index + 1], question_id)
        if asked > stored.question_index:
            return Position(asked, probes)
        return Position(asked, max(stored.probes_used, probes), stored.reminded)
    return stored


def _probes_since_asked(said: Sequence[Said], question_id: str) -> int:
    """How many probes of ``question_id`` came after the question itself was last put."""
    probes = 0
    for kind, qid in reversed(said):
        if qid != question_id:
            continue
        if kind is UtteranceKind.QUESTION:
            break
        if kind is UtteranceKind.PROBE:
            probes += 1
    return probes
