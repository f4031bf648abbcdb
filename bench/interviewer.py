"""The AI interviewer's cost beyond the model's own time, the gain from speculative replies, and prompt size.

    .venv/bin/python bench/interviewer.py chat   [--sessions 10] [--ttft-ms 300] [--piece-ms 15]
    .venv/bin/python bench/interviewer.py voice  [--callers 1] [--turns 3]
    .venv/bin/python bench/interviewer.py prompt [--questions 30]
    .venv/bin/python bench/interviewer.py chat|voice --llm-base-url http://127.0.0.1:PORT/v1 --llm-model M

By default the model is the protocol-faithful fake (tests/fakes/openai_server.py) at a fixed time to
first token and a fixed pace per streamed piece, in this process; the server under test is a
``vivavoce serve`` subprocess pointed at it. The fake records, per request, when it arrived, when its
first piece and its first complete sentence went out, and when it finished: that is the model's time,
the raw ceiling an ideal runtime would add nothing to.

* chat: a turn = answer sent → the interviewer's message received; runtime overhead = turn − the
  model's time for that answer (request received → last piece sent).
* voice: voice-to-voice = end of the caller's speech → first reply audio heard; runtime-owned = that −
  the stored breakdown's eos, transcriber and tts − the model's time to its first sentence (request
  received → sentence complete). Run with speculation on and off (``VIVAVOCE_SPECULATE``) to see the
  gain; the server reports speculations used and wasted.
* prompt: prompt tokens (the fake's estimate, 4 characters a token) by turn over a long interview.

With ``--llm-base-url`` the model is a real server (e.g. llama.cpp with SmolLM2): no model timings
from the inside, so the figures are time to first token, tokens/s (measured by streaming the
interviewer's own prompt directly) and the end-to-end turn or voice-to-voice percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import aiohttp  # noqa: E402
import websockets  # noqa: E402
from served import free_port, start_server  # noqa: E402

from tests.fakes.openai_server import FakeOpenAI, Reply  # noqa: E402

FOLLOW_UP = "That sounds like it takes a while. What do you usually do while you wait for it to arrive?"
ACK = "Thanks, I see."


def guide(questions: int, probes: int) -> dict[str, Any]:
    return {
        "name": "Bench interview",
        "greeting": "Hello, and thank you for taking part.",
        "questions": [
            {"id": f"q{i}", "text": f"Question {i}: how did your week go?", "max_probes": probes}
            for i in range(1, questions + 1)
        ],
        "closing": "That is all. Thank you.",
        "interviewer": {"type": "llm"},
    }


def moderator(ttft_s: float, piece_s: float) -> Any:
    asked = iter(range(1, 1_000_000))

    def reply(body: dict[str, Any]) -> Reply:
        system = body["messages"][0]["content"]
        if system.startswith(("You summarise", "You extract")):
            return Reply(json.dumps({"overall": "ok", "questions": []}))
        actions = body["tools"][0]["function"]["parameters"]["properties"]["action"]["enum"]
        follow_up = FOLLOW_UP.replace("wait", f"wait, the {next(asked)}th time")  # never the same question twice
        text, action = (follow_up, "follow_up") if "follow_up" in actions else (ACK, "next_question")
        arguments = {"action": action, "text": text}
        return Reply(tool={"name": "respond", "arguments": arguments}, ttft=ttft_s, token_delay=piece_s, piece=6)

    return reply


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)


def summary(name: str, values: list[float]) -> dict[str, Any]:
    return {"name": name, "n": len(values), "p50": pct(values, 50), "p95": pct(values, 95)}


async def api(http: aiohttp.ClientSession, url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        data = await resp.json()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data


# --- chat ---------------------------------------------------------------------------------------


async def chat_session(url: str, key: str, blueprint: str, channel: str, http: aiohttp.ClientSession) -> list[Any]:
    run = await api(http, url, key, "POST", "/v1/runs", {"blueprint_id": blueprint, "channel_id": channel})
    turns: list[tuple[str, float, float]] = []  # (answer, sent, message received) on the monotonic clock
    async with websockets.connect(run["join_url"].replace("http", "ws", 1) + "/ws") as ws:
        n, sent, answer = 0, 0.0, ""
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "run.ended":
                break
            if frame["type"] != "message" or frame["message"]["kind"] not in ("question", "probe", "closing"):
                continue
            if answer:
                turns.append((answer, sent, time.monotonic()))
            if frame["message"]["kind"] == "closing":
                continue
            await asyncio.sleep(0.2)  # the participant reads, then answers at once
            n += 1
            answer = f"Answer {n} of run {run['id'][-8:]}: it went well, mostly, thank you for asking."
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "message", "content": answer, "client_id": f"c{n}"}))
    return turns


async def bench_chat(args: argparse.Namespace) -> dict[str, Any]:
    fake = (
        None
        if args.llm_base_url
        else await FakeOpenAI(responder=moderator(args.ttft_ms / 1000, args.piece_ms / 1000)).start()
    )
    base_url = args.llm_base_url or (fake.base_url if fake else "")
    data = Path(tempfile.mkdtemp(prefix="vv-bench-llm-"))
    env = {"VIVAVOCE_LLM_BASE_URL": base_url, "VIVAVOCE_LLM_MODEL": args.llm_model}
    proc, info = start_server(data, port := free_port(), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            bp = await api(http, url, info["key"], "POST", "/v1/blueprints", guide(args.questions, 1))
            await api(http, url, info["key"], "POST", f"/v1/blueprints/{bp['id']}/publish")
            sessions = await asyncio.gather(
                *(chat_session(url, info["key"], bp["id"], info["chat_channel"], http) for _ in range(args.sessions))
            )
    finally:
        proc.terminate()
        proc.wait(10)
        if fake is not None:
            await fake.stop()
    turns = [t for s in sessions for t in s]
    turn_ms = [(got - sent) * 1000 for _, sent, got in turns]
    out: dict[str, Any] = {"bench": "chat", "sessions": args.sessions, "turns": [summary("turn_ms", turn_ms)]}
    if fake is not None:
        model = {t["answer"]: t for t in fake.timings if "done" in t}
        overhead, model_ms = [], []
        for answer, sent, got in turns:
            timing = model.get(answer)
            if timing is None:
                continue
            model_ms.append((timing["done"] - timing["received"]) * 1000)
            overhead.append((got - sent) * 1000 - model_ms[-1])
        out["turns"] += [summary("model_ms (raw ceiling: the model alone)", model_ms), summary("overhead_ms", overhead)]
        out["overhead_ms_max"] = round(max(overhead, default=0.0), 1)
        out["first_turns_overhead_ms"] = [round(o, 1) for o in overhead[:: args.questions * 2]]  # a cold client
        out["target"] = "overhead p95 <= 50 ms"
    return out


# --- voice --------------------------------------------------------------------------------------


async def voice_callers(url: str, key: str, blueprint: str, channel: str, n: int, turns: int) -> list[dict[str, Any]]:
    import soundfile as sf

    from media.caller import VoiceCaller
    from media.webrtc import configure_host_addresses

    configure_host_addresses(["127.0.0.1"])
    fixtures = ROOT / "fixtures" / "answers"
    manifest = {a["id"]: a for a in json.loads((fixtures / "answers.json").read_text())}
    ids = ["job", "home", "breakfast", "favorite", "commute"][:turns]
    audio = {a: sf.read(fixtures / manifest[a]["file"], dtype="int16")[0] for a in ids}
    trailing = {a: manifest[a]["duration_s"] - manifest[a]["speech_end_s"] for a in ids}

    async def quiet(caller: Any) -> None:
        while (last := caller.heard.last_audible()) is None or last > time.time() - 0.6:
            await asyncio.sleep(0.05)

    async def one(i: int, http: aiohttp.ClientSession) -> dict[str, Any]:
        await asyncio.sleep(i * 0.7)
        run = await api(http, url, key, "POST", "/v1/runs", {"blueprint_id": blueprint, "channel_id": channel})
        caller = VoiceCaller(light=True)
        record: dict[str, Any] = {"run_id": run["id"], "v2v": [], "error": None}
        try:
            await caller.join(http, run["join_url"], timeout=30)
            await caller.wait_event(lambda ev: ev.get("type") == "message", 60)
            for answer in ids:
                await quiet(caller)
                spoken_until = await caller.say(audio[answer])
                heard = await caller.heard_after(spoken_until, 30)
                record["v2v"].append((heard - (spoken_until - trailing[answer])) * 1000)
        except Exception as exc:
            record["error"] = repr(exc)
        finally:
            await caller.close()
        return record

    async with aiohttp.ClientSession() as http:
        return list(await asyncio.gather(*(one(i, http) for i in range(n))))


async def bench_voice_once(args: argparse.Namespace, *, speculate: bool) -> dict[str, Any]:
    fake = (
        None
        if args.llm_base_url
        else await FakeOpenAI(responder=moderator(args.ttft_ms / 1000, args.piece_ms / 1000)).start()
    )
    base_url = args.llm_base_url or (fake.base_url if fake else "")
    data = Path(tempfile.mkdtemp(prefix="vv-bench-llm-voice-"))
    env = {
        "VIVAVOCE_LLM_BASE_URL": base_url,
        "VIVAVOCE_LLM_MODEL": args.llm_model,
        "VIVAVOCE_SPECULATE": str(int(speculate)),
    }
    proc, info = start_server(data, port := free_port(), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            key = info["key"]
            bp = await api(http, url, key, "POST", "/v1/blueprints", guide(args.turns, 1))
            await api(http, url, key, "POST", f"/v1/blueprints/{bp['id']}/publish")
            channel = await api(http, url, key, "POST", "/v1/channels", {"type": "webrtc_voice", "name": "v"})
            records = await voice_callers(url, key, bp["id"], channel["id"], args.callers, args.turns)
            stats = (await api(http, url, key, "GET", "/v1/debug/runtime"))["speculation"]
            runs = [await api(http, url, key, "GET", f"/v1/runs/{r['run_id']}?expand=transcript") for r in records]
    finally:
        proc.terminate()
        proc.wait(10)
        if fake is not None:
            await fake.stop()
    v2v = [v for r in records for v in r["v2v"]]
    out: dict[str, Any] = {
        "speculate": speculate,
        "callers": args.callers,
        "errors": [r["error"] for r in records if r["error"]],
        "v2v_ms": summary("voice_to_voice_ms", v2v),
        "speculation": {k: v for k, v in stats.items() if k != "lead_ms"},
    }
    # what the runtime owns: voice-to-voice minus the silence window, the speech engines and the model
    if fake is not None:
        first_sentence = {
            t["answer"]: (t.get("sentence", t.get("done", 0)) - t["received"]) * 1000 for t in fake.timings
        }
        owned: list[float] = []
        for record, run in zip(records, runs, strict=True):
            replies = [
                (before, m)
                for before, m in zip(run["transcript"], run["transcript"][1:], strict=False)
                if before["role"] == "user" and m["role"] == "assistant" and (m["latency_breakdown"] or {}).get("eos")
            ]
            for v, (before, m) in zip(record["v2v"], replies, strict=False):
                lat = m["latency_breakdown"]
                model_ms = first_sentence.get(before["content"])
                if model_ms is None:
                    model_ms = max(first_sentence.values(), default=0.0)  # the recogniser's words differ: close
                hidden = lat["llm"] or 0.0  # with speculation, the model's time overlapped the silence window
                engines = (lat["eos"] or 0) + (lat["transcriber"] or 0) + (lat["tts"] or 0)
                owned.append(v - engines - min(model_ms, hidden if speculate else model_ms))
        out["runtime_owned_ms"] = summary("runtime_owned_ms", owned)
        out["model_first_sentence_ms"] = summary("model_first_sentence_ms (raw ceiling)", list(first_sentence.values()))
    return out


async def bench_voice(args: argparse.Namespace) -> dict[str, Any]:
    on = await bench_voice_once(args, speculate=True)
    off = await bench_voice_once(args, speculate=False)
    gain = None
    if on["v2v_ms"]["p50"] is not None and off["v2v_ms"]["p50"] is not None:
        gain = round(off["v2v_ms"]["p50"] - on["v2v_ms"]["p50"], 1)
    spec = on["speculation"]
    wasted_share = spec["wasted"] / spec["started"] if spec["started"] else None
    return {"bench": "voice", "with_speculation": on, "without": off, "p50_gain_ms": gain,
            "wasted_share": wasted_share, "target": "runtime-owned p95 <= 100 ms"}  # fmt: skip


# --- prompt size ----------------------------------------------------------------------------------


async def bench_prompt(args: argparse.Namespace) -> dict[str, Any]:
    args.sessions = 1
    fake = await FakeOpenAI(responder=moderator(0.0, 0.0)).start()
    data = Path(tempfile.mkdtemp(prefix="vv-bench-prompt-"))
    env = {"VIVAVOCE_LLM_BASE_URL": fake.base_url, "VIVAVOCE_LLM_MODEL": "fake-model"}
    proc, info = start_server(data, port := free_port(), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            bp = await api(http, url, info["key"], "POST", "/v1/blueprints", guide(args.questions, 1))
            await api(http, url, info["key"], "POST", f"/v1/blueprints/{bp['id']}/publish")
            await chat_session(url, info["key"], bp["id"], info["chat_channel"], http)
    finally:
        proc.terminate()
        proc.wait(10)
        await fake.stop()
    tokens = [t["prompt_tokens"] for t in fake.timings if "prompt_tokens" in t]
    picks = sorted({0, len(tokens) // 4, len(tokens) // 2, 3 * len(tokens) // 4, len(tokens) - 1})
    return {"bench": "prompt", "questions": args.questions, "turns": len(tokens),
            "prompt_tokens_by_turn": {i + 1: tokens[i] for i in picks if 0 <= i < len(tokens)},
            "max": max(tokens, default=None)}  # fmt: skip


async def model_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Time to first token and tokens/s of a real server, on an interviewer-sized prompt."""
    from runtime.llm import ChatMessage, ChatRequest, TextDelta, ToolCallDelta, Usage
    from runtime.llm.openai_compat import OpenAICompatModel

    model = OpenAICompatModel(base_url=args.llm_base_url)
    prompt = [ChatMessage("system", "You are a research interviewer. " * 60), ChatMessage("user", "I take the train.")]
    ttft, rate = [], []
    try:
        for _ in range(args.samples):
            sent, first, tokens, pieces = time.monotonic(), None, 0, 0
            async for chunk in model.stream(ChatRequest(args.llm_model, prompt, max_tokens=40), timeout=120):
                if isinstance(chunk, TextDelta | ToolCallDelta):
                    pieces += 1  # llama.cpp streams a token a chunk, and sends no usage when streaming
                    if first is None:
                        first = time.monotonic()
                if isinstance(chunk, Usage):
                    tokens = chunk.output_tokens
            tokens = tokens or pieces
            end = time.monotonic()
            if first is not None:
                ttft.append((first - sent) * 1000)
                if tokens > 1 and end > first:
                    rate.append((tokens - 1) / (end - first))
    finally:
        await model.aclose()
    return {"ttft_ms": summary("ttft_ms", ttft), "tokens_per_s": summary("tokens_per_s", rate)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = {"chat": bench_chat, "voice": bench_voice, "prompt": bench_prompt}[args.what]
    if not args.local_llm:
        result = await bench(args)
        if args.llm_base_url and args.what != "prompt":
            result["model"] = await model_speed(args)
        return result
    from api.local_llm import LocalLLM

    log = Path(tempfile.mkdtemp(prefix="vv-bench-local-llm-")) / "server.log"
    async with LocalLLM(log) as llm:
        args.llm_base_url, args.llm_model = llm.base_url, llm.model
        # as `vivavoce serve --local-llm` sets them: a small model on one core needs seconds per turn
        os.environ.update(
            {"VIVAVOCE_LLM_WARM_UP": "1", "VIVAVOCE_LLM_TIMEOUT_S": "40", "VIVAVOCE_LLM_VOICE_TIMEOUT_S": "10"}
        )
        result = await bench(args)
        result["model"] = await model_speed(args)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("chat", "voice", "prompt"))
    parser.add_argument("--sessions", type=int, default=10, help="chat: concurrent interviews")
    parser.add_argument("--questions", type=int, default=4, help="questions per interview (prompt: 30)")
    parser.add_argument("--callers", type=int, default=1, help="voice: concurrent callers")
    parser.add_argument("--turns", type=int, default=3, help="voice: answers per caller")
    parser.add_argument("--ttft-ms", type=float, default=300.0, help="fake model: time to first token")
    parser.add_argument("--piece-ms", type=float, default=15.0, help="fake model: time per streamed piece (6 chars)")
    parser.add_argument("--llm-base-url", help="a real OpenAI-compatible server instead of the fake")
    parser.add_argument(
        "--local-llm", action="store_true", help="start the local LLM (llama.cpp + SmolLM2, make local-llm) and use it"
    )
    parser.add_argument("--llm-model", default="fake-model")
    parser.add_argument("--samples", type=int, default=10, help="real server: streams for ttft and tokens/s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.what == "prompt" and args.questions == 4:
        args.questions = 30
    started = time.time()
    result: dict[str, Any] = asyncio.run(run(args))
    result["load_average"] = os.getloadavg()
    result["seconds"] = round(time.time() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
