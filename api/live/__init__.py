"""Drivers for live runs: one :class:`RunController` per run in progress, kept by :class:`LiveRuns`.

* :mod:`~api.live.links`: what a run talks to (a chat socket or a WebRTC peer) and how playback is reported;
* :mod:`~api.live.controller`: the driver of one run's conversation machine;
* :mod:`~api.live.speculation`: voice replies composed during the pause;
* :mod:`~api.live.registry`: the runs live in this process and which interviewer each gets;
* :mod:`~api.live.ownership`: this process among those sharing the store (its heartbeat; leases of runs).
"""

from __future__ import annotations

from api.live.controller import LiveSettings, RunController
from api.live.links import CLOSE_GOING_AWAY, CLOSE_REPLACED, RESTARTING, ParticipantLink, PlaybackReport
from api.live.ownership import Ownership
from api.live.registry import Interviewers, LiveRuns, timing_for

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_REPLACED",
    "RESTARTING",
    "Interviewers",
    "LiveRuns",
    "LiveSettings",
    "Ownership",
    "ParticipantLink",
    "PlaybackReport",
    "RunController",
    "timing_for",
]
