"""First audio of a reply, per embedded voice: how long after its text a reply's first chunk is ready.

    .venv/bin/python bench/tts.py [--rounds 3]

Each reply of an interview's worth (questions, probes, acknowledgements, a long closing) is made on
one synthesis thread (media/synthesis.py) as a voice session would, one at a time; printed per
engine: first-chunk latency p50/p95, total time and real-time factor (CPU seconds per second of
speech), beside the machine's load average (other processes share these cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from media.synthesis import SynthesisThreads

REPLIES = [
    "Hello, and thank you for joining me today.",
    "What do you do for a living?",
    "Thank you, that is really helpful. Could you tell me a little more about what a typical day looks like?",
    "I see. What do you like most about it?",
    "Where do you live, and how long have you lived there?",
    "That sounds lovely. What did you eat today?",
    "Could you say a bit more about why that matters to you personally, and how it has changed over the years?",
    "Okay.",
    "Thank you very much for your time today. Your answers will help us a great deal. Goodbye.",
]


async def measure(engine: str, rounds: int) -> dict[str, float]:
    pool = SynthesisThreads(synthesizer=engine, threads=1)
    await pool.start()
    await pool.warmed()
    first: list[float] = []
    cpu = audio = 0.0
    try:
        for _ in range(rounds):
            for text in REPLIES:
                t0 = time.perf_counter()
                got: float | None = None
                samples, rate = 0, 1
                async for chunk in pool.synthesize(text):
                    if got is None:
                        got = time.perf_counter() - t0
                    samples, rate = samples + len(chunk.pcm), chunk.rate
                first.append((got or 0.0) * 1000)
                audio += samples / rate
                cpu += time.perf_counter() - t0  # wall time: one reply at a time on one thread
    finally:
        await pool.close()
    return {
        "first_audio_ms_p50": round(float(np.percentile(first, 50)), 1),
        "first_audio_ms_p95": round(float(np.percentile(first, 95)), 1),
        "wall_per_audio_second": round(cpu / audio, 3),
        "replies": len(first),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = {"load_average": os.getloadavg(), "machine": f"{os.cpu_count()} cores"}
    for engine in ("piper", "espeak"):
        result[engine] = asyncio.run(measure(engine, args.rounds))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
