"""End of turn with Whisper, one caller: the ``transcriber`` stage and the WER of real speech through WebRTC.

    .venv/bin/python bench/transcriber.py [--rounds 2] [--json out.json]

A ``vivavoce serve`` process (default engines: Whisper tiny.en in its speech workers) and one real aiortc
caller in this process, answering every question of a 12-question interview with the recordings of the
real-speech set (fixtures/fetch_speech.py), ``--rounds`` interviews in a row. Printed from the stored
latency breakdowns of the replies: ``transcriber`` (end-of-speech decision -> final transcript: what is left
of recognition once the turn has ended) and ``eos`` (last voiced frame -> decision: the silence window,
with the holds of runtime/turn_end.py), p50/p95; the six stages' sum against the measured latency; the
corpus WER of the stored answers. Beside them, the raw cost measured in the same run: the same recordings
decoded whole by one Whisper recogniser in this process (wall time per clip, p50/p95), i.e. what the end of
a turn would wait for if nothing were decoded at the pause.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from served import free_port, start_server  # noqa: E402

from fixtures.fetch_speech import load  # noqa: E402
from media.caller import VoiceCaller  # noqa: E402
from media.stt import create_recognizer  # noqa: E402
from media.stt.wer import corpus_word_error_rate  # noqa: E402

STAGES = ("eos", "eos_wait", "transcriber", "llm", "tts", "initial_wait")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(q * len(ordered)) - 1)]


async def interview(base: str, key: str, clips: list[tuple[str, Any]]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http:
        blueprint = {
            "name": "Transcriber bench",
            "greeting": "Hello.",
            "questions": [{"id": f"q{i}", "text": f"Question {i}.", "max_probes": 0} for i in range(len(clips))],
            "closing": "Goodbye.",
        }
        async with http.post(f"{base}/v1/blueprints", json=blueprint, headers=auth) as r:
            bp = await r.json()
        async with http.post(f"{base}/v1/blueprints/{bp['id']}/publish", headers=auth) as r:
            assert r.status == 200
        channel_body = {"type": "webrtc_voice", "name": "voice"}
        async with http.post(f"{base}/v1/channels", json=channel_body, headers=auth) as r:
            channel = await r.json()
        async with http.post(
            f"{base}/v1/runs", json={"blueprint_id": bp["id"], "channel_id": channel["id"]}, headers=auth
        ) as r:
            run = await r.json()
        caller = VoiceCaller()
        await caller.join(http, run["join_url"], timeout=15)
        try:
            for i, (_, pcm) in enumerate(clips):

                def asked(ev: dict[str, Any], i: int = i) -> bool:
                    return ev.get("type") == "message" and ev.get("message", {}).get("question_id") == f"q{i}"

                seen = await caller.wait_event(asked, 60)
                await caller.wait_event(
                    lambda ev: ev.get("type") == "state" and ev.get("state") == "listening",
                    30,
                    after=caller.events.index(seen),
                )
                n = len(caller.events)
                await caller.say(pcm)
                await caller.wait_event(lambda ev: ev.get("type") == "caption" and ev.get("final"), 60, after=n)
            await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 60)
        finally:
            await caller.close()
        async with http.get(f"{base}/v1/runs/{run['id']}?expand=transcript", headers=auth) as r:
            return dict(await r.json())


async def bench(rounds: int) -> dict[str, Any]:
    folder, entries = load()
    clips = [(str(e["text"]), sf.read(folder / str(e["file"]), dtype="int16")[0]) for e in entries]
    recognizer = create_recognizer("whisper")
    raw = []
    for _, pcm in clips:
        began = time.perf_counter()
        recognizer.start()
        recognizer.feed(pcm)
        recognizer.finish()
        raw.append((time.perf_counter() - began) * 1000)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc, info = start_server(Path(tmp), port)
        try:
            runs = [await interview(f"http://127.0.0.1:{port}", info["key"], clips) for _ in range(rounds)]
        finally:
            proc.terminate()
            proc.wait(10)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    pairs, sum_errors = [], []
    slow: list[tuple[float, float, str]] = []
    for run in runs:
        transcript = run["transcript"]
        users = [m for m in transcript if m["role"] == "user"]
        pairs += [(text, m["content"]) for (text, _), m in zip(clips, users, strict=False)]
        for before, message in itertools.pairwise(transcript):
            lat = message.get("latency_breakdown")
            if message["role"] != "assistant" or before["role"] != "user" or not lat or lat.get("eos") is None:
                continue
            for s in STAGES:
                stages[s].append(float(lat[s]))
            slow.append((float(lat["transcriber"]), float(lat["eos"]), before["content"]))
            measured = (message["start_offset_s"] - before["end_offset_s"]) * 1000
            sum_errors.append(abs(sum(float(lat[s]) for s in STAGES) - measured))
    return {
        "answers": len(pairs),
        "wer": round(corpus_word_error_rate(pairs), 3),
        "stages": {s: {"p50": statistics.median(v), "p95": pct(v, 0.95)} for s, v in stages.items() if v},
        "sum_error_ms_max": round(max(sum_errors), 1) if sum_errors else None,
        "raw_decode_ms": {"p50": round(statistics.median(raw), 1), "p95": round(pct(raw, 0.95), 1)},
        "load": os.getloadavg()[0],
        "hypotheses": [h for _, h in pairs],
        "slowest": sorted(slow, reverse=True)[:5],  # (transcriber ms, eos ms, answer)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(bench(args.rounds))
    st = result["stages"]
    print(f"{result['answers']} real answers through WebRTC, load {result['load']:.2f}: WER {result['wer']:.3f}")
    print(f"transcriber p50 {st['transcriber']['p50']:.0f} ms, p95 {st['transcriber']['p95']:.0f} ms; "
          f"eos p50 {st['eos']['p50']:.0f} ms, p95 {st['eos']['p95']:.0f} ms; "
          f"stages sum vs measured: max error {result['sum_error_ms_max']} ms")  # fmt: skip
    print(f"raw: the same clips decoded whole in this process: p50 {result['raw_decode_ms']['p50']:.0f} ms, "
          f"p95 {result['raw_decode_ms']['p95']:.0f} ms")  # fmt: skip
    for transcriber, eos, answer in result["slowest"]:
        print(f"  slowest: transcriber {transcriber:.0f} ms, eos {eos:.0f} ms: {answer!r}")
    if args.json:
        args.json.write_text(json.dumps({"transcriber": result}, indent=2))


if __name__ == "__main__":
    main()
