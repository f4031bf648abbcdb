"""The raw ceiling for bench/chat.py: a bare aiohttp websocket server that speaks the chat protocol's shape.

No storage, no locks, no interviewer: on connect it sends ``session.ready``, a
greeting and the first question; each participant ``message`` frame gets a
``message.ack`` and the next question at once, and after the last answer a
closing message, ``run.ended`` and close code 1000. Frames carry message
objects with the same fields and texts as the real server's (the demo
blueprint), so sizes and counts per turn match what vivavoce sends.

    python bench/echo_server.py --port 8099 [--questions 3] [--reuse-port]

With ``--reuse-port`` several of them share the port (``SO_REUSEPORT``), as ``vivavoce serve --workers N`` does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

GREETING = "Hello, and thank you for taking part. I will ask you three short questions about your mornings."
QUESTIONS = (
    ("wake", "What time do you usually wake up, and what is the first thing you do?"),
    ("breakfast", "Thank you. Tell me about your breakfast on a typical weekday."),
    ("change", "Thanks, that's helpful. If you could change one thing about your mornings, what would it be and why?"),
)
CLOSING = "I see, thank you. That is all I wanted to ask. Thank you very much for your time. Goodbye!"
LATENCY = {"network": 0.1, "initial_wait": 0.5, "transcriber": None, "eos": None, "eos_wait": None, "llm": 0.1}
LATENCY["tts"] = None
_ids = itertools.count(1)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(run_id: str, role: str, content: str, *, kind: str | None, qid: str | None, client_id: str | None = None):
    now = time.time()
    return {
        "id": f"msg_{next(_ids):026d}",
        "object": "message",
        "run_id": run_id,
        "session_id": "ses_01J0000000000000000000000",
        "role": role,
        "content": content,
        "question_id": qid,
        "kind": kind,
        "is_filler": False,
        "is_interrupted": False,
        "started_at": _iso(now),
        "ended_at": _iso(now),
        "start_offset_s": 1.234,
        "end_offset_s": 1.234,
        "latency_breakdown": None if role == "user" else LATENCY,
        "client_id": client_id,
    }


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


async def join_socket(request: web.Request) -> web.WebSocketResponse:
    questions = request.app["questions"]
    ws = web.WebSocketResponse(max_msg_size=1024 * 1024)
    await ws.prepare(request)
    run_id = "run_" + request.match_info["token"][:26].ljust(26, "0")
    ready = {"type": "session.ready", "run_id": run_id, "session_id": "ses_x", "resumed": False, "messages": []}
    await ws.send_str(dumps(ready))
    greeting = message(run_id, "assistant", GREETING, kind="greeting", qid=None)
    await ws.send_str(dumps({"type": "message", "message": greeting}))
    qid, text = QUESTIONS[0]
    first = message(run_id, "assistant", text, kind="question", qid=qid)
    await ws.send_str(dumps({"type": "message", "message": first}))
    asked = 1
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        frame = json.loads(msg.data)
        if frame.get("type") == "ping":
            await ws.send_str(dumps({"type": "pong", "t": frame.get("t")}))
            continue
        if frame.get("type") != "message":
            continue
        client_id = frame.get("client_id")
        qid = QUESTIONS[(asked - 1) % len(QUESTIONS)][0]
        stored = message(run_id, "user", frame.get("content", ""), kind=None, qid=qid, client_id=client_id)
        await ws.send_str(dumps({"type": "message.ack", "client_id": client_id, "message": stored}))
        if asked < questions:
            qid, text = QUESTIONS[asked % len(QUESTIONS)]
            asked += 1
            reply = message(run_id, "assistant", text, kind="question", qid=qid)
            await ws.send_str(dumps({"type": "message", "message": reply}))
        else:
            reply = message(run_id, "assistant", CLOSING, kind="closing", qid=None)
            await ws.send_str(dumps({"type": "message", "message": reply}))
            await ws.send_str(dumps({"type": "run.ended", "status": "completed", "reason": "completed"}))
            await ws.close(code=1000, message=b"run ended")
            break
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(questions: int = 3) -> web.Application:
    app = web.Application()
    app["questions"] = questions
    app.router.add_get("/join/{token}/ws", join_socket)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other echo processes")
    args = parser.parse_args()
    print(f"echo server listening on http://{args.host}:{args.port}", flush=True)
    web.run_app(
        make_app(args.questions), host=args.host, port=args.port, print=None, access_log=None,
        reuse_port=args.reuse_port or None,
    )  # fmt: skip


if __name__ == "__main__":
    main()
