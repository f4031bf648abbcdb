"""``vivavoce loadtest``: simulated participants against a running server, measured on the caller's side.

Modules:

* :mod:`api.loadtest.config`: the run's settings, personas, SLOs and the target checks
  (one origin only; loopback only unless allowed).
* :mod:`api.loadtest.stats`: percentiles.
* :mod:`api.loadtest.server_api`: the few REST calls a load test makes, pinned to one origin.
* :mod:`api.loadtest.callers`: simulated participants, one class per channel kind, each driving
  one session from join to ``run.ended``: the chat caller there, the voice caller (a real WebRTC
  peer speaking recorded answers) in :mod:`api.loadtest.voice`, loaded only when needed.
* :mod:`api.loadtest.runner`: finds each channel's kind, schedules callers (ramp, duration or run
  budget, hard deadline), then checks every run against the server's stored transcript.
* :mod:`api.loadtest.report`, :mod:`api.loadtest.plot`, :mod:`api.loadtest.progress`: output.
* :mod:`api.loadtest.cli`: the ``loadtest`` sub-command.
"""

from __future__ import annotations

from api.loadtest.config import ConfigError, LoadtestConfig, Persona
from api.loadtest.runner import LoadtestResult, run_loadtest

__all__ = ["ConfigError", "LoadtestConfig", "LoadtestResult", "Persona", "run_loadtest"]
