#!/usr/bin/env bash
# The benchmark suite, bounded to 10 minutes on 2 cores, with every figure in one JSON file.
#
#   bench/run_all.sh [out.json]          (default bench-results.json)
#
# 1. bench/chat.py  --levels $CHAT_LEVELS (100,500)      at most $CHAT_LIMIT_S  (240 s)
# 2. bench/chat.py  --levels $CHAT_CLOSED_LEVELS (500), no typing delay (closed loop: each server's
#    ceiling)                                            at most $CHAT_CLOSED_LIMIT_S (120 s)
# 3. bench/voice.py --callers $VOICE_CALLERS (10)        at most $VOICE_LIMIT_S (150 s)
# 4. bench/soak.py  --runs $SOAK_RUNS (200), one voice run in $SOAK_VOICE_EVERY (20),
#    starting no run after $SOAK_DEADLINE_S (140 s)     at most $SOAK_LIMIT_S  (200 s)
#
# A step that fails or overruns its limit is killed and recorded as such ("status" in the JSON);
# the others still run. Run it on an idle machine: the load generators share the server's cores.
# Smaller, for a smoke test:
#   CHAT_LEVELS=50 CHAT_CLOSED_LEVELS=50 VOICE_CALLERS=2 SOAK_RUNS=30 bench/run_all.sh /tmp/smoke.json
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-bench-results.json}
CHAT_LEVELS=${CHAT_LEVELS:-100,500}
CHAT_LIMIT_S=${CHAT_LIMIT_S:-240}
CHAT_CLOSED_LEVELS=${CHAT_CLOSED_LEVELS:-500}
CHAT_CLOSED_LIMIT_S=${CHAT_CLOSED_LIMIT_S:-120}
VOICE_CALLERS=${VOICE_CALLERS:-10}
VOICE_RAW_S=${VOICE_RAW_S:-10}
VOICE_LIMIT_S=${VOICE_LIMIT_S:-150}
SOAK_RUNS=${SOAK_RUNS:-200}
SOAK_VOICE_EVERY=${SOAK_VOICE_EVERY:-20}
SOAK_WARMUP=${SOAK_WARMUP:-50}
SOAK_DEADLINE_S=${SOAK_DEADLINE_S:-140}
SOAK_LIMIT_S=${SOAK_LIMIT_S:-200}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STARTED=$(date +%s)
declare -A STATUS

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $WORK/NAME.log, remember how it ended
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $* (limit ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    local code=${PIPESTATUS[0]}
    case $code in
        0) STATUS[$name]=ok ;;
        124 | 137) STATUS[$name]="timeout after ${limit} s" ;;
        *) STATUS[$name]="exit $code" ;;
    esac
    echo "=== $name: ${STATUS[$name]}"
}

step chat "$CHAT_LIMIT_S" "$PY" bench/chat.py --levels "$CHAT_LEVELS" --json "$WORK/chat.json"
step chat_closed "$CHAT_CLOSED_LIMIT_S" "$PY" bench/chat.py --levels "$CHAT_CLOSED_LEVELS" --typing-min-ms 0 \
    --typing-max-ms 0 --level-timeout-s 20 --json "$WORK/chat_closed.json"
step voice "$VOICE_LIMIT_S" "$PY" bench/voice.py --callers "$VOICE_CALLERS" --raw-seconds "$VOICE_RAW_S" \
    --json "$WORK/voice.json"
step soak "$SOAK_LIMIT_S" "$PY" bench/soak.py --runs "$SOAK_RUNS" --voice-every "$SOAK_VOICE_EVERY" \
    --warmup "$SOAK_WARMUP" --sample-every 50 --deadline-s "$SOAK_DEADLINE_S" --json "$WORK/soak.json"

ELAPSED=$(($(date +%s) - STARTED))
WORK="$WORK" OUT="$OUT" ELAPSED="$ELAPSED" STATUS_CHAT="${STATUS[chat]}" STATUS_CHAT_CLOSED="${STATUS[chat_closed]}" STATUS_VOICE="${STATUS[voice]}" \
    STATUS_SOAK="${STATUS[soak]}" CHAT_LEVELS="$CHAT_LEVELS" VOICE_CALLERS="$VOICE_CALLERS" SOAK_RUNS="$SOAK_RUNS" \
    "$PY" - <<'EOF'
import json, os, platform, time
from pathlib import Path

work = Path(os.environ["WORK"])
doc = {
    "machine": {"cpus": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
                "python": platform.python_version()},
    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "elapsed_s": int(os.environ["ELAPSED"]),
    "settings": {"chat_levels": os.environ["CHAT_LEVELS"], "voice_callers": int(os.environ["VOICE_CALLERS"]),
                 "soak_runs": int(os.environ["SOAK_RUNS"])},
    "status": {name: os.environ[f"STATUS_{name.upper()}"] for name in ("chat", "chat_closed", "voice", "soak")},
}
for name in ("chat", "chat_closed", "voice", "soak"):
    path = work / f"{name}.json"
    doc[name] = json.loads(path.read_text()) if path.exists() else None
Path(os.environ["OUT"]).write_text(json.dumps(doc, indent=1))
print(f"suite: {doc['elapsed_s']} s, {doc['status']}; every figure in {os.environ['OUT']}")
EOF
for name in chat chat_closed voice soak; do
    [ "${STATUS[$name]}" = ok ] || exit 1
done
