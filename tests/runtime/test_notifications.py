"""The hints a commit sends other processes, and the hub's side of following them (no database needed)."""

from __future__ import annotations

from runtime.events import EventHub
from runtime.storage import notifications
from runtime.types import Event, EventType


def _event(run: str, seq: int) -> Event:
    return Event(run, seq, EventType.MESSAGE_CREATED, 0.0, {})


def test_a_commit_names_each_run_once_with_its_first_and_last_seq() -> None:
    events = [_event("run_a", 4), _event("run_b", 9), _event("run_a", 5), _event("run_a", 6)]
    assert notifications.spans(events) == [("run_a", 4, 6), ("run_b", 9, 9)]
    (payload,) = notifications.payloads("origin1", notifications.spans(events))
    assert notifications.parse(payload) == ("origin1", [("run_a", 4, 6), ("run_b", 9, 9)])


def test_a_commit_of_many_runs_is_split_into_payloads_postgresql_accepts() -> None:
    committed = [(f"run_{i:026d}", i + 1, i + 3) for i in range(1000)]
    payloads = notifications.payloads("o", committed)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    parsed = [notifications.parse(p) for p in payloads]
    assert {origin for origin, _ in parsed} == {"o"}
    assert [span for _, spans in parsed for span in spans] == committed  # nothing lost, nothing twice
    assert notifications.payloads("o", []) == []


def test_the_hub_remembers_the_last_seq_it_published_only_while_a_run_has_subscribers() -> None:
    hub = EventHub()
    hub.publish(_event("run_a", 1))
    assert hub.last_seq("run_a") is None  # nobody listened: nothing kept
    with hub.subscribe("run_a") as sub:
        hub.publish(_event("run_a", 2))
        hub.publish(_event("run_a", 3))
        assert hub.last_seq("run_a") == 3 and hub.watched_runs() == ["run_a"]
        hub.resync("run_a")
        hub.resync("run_a")  # one read-back is enough
        got = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
        assert [None if e is None else e.seq for e in got] == [2, 3, None]
    assert hub.last_seq("run_a") is None and hub.watched_runs() == []


def test_a_resync_reaches_a_subscriber_whose_queue_is_nearly_full() -> None:
    hub = EventHub(queue_size=3)
    with hub.subscribe("run_a") as sub:
        hub.publish(_event("run_a", 1))
        hub.publish(_event("run_a", 2))
        hub.resync("run_a")
        assert [sub.queue.get_nowait() for _ in range(3)][-1] is None
