"""The ``vivavoce`` command: ``serve``, ``orgs create|list``, ``keys create``, ``db upgrade`` and ``loadtest``.

The commands that manage an existing server's data (``orgs``, ``keys``) never
create a database: run from the wrong directory, they say where they looked
instead of leaving an empty database behind.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import resource
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from api.app import create_app
from api.bootstrap import Bootstrap, bootstrap
from api.config import ServerConfig
from api.loadtest import cli as loadtest_cli
from api.local_llm import LocalLLM, LocalLLMError, LocalLLMSettings
from api.state import STATE
from api.supervisor import READY, Supervisor, check_port_free, die_with_parent
from runtime.storage import Store, migrations
from runtime.storage.database import shown_url, sync_engine

HOSTED_OPTIONS = (
    "hosted_stt",
    "hosted_stt_url",
    "hosted_stt_model",
    "hosted_stt_key_env",
    "hosted_tts",
    "hosted_tts_url",
    "hosted_tts_model",
    "hosted_tts_voice",
    "hosted_tts_key_env",
    "hosted_timeout_s",
)

LLM_HINT = (
    "AI interviewer: off (scripted questions). Turn it on with --llm-base-url URL --llm-model NAME "
    "(any OpenAI-compatible server), or locally without a key: make local-llm && vivavoce serve --local-llm"
)


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
    serve.add_argument(
        "--webhooks-allow-private",
        action="store_true",
        default=None,
        help="let webhooks go to loopback, private and link-local addresses (local development only; "
        "env VIVAVOCE_WEBHOOKS_ALLOW_PRIVATE=1)",
    )
    serve.add_argument("--speech-processes", type=int, help="recognition worker processes (default: one per core)")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes on this machine, sharing the port (default 1; more need PostgreSQL; "
        "env VIVAVOCE_WORKERS; docs/deployment.md)",
    )
    serve.add_argument("--as-worker", type=int, dest="as_worker", help=argparse.SUPPRESS)  # set by the supervisor
    llm = serve.add_argument_group("AI interviewer (any OpenAI-compatible server; see docs/llm.md)")
    llm.add_argument("--llm-base-url", help="e.g. https://api.openai.com/v1 (env VIVAVOCE_LLM_BASE_URL)")
    llm.add_argument("--llm-api-key", help="API key (env VIVAVOCE_LLM_API_KEY; never stored or logged)")
    llm.add_argument("--llm-model", help="model when a blueprint names none (env VIVAVOCE_LLM_MODEL)")
    llm.add_argument("--llm-timeout-s", type=float, help="per chat turn before the script steps in (default 15)")
    llm.add_argument("--llm-voice-timeout-s", type=float, help="per voice turn (default 4)")
    llm.add_argument("--llm-tool-mode", choices=("auto", "tools", "json"), help="how decisions are asked for")
    llm.add_argument("--llm-prices", type=Path, help="JSON file of prices per model (env VIVAVOCE_LLM_PRICES: JSON)")
    phone = serve.add_argument_group("telephony through Twilio (see docs/telephony.md)")
    phone.add_argument(
        "--twilio-account-sid",
        help="Twilio account SID (env VIVAVOCE_TWILIO_ACCOUNT_SID); the auth token is read from "
        "VIVAVOCE_TWILIO_AUTH_TOKEN only, never from a flag",
    )
    phone.add_argument("--twilio-api-url", help="Twilio REST API base URL (default https://api.twilio.com)")
    serve.add_argument(
        "--synthesizer",
        help="embedded voice: auto (Piper for English, eSpeak NG otherwise; default), piper or espeak "
        "(env VIVAVOCE_SYNTHESIZER)",
    )
    hosted = serve.add_argument_group("hosted engines (docs/speech.md; keys only from the environment)")
    hosted.add_argument("--hosted-stt", choices=("openai", "deepgram"), help="env VIVAVOCE_HOSTED_STT")
    hosted.add_argument("--hosted-stt-url", help="base URL (env VIVAVOCE_HOSTED_STT_URL)")
    hosted.add_argument("--hosted-stt-model", help="env VIVAVOCE_HOSTED_STT_MODEL")
    hosted.add_argument("--hosted-stt-key-env", metavar="VAR", help="variable holding the key (default "
                        "OPENAI_API_KEY / DEEPGRAM_API_KEY; env VIVAVOCE_HOSTED_STT_KEY_ENV)")  # fmt: skip
    hosted.add_argument("--hosted-tts", choices=("openai",), help="env VIVAVOCE_HOSTED_TTS")
    hosted.add_argument("--hosted-tts-url", help="base URL (env VIVAVOCE_HOSTED_TTS_URL)")
    hosted.add_argument("--hosted-tts-model", help="env VIVAVOCE_HOSTED_TTS_MODEL")
    hosted.add_argument("--hosted-tts-voice", help="env VIVAVOCE_HOSTED_TTS_VOICE")
    hosted.add_argument("--hosted-tts-key-env", metavar="VAR", help="variable holding the key (default "
                        "OPENAI_API_KEY; env VIVAVOCE_HOSTED_TTS_KEY_ENV)")  # fmt: skip
    hosted.add_argument("--hosted-timeout-s", type=float, help="a slower hosted call falls back (default 8)")
    serve.add_argument(
        "--local-llm",
        action="store_true",
        default=None,
        help="run a local LLM (llama.cpp's server, SmolLM2) for the AI interviewer; install it with "
        "`make local-llm` (env VIVAVOCE_LOCAL_LLM=1)",
    )
    serve.add_argument("--local-llm-model", type=Path, metavar="FILE", help="GGUF model for --local-llm")
    serve.add_argument("--local-llm-threads", type=int, help="CPU threads of the local LLM (default 1)")
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
    create.add_argument("--org", help="organization id or name (default: the one created on first start)")
    orgs = sub.add_parser("orgs", help="manage organizations (each has its own API keys and data)")
    orgs_sub = orgs.add_subparsers(dest="orgs_command", required=True)
    org_create = orgs_sub.add_parser("create", help="create an organization and print its id")
    _common(org_create)
    org_create.add_argument("name", help="the organization's name")
    org_list = orgs_sub.add_parser("list", help="list organizations")
    _common(org_list)
    db = sub.add_parser("db", help="manage the database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply schema migrations (serve does this on start)")
    _common(upgrade)
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
        webhooks_allow_private=getattr(args, "webhooks_allow_private", None),
        llm_base_url=getattr(args, "llm_base_url", None),
        llm_api_key=getattr(args, "llm_api_key", None),
        llm_model=getattr(args, "llm_model", None),
        llm_timeout_s=getattr(args, "llm_timeout_s", None),
        llm_voice_timeout_s=getattr(args, "llm_voice_timeout_s", None),
        llm_tool_mode=getattr(args, "llm_tool_mode", None),
        llm_prices=_read_prices(getattr(args, "llm_prices", None)),
        synthesizer=getattr(args, "synthesizer", None),
        twilio_account_sid=getattr(args, "twilio_account_sid", None),
        twilio_api_url=getattr(args, "twilio_api_url", None),
        **{name: getattr(args, name, None) for name in HOSTED_OPTIONS},
        local_llm=getattr(args, "local_llm", None),
        local_llm_model=getattr(args, "local_llm_model", None),
        local_llm_threads=getattr(args, "local_llm_threads", None),
        recognizer=getattr(args, "recognizer", None),
        recognizer_model=getattr(args, "recognizer_model", None),
        turn_max_silence_ms=getattr(args, "turn_max_silence_ms", None),
        workers=getattr(args, "workers", None),
        worker=getattr(args, "as_worker", None),
    )


def _read_prices(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the LLM prices file {path}: {exc.strerror}") from None


async def serve(config: ServerConfig, argv: list[str]) -> int:
    """Run until SIGINT/SIGTERM; with ``local_llm``, the local LLM is started first and stopped last (one per
    machine: a ``--workers`` supervisor runs it for its workers). Returns the exit status."""
    if config.worker is not None:  # a worker of `--workers`: its supervisor did the once-per-machine work
        await serve_app(config)
        return 0
    if not config.local_llm:
        return await serve_machine(config, argv)
    settings = LocalLLMSettings(model_path=config.local_llm_model, threads=config.local_llm_threads)
    async with LocalLLM(config.data_dir / "local-llm.log", settings) as llm:
        print(f"Local LLM {llm.model} at {llm.base_url}  (log: {llm.log_path})", flush=True)
        # A small model on one core needs seconds per turn: longer deadlines unless given, and a warm prompt cache.
        local = dataclasses.replace(
            config,
            llm_base_url=llm.base_url,
            llm_model=llm.model,
            llm_warm_up=True,
            llm_timeout_s=config.llm_timeout_s if config.llm_timeout_s != ServerConfig.llm_timeout_s else 40.0,
            llm_voice_timeout_s=config.llm_voice_timeout_s
            if config.llm_voice_timeout_s != ServerConfig.llm_voice_timeout_s
            else 10.0,
        )
        return await serve_machine(local, argv)


async def serve_machine(config: ServerConfig, argv: list[str]) -> int:
    """One process, or (``--workers N``) a supervisor and its N workers."""
    if config.workers == 1:
        await serve_app(config)
        return 0
    busy = check_port_free(config.host, config.port)
    if busy is not None:
        print(f"vivavoce serve: {busy}", file=sys.stderr)
        return 1
    store = Store(config.db_url, synchronous=config.sqlite_synchronous)
    await store.open()  # the migrations, once, before any worker starts
    try:
        async with store.db.exclusive("bootstrap"):
            boot = await bootstrap(store, config)
    finally:
        await store.close()
    _banner(config, boot)
    env = dict(os.environ)
    if config.local_llm:  # the workers use this machine's local LLM, with its settings
        env.update(
            VIVAVOCE_LLM_BASE_URL=config.llm_base_url or "",
            VIVAVOCE_LLM_MODEL=config.llm_model or "",
            VIVAVOCE_LLM_WARM_UP="1",
            VIVAVOCE_LLM_TIMEOUT_S=str(config.llm_timeout_s),
            VIVAVOCE_LLM_VOICE_TIMEOUT_S=str(config.llm_voice_timeout_s),
        )
    return await Supervisor(config, argv, env=env).run()


async def serve_app(config: ServerConfig) -> None:
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    worker = config.worker is not None
    if not worker:
        async with app[STATE].store.db.exclusive("bootstrap"):  # processes starting at once: one bootstraps
            boot = await bootstrap(app[STATE].store, config)
    # a worker shares the port with its siblings (the kernel spreads connections over them)
    site = web.TCPSite(runner, config.host, config.port, reuse_port=worker or None)
    await site.start()
    if worker:
        print(f"{READY}: worker {config.worker}, pid {os.getpid()}, process {app[STATE].live.ownership.id}", flush=True)
    else:
        _banner(config, boot)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()  # drains: the listening socket closes, every live run is handed over


def _banner(config: ServerConfig, boot: Bootstrap) -> None:
    out = sys.stdout
    print(f"vivavoce listening on {config.base_url}  (database: {shown_url(config.db_url)})", file=out)
    if boot.api_key:
        print(f"API key (shown once, store it now): {boot.api_key}", file=out)
    else:
        print("API key: created on first start; make another with `vivavoce keys create`", file=out)
    print(
        f"Demo blueprint {boot.blueprint_id}; chat channel {boot.chat_channel_id}; "
        f"voice channel {boot.voice_channel_id}",
        file=out,
    )
    if config.llm_base_url is None:
        print(LLM_HINT, file=out)
    print(f"Demo interview (chat): {boot.demo_join_url}", file=out, flush=True)


async def create_key(config: ServerConfig, org: str | None) -> int:
    store = Store(config.db_url, synchronous=config.sqlite_synchronous)
    await store.open()
    try:
        if org is None:
            marker = await store.catalog.get_setting("bootstrap")
            if marker is None:
                print("no organization yet: run `vivavoce serve` once first, or pass --org", file=sys.stderr)
                return 1
            org_id = marker["org_id"]
        else:
            found = await store.catalog.find_organization(org)
            if found is None:
                print(f"no organization {org!r} (by id or name); `vivavoce orgs list` shows them", file=sys.stderr)
                return 1
            org_id = found.id
        print(await store.catalog.create_api_key(org_id))
        return 0
    finally:
        await store.close()


async def create_org(config: ServerConfig, name: str) -> int:
    if not name.strip():
        print("an organization needs a name", file=sys.stderr)
        return 1
    store = Store(config.db_url, synchronous=config.sqlite_synchronous)
    await store.open()
    try:
        org_id = await store.catalog.create_organization(name.strip())
    finally:
        await store.close()
    print(org_id)
    print(f"make its first API key with: vivavoce keys create --org {org_id}", file=sys.stderr)
    return 0


async def list_orgs(config: ServerConfig) -> int:
    store = Store(config.db_url, synchronous=config.sqlite_synchronous)
    await store.open()
    try:
        orgs = await store.catalog.list_organizations()
    finally:
        await store.close()
    print(f"{'id':<30}  {'keys':>4}  {'created (UTC)':<16}  {'retention':<9}  name")
    for org in orgs:
        created = datetime.fromtimestamp(org.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        kept = f"{org.retention_days} d" if org.retention_days else "kept"
        print(f"{org.id:<30}  {org.api_keys:>4}  {created:<16}  {kept:<9}  {org.name}")
    return 0


def existing_database(config: ServerConfig) -> str | None:
    """Why the data commands cannot run here (no database where they looked), or None if there is one."""
    if config.database_url is not None:
        return None
    path = config.data_dir / "vivavoce.db"
    if path.is_file():
        return None
    return (
        f"no database at {path.resolve()}: run this where `vivavoce serve` runs, "
        "or pass --data-dir (or --database-url) to point at the server's data"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "loadtest":
        return loadtest_cli.run(args)
    if args.command == "serve":
        worker = getattr(args, "as_worker", None)
        if worker is not None and "VIVAVOCE_PARENT_PID" in os.environ:
            die_with_parent(int(os.environ["VIVAVOCE_PARENT_PID"]))
        who = f"{'main' if worker is None else f'worker-{worker}'}/%(process)d"  # which process a log line is from
        logging.basicConfig(
            level=args.log_level.upper(), format=f"%(asctime)s %(levelname)s [{who}] %(name)s: %(message)s"
        )
        try:
            config = _config(args)
            if config.workers > 1 and config.worker is None and config.port == 0:
                raise ValueError("--workers needs a fixed --port (the workers share it)")
        except ValueError as exc:  # a setting that cannot work: say which, before anything starts
            print(f"vivavoce serve: {exc}", file=sys.stderr)
            return 2
        config.data_dir.mkdir(parents=True, exist_ok=True)
        raise_open_files_limit()
        command = list(sys.argv[1:] if argv is None else argv)
        try:
            if args.event_loop == "uvloop":
                import uvloop

                return uvloop.run(serve(config, command))
            return asyncio.run(serve(config, command))
        except LocalLLMError as e:
            print(f"vivavoce: {e}", file=sys.stderr)
            return 1
    config = _config(args)
    if args.command == "db":
        if config.database_url is None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        return upgrade_database(config)
    missing = existing_database(config)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    if args.command == "orgs":
        if args.orgs_command == "create":
            return asyncio.run(create_org(config, args.name))
        return asyncio.run(list_orgs(config))
    return asyncio.run(create_key(config, args.org))


def raise_open_files_limit() -> None:
    """Every participant holds a socket: allow as many open files as the system lets this user have
    (the soft limit is often 1024, a few hundred sessions after the database's and the workers' own)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logging.getLogger("vivavoce").warning("could not raise the open files limit: %s", exc)


def upgrade_database(config: ServerConfig) -> int:
    engine = sync_engine(config.db_url)
    try:
        before = migrations.current(engine)
        after = migrations.upgrade(engine)
    finally:
        engine.dispose()
    print(f"database {shown_url(config.db_url)}: {before or 'empty'} -> {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
