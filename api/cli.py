"""The ``vivavoce`` command: ``serve`` and ``keys create``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from api.app import create_app
from api.bootstrap import bootstrap
from api.config import ServerConfig
from api.loadtest import cli as loadtest_cli
from api.state import STATE
from runtime.storage import Store


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="data directory (env VIVAVOCE_DATA_DIR, default ./.vivavoce)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (env VIVAVOCE_DATABASE_URL; default SQLite in data dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vivavoce", description="Voice and chat interview runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--host", help="listen address (env VIVAVOCE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (env VIVAVOCE_PORT, default 8080)")
    serve.add_argument("--public-url", help="base URL for join links (env VIVAVOCE_PUBLIC_URL)")
    serve.add_argument("--join-window-s", type=float, help="seconds a run can wait for its first join (default 86400)")
    serve.add_argument("--time-scale", type=float, help="multiply all runtime durations (testing; default 1)")
    serve.add_argument(
        "--ice-server",
        action="append",
        dest="ice_servers",
        metavar="URL",
        help="STUN/TURN server URL for voice (repeatable; default none; env VIVAVOCE_ICE_SERVERS)",
    )
    serve.add_argument(
        "--ice-host-address",
        action="append",
        dest="ice_host_addresses",
        metavar="IP",
        help="address to offer as a WebRTC host candidate (repeatable; e.g. 127.0.0.1 for local "
        "browsers; env VIVAVOCE_ICE_HOST_ADDRESSES)",
    )
    serve.add_argument("--speech-processes", type=int, help="recognition worker processes (default: one per core)")
    serve.add_argument(
        "--recognizer", choices=("whisper", "pocketsphinx"), help="speech-to-text engine (env VIVAVOCE_RECOGNIZER)"
    )
    serve.add_argument(
        "--recognizer-model",
        metavar="MODEL",
        help="Whisper model: tiny.en, base or a CTranslate2 Whisper folder, for every language "
        "(env VIVAVOCE_RECOGNIZER_MODEL; default tiny.en for English blueprints, base for others)",
    )
    serve.add_argument(
        "--turn-max-silence-ms",
        type=float,
        help="longest pause inside an answer that sounds unfinished (default 2000; env VIVAVOCE_TURN_MAX_SILENCE_MS)",
    )
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default=os.environ.get("VIVAVOCE_EVENT_LOOP", "uvloop"),
        help="event loop implementation (env VIVAVOCE_EVENT_LOOP, default uvloop: less CPU per frame and timer)",
    )
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key and print it once")
    _common(create)
    create.add_argument("--org", help="organization id (default: the one created on first start)")
    loadtest_cli.add_parser(sub)
    return parser


def _config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig.from_env(
        data_dir=args.data_dir,
        database_url=args.database_url,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        public_url=getattr(args, "public_url", None),
        join_window_s=getattr(args, "join_window_s", None),
        time_scale=getattr(args, "time_scale", None),
        ice_servers=tuple(args.ice_servers) if getattr(args, "ice_servers", None) else None,
        ice_host_addresses=tuple(args.ice_host_addresses) if getattr(args, "ice_host_addresses", None) else None,
        speech_processes=getattr(args, "speech_processes", None),
        recognizer=getattr(args, "recognizer", None),
        recognizer_model=getattr(args, "recognizer_model", None),
        turn_max_silence_ms=getattr(args, "turn_max_silence_ms", None),
    )


async def serve(config: ServerConfig) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    boot = await bootstrap(app[STATE].store, config)
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    out = sys.stdout
    print(f"vivavoce listening on {config.base_url}  (database: {config.db_url})", file=out)
    if boot.api_key:
        print(f"API key (shown once, store it now): {boot.api_key}", file=out)
    else:
        print("API key: created on first start; make another with `vivavoce keys create`", file=out)
    print(
        f"Demo blueprint {boot.blueprint_id}; chat channel {boot.chat_channel_id}; "
        f"voice channel {boot.voice_channel_id}",
        file=out,
    )
    print(f"Demo interview (chat): {boot.demo_join_url}", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def create_key(config: ServerConfig, org_id: str | None) -> int:
    store = Store(config.db_url, synchronous=config.sqlite_synchronous)
    await store.open()
    try:
        if org_id is None:
            marker = await store.catalog.get_setting("bootstrap")
            if marker is None:
                print("no organization yet: run `vivavoce serve` once first, or pass --org", file=sys.stderr)
                return 1
            org_id = marker["org_id"]
        print(await store.catalog.create_api_key(org_id))
        return 0
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "loadtest":
        return loadtest_cli.run(args)
    if args.command == "serve":
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        config = _config(args)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if args.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(config))
        else:
            asyncio.run(serve(config))
        return 0
    config = _config(args)
    if config.database_url is None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(create_key(config, args.org))


if __name__ == "__main__":
    raise SystemExit(main())
