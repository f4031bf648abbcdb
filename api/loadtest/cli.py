"""``vivavoce loadtest``: the command line, and :func:`execute`, the async entry point behind it.

Exit codes: 0 every session completed, every utterance is in the server's
transcripts and every SLO held; 1 otherwise (the reasons are printed); 2 the
load test was refused (bad arguments, a target it may not touch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from api.loadtest.callers import Counters
from api.loadtest.config import KINDS, ConfigError, LoadtestConfig, Persona, Slo, check_target, read_join_urls
from api.loadtest.report import build_report, print_summary, samples
from api.loadtest.runner import run_loadtest

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2

EPILOG = """\
examples:
  vivavoce loadtest --url http://127.0.0.1:8080 --api-key $KEY --channel chn_... --callers 20 --runs 100
  vivavoce loadtest --url http://127.0.0.1:8080 --api-key $KEY --channel chn_... --callers 50 --ramp-s 10 \\
      --duration-s 60 --report out.json --plot out.png --slo p95_turn_ms=900 p99_join_ms=2000
  vivavoce loadtest --url http://127.0.0.1:8080 --api-key $KEY --channel chn_chat chn_voice --callers 4 --runs 8
      (callers alternate between the channels; a webrtc_voice channel gets WebRTC callers speaking fixtures)
SLO keys: p50_/p95_/p99_ + join_ms, first_message_ms, turn_ms, first_audio_ms, barge_in_ms
(milliseconds; the test fails above them).
Only loopback targets unless --allow-remote; every request goes to the --url origin only.
"""


def add_parser(subparsers: Any) -> None:
    """Register ``loadtest`` on the ``vivavoce`` command's sub-parsers."""
    p = subparsers.add_parser(
        "loadtest",
        help="simulate participants against a running server and measure latency",
        description="Simulated participants create (or take) runs, answer every question until the run ends, "
        "and measure join, first-message and per-turn latency on their side; at the end every run is checked "
        "against the server's stored transcript and latency breakdowns.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_argument_group("target")
    target.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8080")
    target.add_argument("--api-key", help="API key (env VIVAVOCE_API_KEY); needed to create and check runs")
    target.add_argument(
        "--channel",
        nargs="+",
        action="extend",
        metavar="CHANNEL",
        help="channel id(s) (chn_…) for the runs it creates; with several, caller i uses the (i mod n)-th; "
        "a webrtc_voice channel gets voice callers",
    )
    target.add_argument("--blueprint", help="blueprint id (bp_…); default: the newest published one")
    target.add_argument("--join-urls", type=Path, help="file of join URLs (one a line) to use instead of creating runs")
    target.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not loopback (127.0.0.0/8, localhost, ::1)"
    )
    load = p.add_argument_group("load")
    load.add_argument("--callers", type=int, default=1, help="concurrent simulated participants (default 1)")
    load.add_argument("--ramp-s", type=float, default=0.0, help="start the callers evenly over this many seconds")
    how_long = load.add_mutually_exclusive_group()
    how_long.add_argument("--duration-s", type=float, help="keep starting new runs for this long")
    how_long.add_argument("--runs", type=int, help="stop after this many runs in total (default: one per caller)")
    load.add_argument(
        "--persona", type=Path, help="persona JSON (typing delay, answers, voice pauses and barge-ins, …)"
    )
    load.add_argument(
        "--kind",
        choices=KINDS,
        default="auto",
        help="caller kind (default auto: from each channel's type; chat with --join-urls)",
    )
    load.add_argument(
        "--sync-start", action="store_true", help="answer only once every caller's first session is ready"
    )
    load.add_argument("--seed", type=int, help="random seed for typing delays and answers")
    pilot = p.add_argument_group("synthetic participants (chat): a persona with a description, answered by a model")
    pilot.add_argument("--llm-base-url", help="OpenAI-compatible server (env VIVAVOCE_LOADTEST_LLM_BASE_URL)")
    pilot.add_argument("--llm-model", help="model name (env VIVAVOCE_LOADTEST_LLM_MODEL; default 'default')")
    pilot.add_argument("--llm-api-key", help=argparse.SUPPRESS)  # prefer env VIVAVOCE_LOADTEST_LLM_API_KEY
    out = p.add_argument_group("output")
    out.add_argument("--report", type=Path, help="write the JSON report here")
    out.add_argument("--plot", type=Path, help="write a PNG (latency CDFs, callers over time) here")
    out.add_argument("--slo", nargs="+", action="extend", default=[], metavar="KEY=MS", help="e.g. p95_turn_ms=900")
    out.add_argument("--no-progress", action="store_true", help="no live display (it is off anyway without a TTY)")
    out.add_argument("--no-verify", action="store_true", help="skip the check against the server's transcripts")
    limits = p.add_argument_group("limits")
    limits.add_argument("--connect-timeout-s", type=float, default=10.0, help="connect/handshake timeout (10)")
    limits.add_argument("--request-timeout-s", type=float, default=30.0, help="whole REST call timeout (30)")
    limits.add_argument("--read-timeout-s", type=float, default=60.0, help="drop a socket silent this long (60)")
    limits.add_argument(
        "--reconnect-window-s", type=float, default=15.0, help="a dropped session retries this long, then fails (15)"
    )
    limits.add_argument(
        "--media-timeout-s", type=float, default=5.0, help="voice: drop a peer that sends no audio this long (5)"
    )
    limits.add_argument("--max-consecutive-failures", type=int, default=3, help="a caller stops after this many (3)")
    limits.add_argument("--grace-s", type=float, default=60.0, help="with --duration-s: time for runs to finish (60)")
    limits.add_argument("--deadline-s", type=float, help="hard overall limit (default duration + grace, else 600)")
    limits.add_argument("--max-turns", type=int, default=200, help="answers per run before giving up (200)")
    p.add_argument("--no-uvloop", action="store_true", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> LoadtestConfig:
    """The configuration; raises :class:`ConfigError` (refusals included) before any traffic."""
    origin = check_target(args.url, allow_remote=args.allow_remote)
    persona = Persona.load(args.persona) if args.persona else Persona()
    join_urls = None
    if args.join_urls is not None:
        try:
            join_urls = tuple(read_join_urls(args.join_urls, origin))
        except OSError as exc:
            raise ConfigError(f"cannot read {args.join_urls}: {exc}") from None
    return LoadtestConfig(
        url=args.url,
        api_key=args.api_key or os.environ.get("VIVAVOCE_API_KEY") or None,
        channel_id=args.channel[0] if args.channel else None,
        more_channel_ids=tuple(args.channel[1:]) if args.channel else (),
        blueprint_id=args.blueprint,
        callers=args.callers,
        ramp_s=args.ramp_s,
        duration_s=args.duration_s,
        runs=args.runs,
        persona=persona,
        join_urls=join_urls,
        slos=tuple(Slo.parse(s) for s in args.slo),
        allow_remote=args.allow_remote,
        kind=args.kind,
        connect_timeout_s=args.connect_timeout_s,
        request_timeout_s=args.request_timeout_s,
        read_timeout_s=args.read_timeout_s,
        reconnect_window_s=args.reconnect_window_s,
        media_timeout_s=args.media_timeout_s,
        max_consecutive_failures=args.max_consecutive_failures,
        grace_s=args.grace_s,
        deadline_s=args.deadline_s,
        max_turns_per_run=args.max_turns,
        sync_start=args.sync_start,
        verify=not args.no_verify,
        seed=args.seed,
        llm_base_url=args.llm_base_url or os.environ.get("VIVAVOCE_LOADTEST_LLM_BASE_URL") or None,
        llm_api_key=args.llm_api_key or os.environ.get("VIVAVOCE_LOADTEST_LLM_API_KEY") or None,
        llm_model=args.llm_model or os.environ.get("VIVAVOCE_LOADTEST_LLM_MODEL") or None,
    )


async def execute(
    config: LoadtestConfig,
    *,
    report_path: Path | None = None,
    plot_path: Path | None = None,
    console: Console | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the load test, print the summary, write the report and plot; returns the report (``exit_code`` in it)."""
    console = console or Console(stderr=False)
    counters = Counters()
    if progress:
        from api.loadtest.progress import Progress

        with Progress(counters, console, callers=config.callers, deadline_s=config.hard_deadline_s):
            result = await run_loadtest(config, counters=counters)
    else:
        result = await run_loadtest(config, counters=counters)
    report = build_report(result)
    print_summary(report, console)
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=1), encoding="utf-8")
        console.print(f"report: {report_path}")
    if plot_path is not None:
        from api.loadtest.plot import write_plot

        kinds = "+".join(sorted(report["summary"]["kinds"])) or config.kind
        title = f"{kinds} loadtest: {config.callers} callers, {report['summary']['sessions']} sessions"
        write_plot(plot_path, samples(result), report["timeline"], title=title)
        console.print(f"plot: {plot_path}")
    return report


def _run_async(coro: Coroutine[Any, Any, dict[str, Any]], *, use_uvloop: bool) -> dict[str, Any]:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def run(args: argparse.Namespace) -> int:
    """Entry for ``vivavoce loadtest``; returns the exit code."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"vivavoce loadtest: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=140)  # a log file or pipe: do not squeeze the table into 80 columns
    show = console.is_terminal and not args.no_progress
    try:
        report = _run_async(
            execute(config, report_path=args.report, plot_path=args.plot, console=console, progress=show),
            use_uvloop=not args.no_uvloop,
        )
    except ConfigError as exc:
        print(f"vivavoce loadtest: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("vivavoce loadtest: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return int(report["exit_code"])


def main(argv: list[str] | None = None) -> int:
    """``python -m api.loadtest``: the same command without the ``vivavoce`` wrapper."""
    parser = argparse.ArgumentParser(prog="vivavoce")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(["loadtest", *(argv if argv is not None else sys.argv[1:])]))
