"""Speech-to-text accuracy and speed on the spoken fixtures: WER and real-time factor per setting.

    .venv/bin/python bench/stt.py [--json out.json]

Each configuration gets one recognizer that decodes every fixture answer in manifest order, fed in
20 ms chunks as a live stream would be. Real-time factor = CPU seconds of this process / seconds of
audio (CPU time, not wall time, so other load on the machine barely moves it). ``tail_ms`` is the
CPU time of ``finish()`` alone: the part of recognition still to do after the end of speech.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from media.audio import FRAME_SAMPLES, SAMPLE_RATE
from media.stt import create_recognizer
from media.stt.wer import corpus_word_error_rate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "answers"

CONFIGS: dict[str, dict[str, Any]] = {
    "default (tuned)": {},
    "pocketsphinx defaults": {
        "beam": 1e-48, "wbeam": 7e-29, "pbeam": 1e-48, "maxhmmpf": 30000, "maxwpf": -1,
    },
    "no second passes": {"fwdflat": False, "bestpath": False},
    "bestpath only": {"fwdflat": False},
    "fwdflat only": {"bestpath": False},
    "narrower beams": {"beam": 1e-40, "wbeam": 1e-16, "pbeam": 1e-35},
    "ds=2": {"ds": 2},
    "topn=2": {"topn": 2},
    "maxhmmpf=2000": {"maxhmmpf": 2000},
    "maxhmmpf=3000, topn=2": {"maxhmmpf": 3000, "topn": 2},
}  # fmt: skip


def measure(options: dict[str, Any]) -> dict[str, Any]:
    manifest = json.loads((FIXTURES / "answers.json").read_text())
    recognizer = create_recognizer("pocketsphinx", **options)
    references, hypotheses, tails = [], [], []
    audio_s = 0.0
    cpu = time.process_time()
    for entry in manifest:
        pcm, rate = sf.read(FIXTURES / entry["file"], dtype="int16")
        assert rate == SAMPLE_RATE
        audio_s += len(pcm) / rate
        recognizer.start()
        for i in range(0, len(pcm), FRAME_SAMPLES):
            recognizer.feed(np.asarray(pcm[i : i + FRAME_SAMPLES], dtype=np.int16))
        t = time.process_time()
        hypotheses.append(recognizer.finish())
        tails.append((time.process_time() - t) * 1000)
        references.append(entry["text"])
    cpu = time.process_time() - cpu
    return {
        "wer": round(corpus_word_error_rate(list(zip(references, hypotheses, strict=True))), 3),
        "rtf": round(cpu / audio_s, 3),
        "tail_ms_p50": round(statistics.median(tails), 1),
        "tail_ms_max": round(max(tails), 1),
        "audio_s": round(audio_s, 2),
        "hypotheses": hypotheses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results = {}
    print(f"{'setting':24} {'WER':>6} {'RTF':>6} {'tail p50':>9} {'tail max':>9}")
    for name, options in CONFIGS.items():
        r = results[name] = measure(options)
        print(f"{name:24} {r['wer']:6.3f} {r['rtf']:6.3f} {r['tail_ms_p50']:7.1f}ms {r['tail_ms_max']:7.1f}ms")
    if args.json:
        args.json.write_text(json.dumps({"stt": results}, indent=2))


if __name__ == "__main__":
    main()
