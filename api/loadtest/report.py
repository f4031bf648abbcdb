"""The load test's figures: samples per measure, the JSON report, SLO checks, the exit code and the final table."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from api.loadtest.runner import VOICE_MATCH_MAX_WER, LoadtestResult
from api.loadtest.stats import summarize

REPORT_VERSION = 1

# (name, what it is) in table order; the first three can carry SLOs
MEASURES = (
    ("join_ms", "connect (chat) / offer (voice) → session.ready"),
    ("first_message_ms", "connect / offer → first interviewer message"),
    ("first_audio_ms", "voice: offer → first audible interviewer frame"),
    ("turn_ms", "answer sent (chat) / end of speech (voice) → first reply message / audio frame"),
    ("ack_ms", "answer sent → message.ack (chat) / end of speech → final caption (voice)"),
    ("barge_in_ms", "voice: caller starts speaking over the interviewer → its audio stops"),
    ("create_run_ms", "POST /v1/runs round trip"),
    ("server_turn_ms", "server: initial_wait + llm (chat) / eos … initial_wait (voice) of that reply"),
    ("server_stages_ms", "server: sum of all stages of that reply (network included)"),
    ("unattributed_ms", "turn_ms - server_turn_ms (commit, socket, network; voice: jitter buffer)"),
)
CALLER_SIDE = ("join_ms", "first_message_ms", "turn_ms", "ack_ms")
TOLERANCE_MS = 1.0  # the server rounds stages to 1 µs and clocks tick; allow this much before calling it odd
# voice: the caller's end of speech comes from the fixture's speech_end_s, the server's from its VAD, which
# decides per 20 ms frame and may call the last, quiet frames of a word silence; allow this much
VOICE_TOLERANCE_MS = 100.0


def samples(result: LoadtestResult) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name, _ in MEASURES}
    for s in result.sessions:
        if s.join_ms is not None:
            out["join_ms"].append(s.join_ms)
        if s.first_message_ms is not None:
            out["first_message_ms"].append(s.first_message_ms)
        if s.first_audio_ms is not None:
            out["first_audio_ms"].append(s.first_audio_ms)
        for b in s.barge_ins:
            if b.get("reaction_ms") is not None:
                out["barge_in_ms"].append(b["reaction_ms"])
        if s.create_ms is not None:
            out["create_run_ms"].append(s.create_ms)
        for t in s.turns:
            if t.latency_ms is not None:
                out["turn_ms"].append(t.latency_ms)
            if t.ack_ms is not None:
                out["ack_ms"].append(t.ack_ms)
        for vt in (s.verification or {}).get("turns", []):
            server = vt.get("server_turn_ms")
            if server is not None:
                out["server_turn_ms"].append(server)
                out["unattributed_ms"].append(vt["caller_ms"] - server)
            if vt.get("server_stages_ms") is not None:
                out["server_stages_ms"].append(vt["server_stages_ms"])
    return out


def _verification(result: LoadtestResult) -> dict[str, Any]:
    checked = [s for s in result.sessions if s.verification is not None]
    tolerance = {s.run_id: VOICE_TOLERANCE_MS if s.kind == "voice" else TOLERANCE_MS for s in checked}
    ok_checks = [s.verification for s in checked if s.verification and "error" not in s.verification]
    errors = [s for s in checked if s.verification and "error" in s.verification]

    def total(key: str) -> int:
        return sum(len(v[key]) if isinstance(v[key], list) else int(v[key]) for v in ok_checks if v is not None)

    turns = [
        (s.run_id, t)
        for s in checked
        if s.verification and "error" not in s.verification
        for t in s.verification["turns"]
        if t.get("server_turn_ms") is not None
    ]
    below = [t for run_id, t in turns if t["caller_ms"] + tolerance[run_id] < t["server_turn_ms"]]
    voice = [v for v in ok_checks if v is not None and "wer" in v]
    edits = sum((v["wer"] or 0.0) * v["wer_words"] for v in voice)
    words = sum(v["wer_words"] for v in voice)
    barge_ins = [b for v in voice for b in v["barge_ins"]]
    missing_in_ok = sum(
        len(s.verification["missing"]) for s in checked if s.ok and s.verification and "missing" in s.verification
    )
    return {
        "done": result.verified,
        "note": result.verify_note,
        "runs_checked": len(ok_checks),
        "runs_not_checked": len(errors),
        "check_errors": dict(Counter(str(s.verification["error"]) for s in errors if s.verification)),
        "utterances": total("utterances"),
        "missing": total("missing"),
        "missing_acked": total("missing_acked"),
        "missing_in_completed_runs": missing_in_ok,
        "content_mismatch": total("content_mismatch"),
        "turns_matched": len(turns),
        "turns_caller_faster_than_server": len(below),
        "voice_runs_checked": len(voice),
        "voice_optional": sum(int(v["optional"]) for v in voice),
        "voice_wer": round(edits / words, 4) if words else None,
        "voice_match_max_wer": VOICE_MATCH_MAX_WER,
        "barge_ins": len(barge_ins),
        "barge_ins_stopped": sum(1 for b in barge_ins if b["outcome"] == "stopped"),
        "barge_ins_stored_interrupted": sum(1 for b in barge_ins if b["stored_interrupted"]),
    }


def _by_kind(result: LoadtestResult) -> dict[str, Any]:
    """Percentiles per caller kind, when a test mixed kinds (chat and voice turns are not comparable)."""
    kinds = sorted({s.kind for s in result.sessions})
    if len(kinds) < 2:
        return {}
    out: dict[str, Any] = {}
    for kind in kinds:
        part = LoadtestResult(result.config, result.origin, result.tag, result.blueprint_id, result.started_at)
        part.sessions = [s for s in result.sessions if s.kind == kind]
        data = samples(part)
        out[kind] = {
            "sessions": len(part.sessions),
            "completed": sum(1 for s in part.sessions if s.ok),
            "measures": {name: summarize(data[name]) for name, _ in MEASURES if data[name]},
        }
    return out


def build_report(result: LoadtestResult) -> dict[str, Any]:
    """Everything: configuration, totals, percentiles, SLOs, failures, each session, the timeline."""
    config = result.config
    data = samples(result)
    sessions = result.sessions
    failed = result.failed_sessions
    verification = _verification(result)
    measures = {name: {"what": what, **summarize(data[name])} for name, what in MEASURES}
    slos: list[dict[str, Any]] = []
    for slo in config.slos:
        actual = measures[slo.measure][slo.stat]
        slos.append(
            {
                "key": slo.key,
                "threshold_ms": slo.threshold,
                "actual_ms": actual,
                "ok": actual is not None and actual <= slo.threshold,
            }
        )
    elapsed = max(result.finished_at - result.started_at, 1e-9)
    frames = sum(s.frames_in + s.frames_out for s in sessions)
    problems: list[str] = []
    if result.aborted:
        problems.append(f"aborted: {result.aborted}")
    if not sessions and not result.aborted:
        problems.append("no session ran")
    if failed:
        reasons = Counter(s.failure or "?" for s in failed)
        listed = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(5))
        problems.append(f"{len(failed)} of {len(sessions)} sessions failed: {listed}")
    if result.deadline_hit:
        problems.append(f"the hard deadline ({config.hard_deadline_s:g} s) cut sessions short")
    if verification["missing_acked"] or verification["missing_in_completed_runs"]:
        problems.append(
            f"{verification['missing']} utterance(s) missing from the server's transcripts "
            f"({verification['missing_acked']} of them acknowledged)"
        )
    if verification["content_mismatch"]:
        problems.append(f"{verification['content_mismatch']} utterance(s) stored with different content")
    not_checked_ok = [s for s in sessions if s.ok and s.verification is not None and "error" in s.verification]
    if not_checked_ok:
        problems.append(f"{len(not_checked_ok)} completed run(s) could not be checked against the server")
    for outcome in slos:
        if not outcome["ok"]:
            actual = "no data" if outcome["actual_ms"] is None else f"{outcome['actual_ms']:.1f} ms"
            problems.append(f"SLO missed: {outcome['key']} <= {outcome['threshold_ms']:g} ms, measured {actual}")
    return {
        "version": REPORT_VERSION,
        "config": config.as_json(),
        "origin": result.origin,
        "tag": result.tag,
        "blueprint_id": result.blueprint_id,
        "started_at": round(result.started_at, 3),
        "finished_at": round(result.finished_at, 3),
        "elapsed_s": round(elapsed, 3),
        "summary": {
            "sessions": len(sessions),
            "kinds": dict(Counter(s.kind for s in sessions)),
            "completed": sum(1 for s in sessions if s.ok),
            "failed": len(failed),
            "turns": sum(1 for s in sessions for t in s.turns if t.latency_ms is not None),
            "answers": sum(len(s.utterances) for s in sessions),
            "reconnects": sum(s.reconnects for s in sessions),
            "frames": frames,
            "frames_per_s": round(frames / elapsed, 1),
            "max_connected": max((c for _, _, c, _ in result.timeline), default=0),
            "deadline_hit": result.deadline_hit,
            "aborted": result.aborted,
            "synthetic_answers": result.synthetic_answers,
        },
        "measures": measures,
        "by_kind": _by_kind(result),
        "slo": slos,
        "verification": verification,
        "failures": dict(Counter(s.failure or "?" for s in failed)),
        "errors": [
            {"caller": s.caller, "run_id": s.run_id, "failure": s.failure, "errors": s.errors}
            for s in sessions
            if s.failure or s.errors
        ],
        "problems": problems,
        "exit_code": 1 if problems else 0,
        "timeline": [list(row) for row in result.timeline],  # t_s, callers active, connected, sessions open
        "sessions": [s.as_json() for s in sessions],
    }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The final table (p50/p95/p99 per measure), totals, SLOs and, if any, why the exit code is non-zero."""
    s = report["summary"]
    table = Table(title=f"vivavoce loadtest — {report['origin']}", title_justify="left")
    table.add_column("measure")
    table.add_column("n", justify="right")
    for col in ("p50", "p95", "p99", "max"):
        table.add_column(f"{col} ms", justify="right")
    table.add_column("what", style="dim")
    for name, m in report["measures"].items():
        if m["count"] == 0 and name not in CALLER_SIDE:
            continue
        table.add_row(name, str(m["count"]), _ms(m["p50"]), _ms(m["p95"]), _ms(m["p99"]), _ms(m["max"]), m["what"])
    console.print(table)
    console.print(
        f"sessions {s['sessions']} (completed {s['completed']}, failed {s['failed']}), turns {s['turns']}, "
        f"reconnects {s['reconnects']}, peak connected {s['max_connected']}, {s['frames_per_s']} frames/s, "
        f"{report['elapsed_s']:.1f} s"
    )
    v = report["verification"]
    if v["done"]:
        console.print(
            f"transcripts: {v['runs_checked']} runs checked, {v['utterances']} utterances, "
            f"{v['missing']} missing ({v['missing_acked']} acknowledged), {v['content_mismatch']} altered; "
            f"{v['turns_matched']} turns matched to stored breakdowns"
        )
        if v["voice_runs_checked"]:
            wer = "-" if v["voice_wer"] is None else f"{v['voice_wer']:.2f}"
            console.print(
                f"voice: WER {wer} over matched answers (an answer counts as stored at WER <= "
                f"{v['voice_match_max_wer']:g}), {v['voice_optional']} cut short by a drop or the end; "
                f"barge-ins {v['barge_ins']} ({v['barge_ins_stopped']} stopped the interviewer's audio, "
                f"{v['barge_ins_stored_interrupted']} stored as interrupted)"
            )
    elif v["note"]:
        console.print(f"transcripts: {v['note']}")
    for kind, part in report["by_kind"].items():
        turn = part["measures"].get("turn_ms", {})
        console.print(
            f"{kind}: {part['completed']}/{part['sessions']} completed, turn p50/p95 "
            f"{_ms(turn.get('p50'))}/{_ms(turn.get('p95'))} ms"
        )
    for slo in report["slo"]:
        mark = "[green]ok[/green]" if slo["ok"] else "[red]MISSED[/red]"
        console.print(f"SLO {slo['key']} <= {slo['threshold_ms']:g} ms: {_ms(slo['actual_ms'])} ms {mark}")
    for problem in report["problems"]:
        console.print(f"[red]✗[/red] {problem}", markup=True, highlight=False)
    if not report["problems"]:
        console.print("[green]✓ no failures[/green]")
