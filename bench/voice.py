"""Voice benchmark: N concurrent aiortc callers against one vivavoce server process, beside the raw aiortc ceiling.

    .venv/bin/python bench/voice.py --callers 10 [--json out.json]
    .venv/bin/python bench/voice.py --capacity [--steps 1,2,4,6,8,10,12,16]

Callers are light by default (media/caller.py ``light=True``: pre-encoded Opus out, RTP frames timed
and not decoded in), so the generator costs a small fraction of a server session; its CPU is printed
beside the server's. ``--capacity`` finds the most callers for which client-measured voice-to-voice
p95 <= end-of-speech window + 600 ms, no reply frame arrives more than 60 ms after its RTP schedule
and every interview completes, beside the most raw aiortc pairs that keep real time, in the same run.

Three processes: the server (``vivavoce serve``, speech engines in its worker
process), the callers (real aiortc peers speaking fixture answers in real
time), and, before the load, the raw ceiling: N loopback aiortc peer pairs
that only send and decode audio, no pipeline. Printed:

* per-stage p50/p95 of the server's stored latency breakdowns (answers only);
* client-measured voice-to-voice latency: the end of the caller's speech (its
  last frame minus the fixture's trailing silence) → the first audible reply
  frame it receives;
* runtime-owned time per reply: initial_wait + transcriber (the recogniser's
  tail after end of speech) + tts;
* the server's event-loop lag p99 (from /healthz) during the load;
* CPU and memory per voice session of the server's main process, and voice
  sessions per core against raw aiortc peers per core measured in the same run:
  once with all of the main process's CPU, once without its synthesis threads
  (eSpeak runs in threads named ``synthesis_*`` there; told apart by per-thread
  CPU from ``/proc/<pid>/task``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from served import free_port, start_server  # noqa: E402  (bench/served.py)

FIXTURES = ROOT / "fixtures" / "answers"
BLUEPRINT = {
    "name": "Voice benchmark",
    "greeting": "Hello.",
    "questions": [
        {"id": "work", "text": "What do you do?", "max_probes": 0},
        {"id": "home", "text": "Where do you live?", "max_probes": 0},
        {"id": "food", "text": "What did you eat?", "max_probes": 0},
    ],
    "closing": "Thank you, goodbye.",
}
ANSWERS = ("job", "home", "breakfast")
STAGES = ("eos", "eos_wait", "transcriber", "llm", "tts", "initial_wait")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


SYNTHESIS_THREADS = "synthesis"  # OS name prefix of the server's synthesis threads (and eSpeak's, started from them)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each live thread of ``pid``: ``{tid: (name, seconds)}``."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            head, rest = task.joinpath("stat").read_text().rsplit(")", 1)
        except OSError:  # exited meanwhile
            continue
        fields = rest.split()
        out[int(task.name)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / TICKS)
    return out


class ThreadWatch:
    """Per-thread CPU of ``pid`` from now on, sampled every ``interval`` s on a thread of the bench process.

    Threads come and go during the load (aiortc's decoder thread of each session ends with it; eSpeak
    starts one per utterance), and a thread's CPU is gone from ``/proc`` once it exits, so each thread
    counts with its last sample: at most ``interval`` of an exited thread's CPU is missed. That residue
    is not attributed to synthesis (it counts as the sessions').
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.start = thread_cpu(pid)
        self.last = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(OSError):  # the process is gone
            self.last.update(thread_cpu(self.pid))

    def stop(self) -> dict[str, float]:
        """CPU seconds since the start: on synthesis threads, on the main thread (the event loop)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        split = {"synthesis": 0.0, "event_loop": 0.0}
        for tid, (name, seconds) in self.last.items():
            used = seconds - self.start.get(tid, (name, 0.0))[1]
            if name.startswith(SYNTHESIS_THREADS):
                split["synthesis"] += used
            elif tid == self.pid:
                split["event_loop"] = used
        return split


def children_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each child process of ``pid`` (the speech workers)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    out[int(child)] = cpu_seconds(int(child))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


# --- the raw ceiling: loopback peer pairs that only send and decode audio ------------------------


def spoken_audio_48k() -> np.ndarray:
    """Every fixture answer back to back, 48 kHz mono int16 (what a raw peer speaks in a loop)."""
    import soundfile as sf

    from media.resample import resample

    parts = [sf.read(path, dtype="int16")[0] for path in sorted(FIXTURES.glob("*.wav"))]
    return np.asarray(resample(np.concatenate(parts), 16_000, 48_000), dtype=np.int16)


async def raw_pairs(n: int, seconds: float) -> dict[str, float]:
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

    from media.webrtc import configure_host_addresses

    configure_host_addresses(["127.0.0.1"])
    pcs: list[Any] = []
    frames = [0]
    speech = spoken_audio_48k()

    class SpeechLoop(AudioStreamTrack):
        """The fixture answers, looped: Opus spends more on speech than on the silence AudioStreamTrack sends."""

        def __init__(self, offset: int) -> None:
            super().__init__()
            self.position = offset

        async def recv(self) -> Any:
            frame = await super().recv()  # paced like aiortc's own track; we only replace the samples
            n = frame.samples
            if self.position + n > len(speech):
                self.position = 0
            samples = speech[self.position : self.position + n]
            self.position += n
            frame.planes[0].update(samples.tobytes())
            return frame

    async def drain(track: Any) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            frames[0] += 1

    async def pair() -> None:
        a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.extend((a, b))
        for pc in (a, b):
            pc.addTrack(SpeechLoop(offset=len(pcs) * 48_000 % len(speech)))  # both directions, like a call
            pc.on("track", lambda t: asyncio.ensure_future(drain(t)))
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)

    await asyncio.gather(*(pair() for _ in range(n)))
    await asyncio.sleep(2.0)  # connect and settle
    cpu0, f0, t0 = cpu_seconds(os.getpid()), frames[0], time.monotonic()
    await asyncio.sleep(seconds)
    cpu, got, wall = cpu_seconds(os.getpid()) - cpu0, frames[0] - f0, time.monotonic() - t0
    await asyncio.gather(*(pc.close() for pc in pcs))
    expected = 2 * n * wall / 0.02
    return {
        "pairs": n,
        "cpu_core_fraction": cpu / wall,
        "cpu_per_peer": cpu / wall / (2 * n),
        "frames_received_ratio": got / expected,
    }


# --- the callers ---------------------------------------------------------------------------------


LATE_S = 0.06  # a reply frame arriving this much after its RTP schedule misses a browser's ~40-60 ms jitter buffer


async def callers(
    url: str, key: str, channel: str, blueprint: str, n: int, stagger: float, light: bool = True
) -> dict[str, Any]:
    import aiohttp
    import soundfile as sf

    from media.caller import VoiceCaller
    from media.webrtc import configure_host_addresses

    configure_host_addresses(["127.0.0.1"])
    audio = {a: sf.read(FIXTURES / f"{a}.wav", dtype="int16")[0] for a in ANSWERS}
    manifest = {a["id"]: a for a in json.loads((FIXTURES / "answers.json").read_text())}
    # each fixture ends with silence: the participant stopped speaking that long before its last frame
    trailing = {a: manifest[a]["duration_s"] - manifest[a]["speech_end_s"] for a in ANSWERS}
    results: list[dict[str, Any]] = []

    async def one(i: int, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(i * stagger)
        headers = {"Authorization": f"Bearer {key}"}
        async with http.post(f"{url}/v1/runs", json={"blueprint_id": blueprint, "channel_id": channel},
                             headers=headers) as resp:  # fmt: skip
            run = await resp.json()
        caller = VoiceCaller(light=light)
        record: dict[str, Any] = {"run_id": run["id"], "v2v": [], "error": None, "late_frames": 0, "frames": 0}
        try:
            t = time.monotonic()
            await caller.join(http, run["join_url"], timeout=20)
            record["join_s"] = time.monotonic() - t
            await caller.wait_event(lambda ev: ev.get("type") == "message", 60)
            await quiet(caller)  # the greeting (the first one may wait for the voice to load) has been heard
            counted_from = len(caller.heard.times)
            for answer in ANSWERS:
                await quiet(caller)
                spoken_until = await caller.say(audio[answer])
                heard = await caller.heard_after(spoken_until, 30)
                record["v2v"].append(heard - (spoken_until - trailing[answer]))
            await caller.wait_event(lambda ev: ev.get("type") == "run.ended", 60)
            lateness = caller.heard.lateness(counted_from)
            record["frames"] = len(lateness)
            record["late_frames"] = sum(1 for late in lateness if late > LATE_S)
            record["max_lateness_ms"] = round(max(lateness, default=0.0) * 1000, 1)
        except Exception as exc:
            record["error"] = repr(exc)
        finally:
            await caller.close()
        results.append(record)

    async def quiet(caller: Any) -> None:
        """Wait until the interviewer has spoken and then been silent for 0.6 s (it finished its turn)."""
        while (last := caller.heard.last_audible()) is None or last > time.time() - 0.6:
            await asyncio.sleep(0.05)

    cpu0, t0 = cpu_seconds(os.getpid()), time.monotonic()
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(i, http) for i in range(n)))
    # the generator's own CPU (all its threads), to set beside the server's
    return {"callers": results, "generator_core_fraction": (cpu_seconds(os.getpid()) - cpu0) / (time.monotonic() - t0)}


# --- orchestration -------------------------------------------------------------------------------


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def api(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    import aiohttp

    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http,
        http.request(method, url + path, json=body) as resp,
    ):
        return await resp.json()


def load(n: int, args: argparse.Namespace, raw: dict[str, float]) -> dict[str, Any]:
    """One load: a fresh server, ``n`` callers through a whole interview each; the figures."""
    server_log: list[str] = []  # the server's warnings and errors during the load
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc, info = start_server(Path(tmp), port, log=server_log)
        try:
            key = info["key"]
            bp = asyncio.run(api(url, key, "POST", "/v1/blueprints", BLUEPRINT))
            asyncio.run(api(url, key, "POST", f"/v1/blueprints/{bp['id']}/publish"))
            channel = asyncio.run(api(url, key, "POST", "/v1/channels", {"type": "webrtc_voice", "name": "bench"}))
            rss0 = rss_mb(proc.pid)
            asyncio.run(api(url, key, "GET", "/healthz?reset_lag=1"))
            cpu0, watch, t0 = cpu_seconds(proc.pid), ThreadWatch(proc.pid), time.monotonic()
            workers0 = children_cpu_seconds(proc.pid)
            child = {"url": url, "key": key, "channel": channel["id"], "blueprint": bp["id"], "n": n,
                     "stagger": args.stagger, "light": not args.full_callers}  # fmt: skip
            load = run_child(["--child", "callers", "--child-args", json.dumps(child)], 600)
            wall, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
            workers = {pid: c - workers0.get(pid, 0.0) for pid, c in children_cpu_seconds(proc.pid).items()}
            threads = watch.stop()
            peak_rss = rss_mb(proc.pid)
            health = asyncio.run(api(url, key, "GET", "/healthz"))
            runs = [asyncio.run(api(url, key, "GET", f"/v1/runs/{c['run_id']}?expand=transcript"))
                    for c in load["callers"]]  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(10)

    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    owned: list[float] = []
    for run in runs:
        for m in run.get("transcript", []):
            lat = m.get("latency_breakdown") or {}
            if m["role"] == "assistant" and lat.get("eos") is not None:
                for s in STAGES:
                    stages[s].append(lat[s])
                owned.append(lat["initial_wait"] + lat["transcriber"] + lat["tts"])
    per_run = [
        [round(m["latency_breakdown"]["transcriber"]) for m in run.get("transcript", [])
         if m["role"] == "assistant" and (m.get("latency_breakdown") or {}).get("eos") is not None]
        for run in runs
    ]  # fmt: skip
    v2v = [x * 1000 for c in load["callers"] for x in c["v2v"]]
    errors = [c["error"] for c in load["callers"] if c["error"]]
    completed = sum(1 for r in runs if r.get("status") == "completed")
    busy = sum(len(c["v2v"]) for c in load["callers"])  # rough: sessions were live for most of the window
    cpu_per_session = cpu / wall / n
    sessions_per_core = 1 / cpu_per_session if cpu_per_session else float("inf")
    raw_peers_per_core = 1 / raw["cpu_per_peer"]
    # Without synthesis: the main process's CPU minus that of its synthesis threads (eSpeak runs in threads
    # here by default, ServerConfig.synthesis_inprocess), sampled per thread while the load ran.
    session_only = (cpu - threads["synthesis"]) / wall / n
    sessions_per_core_only = 1 / session_only if session_only else float("inf")
    result = {
        "machine": f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}",
        "server_log_tail": server_log[-20:],
        "transcriber_ms_per_run": per_run,
        "callers": n,
        "completed": completed,
        "errors": errors,
        "stages_ms": {s: {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)} for s, v in stages.items()},
        "voice_to_voice_ms": {"p50": pct(v2v, 50), "p95": pct(v2v, 95), "n": len(v2v)},
        "runtime_owned_ms": {"p50": pct(owned, 50), "p95": pct(owned, 95)},
        "loop_lag_ms": health.get("loop_lag_ms"),
        "server_cpu_core_fraction": round(cpu / wall, 3),
        # the recognition worker processes (one per core): busy near 1.0 means answers queue
        "recognition_workers_core_fraction": [round(c / wall, 3) for c in workers.values()],
        "server_cpu_per_session": round(cpu_per_session, 4),
        "server_rss_mb": {
            "idle": round(rss0, 1),
            "loaded": round(peak_rss, 1),
            "per_session": round((peak_rss - rss0) / n, 2),
        },
        "server_cpu_split_core_fraction": {
            "synthesis_threads": round(threads["synthesis"] / wall, 3),
            "event_loop_thread": round(threads["event_loop"] / wall, 3),
            "other_threads": round((cpu - threads["synthesis"] - threads["event_loop"]) / wall, 3),
        },
        "server_cpu_per_session_without_synthesis": round(session_only, 4),
        "voice_sessions_per_core": round(sessions_per_core, 1),
        "voice_sessions_per_core_without_synthesis": round(sessions_per_core_only, 1),
        "raw_aiortc": {k: round(v, 4) for k, v in raw.items()},
        "raw_peers_per_core": round(raw_peers_per_core, 1),
        "ratio_vs_raw": round(sessions_per_core / raw_peers_per_core, 2),
        "ratio_vs_raw_without_synthesis": round(sessions_per_core_only / raw_peers_per_core, 2),
        "answers_measured": busy,
        "light_callers": not args.full_callers,
        "generator_core_fraction": round(load["generator_core_fraction"], 3),
        "generator_cpu_per_caller": round(load["generator_core_fraction"] / n, 4),
        "late_frames": sum(c["late_frames"] for c in load["callers"]),
        "frames_timed": sum(c["frames"] for c in load["callers"]),
        "max_lateness_ms": max((c.get("max_lateness_ms", 0.0) for c in load["callers"]), default=0.0),
        "completed_ok": completed == n and not errors,
        # per voice session, in cores: recognition = the worker processes; synthesis = the synthesis threads;
        # VAD = its measured cost per frame x 50 frames/s (it runs inside the event loop's frame callback);
        # transport = the rest of the server process (event loop: aiortc, pacing, resampling; codec threads)
        "cpu_per_session_split": {
            "recognition": round(sum(workers.values()) / wall / n, 4),
            "synthesis": round(threads["synthesis"] / wall / n, 4),
            "vad": round(vad_core_fraction(), 4),
            "transport": round(max(cpu - threads["synthesis"] - vad_core_fraction() * wall * n, 0.0) / wall / n, 4),
        },
    }
    return result


EOS_MS = 500  # the channel's default end-of-speech silence window


def within_targets(result: dict[str, Any]) -> bool:
    """The capacity criterion: client-measured voice-to-voice p95 <= eos + 600 ms, no late reply frame,
    every interview completed."""
    p95 = result["voice_to_voice_ms"]["p95"]
    return p95 is not None and p95 <= EOS_MS + 600 and result["late_frames"] == 0 and result["completed_ok"]


def vad_core_fraction() -> float:
    """Cores one session's VAD takes: the default detector on 20 ms frames of speech, 50 a second."""
    import soundfile as sf

    from media.vad import create_vad

    vad = create_vad("webrtc")
    pcm = sf.read(FIXTURES / "job.wav", dtype="int16")[0]
    frames = [pcm[i : i + 320] for i in range(0, len(pcm) - 320, 320)]
    t0 = time.perf_counter()
    for _ in range(5):
        for frame in frames:
            vad.speech_probability(frame)
    return (time.perf_counter() - t0) / (5 * len(frames)) * 50


def raw_ceiling(args: argparse.Namespace, steps: list[int]) -> tuple[int, list[dict[str, float]]]:
    """The most loopback aiortc pairs that keep real time (>= 99 % of frames in time), and each step."""
    best, tried = 0, []
    for n in steps:
        raw = run_child(["--child", "raw", "--child-args", json.dumps({"n": n, "seconds": args.raw_seconds})], 180)
        tried.append(raw)
        print(f"raw aiortc: {n} pairs, {raw['frames_received_ratio']:.3f} of frames, "
              f"{raw['cpu_core_fraction']:.2f} cores", flush=True)  # fmt: skip
        if raw["frames_received_ratio"] < 0.99:
            break
        best = n
    return best, tried


def capacity(args: argparse.Namespace) -> int:
    """The most concurrent callers within the targets, beside the raw aiortc ceiling of the same run."""
    steps = [int(x) for x in args.steps.split(",")]
    ceiling, raw_steps = raw_ceiling(args, steps)
    raw = raw_steps[-1]
    best, loads = 0, []
    for n in steps:
        result = load(n, args, raw)
        loads.append(result)
        ok = within_targets(result)
        print(f"{n} callers: v2v p50/p95 {result['voice_to_voice_ms']['p50']}/{result['voice_to_voice_ms']['p95']} ms, "
              f"late frames {result['late_frames']}, server {result['server_cpu_core_fraction']} cores, "
              f"generator {result['generator_core_fraction']} cores, split {result['cpu_per_session_split']}"
              f" -> {'ok' if ok else 'over'}", flush=True)  # fmt: skip
        if not ok:
            break
        best = n
    summary = {
        "machine": f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}",
        "load_average_at_start": os.getloadavg(),
        "capacity_callers": best,
        "raw_aiortc_ceiling_pairs": ceiling,
        "ratio": round(best / ceiling, 2) if ceiling else None,
        "steps": loads,
        "raw_steps": raw_steps,
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("steps", "raw_steps")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=10)
    parser.add_argument("--stagger", type=float, default=0.3, help="seconds between caller starts")
    parser.add_argument("--raw-seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--full-callers", action="store_true", help="callers that encode and decode every frame")
    parser.add_argument("--capacity", action="store_true", help="search the most callers within the targets")
    parser.add_argument("--steps", default="1,2,4,6,8,10,12,16", help="caller counts tried by --capacity")
    parser.add_argument("--child", choices=("raw", "callers"), help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "raw":
        opts = json.loads(args.child_args)
        print(json.dumps(asyncio.run(raw_pairs(opts["n"], opts["seconds"]))))
        return 0
    if args.child == "callers":
        print(json.dumps(asyncio.run(callers(**json.loads(args.child_args)))))
        return 0

    n = args.callers
    if args.capacity:
        return capacity(args)
    raw = run_child(["--child", "raw", "--child-args", json.dumps({"n": n, "seconds": args.raw_seconds})], 120)
    result = load(n, args, raw)
    print(json.dumps(result, indent=2))
    targets = [
        (
            f"voice-to-voice p50 <= eos + 250 ms ({EOS_MS + 250} ms)",
            (result["voice_to_voice_ms"]["p50"] or 1e9) <= EOS_MS + 250,
        ),
        (f"voice-to-voice p95 <= eos + 600 ms ({EOS_MS + 600} ms)", within_targets(result)),
        ("no reply frame late", result["late_frames"] == 0),
        ("every run completed", result["completed_ok"]),
    ]
    for name, ok in targets:
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
