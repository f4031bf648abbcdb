"""Speech-to-text engines side by side: word error rate and real-time factor on real human speech.

    .venv/bin/python bench/stt.py [--json out.json] [--pocketsphinx-settings]

Sets: ``real`` is the real-speech set (12 human recordings, 103 words; fixtures/fetch_speech.py, fetched
if missing), ``espeak`` the synthetic fixture answers (fixtures/answers, 48 words). Each engine gets one
recogniser that decodes every clip in order, fed in 20 ms chunks as a live stream would be. Real-time factor
= CPU seconds of this process / seconds of audio (CPU time, not wall time, so other load on the machine moves
it less); ``finish`` is the CPU time of ``finish()`` alone per clip (for Whisper: the whole decode, since
nothing is decoded while audio is fed unless captions ask). The ``faster-whisper transcribe()`` row is the
raw stack: the library's own recipe (30 s window, greedy, its VAD off) on the same model, measured in the same
run. ``--pocketsphinx-settings`` adds the PocketSphinx search settings measured when tuning it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.fetch_speech import load  # noqa: E402
from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE  # noqa: E402
from media.stt import create_recognizer  # noqa: E402
from media.stt.base import Recognizer  # noqa: E402
from media.stt.wer import corpus_word_error_rate  # noqa: E402

FIXTURES = ROOT / "fixtures" / "answers"

ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "pocketsphinx": ("pocketsphinx", {}),
    "whisper tiny.en (default)": ("whisper", {}),
    "whisper tiny.en, greedy": ("whisper", {"beam_size": 1}),
    "whisper tiny.en, 30 s window": ("whisper", {"min_context_s": 30.0}),
    "whisper base": ("whisper", {"model": "base"}),
    "whisper base, greedy": ("whisper", {"model": "base", "beam_size": 1}),
}
POCKETSPHINX_SETTINGS: dict[str, dict[str, Any]] = {
    "pocketsphinx defaults": {"beam": 1e-48, "wbeam": 7e-29, "pbeam": 1e-48, "maxhmmpf": 30000, "maxwpf": -1},
    "no second passes": {"fwdflat": False, "bestpath": False},
    "narrower beams": {"beam": 1e-40, "wbeam": 1e-16, "pbeam": 1e-35},
    "ds=2": {"ds": 2},
}

Clip = tuple[str, PCM]


def sets() -> dict[str, list[Clip]]:
    folder, entries = load()
    real = [(str(e["text"]), sf.read(folder / str(e["file"]), dtype="int16")[0]) for e in entries]
    manifest = json.loads((FIXTURES / "answers.json").read_text())
    espeak = [(e["text"], sf.read(FIXTURES / e["file"], dtype="int16")[0]) for e in manifest]
    return {"real": real, "espeak": espeak}


def streamed(recognizer: Recognizer) -> Callable[[PCM], tuple[str, float]]:
    def run(pcm: PCM) -> tuple[str, float]:
        recognizer.start()
        for i in range(0, len(pcm), FRAME_SAMPLES):
            recognizer.feed(np.asarray(pcm[i : i + FRAME_SAMPLES], dtype=np.int16))
        t = time.process_time()
        text = recognizer.finish()
        return text, time.process_time() - t

    return run


def faster_whisper_stock() -> Callable[[PCM], tuple[str, float]]:
    from faster_whisper import WhisperModel  # type: ignore[import-untyped]

    from media.stt.whisper_models import model_dir

    model = WhisperModel(str(model_dir("tiny.en")), device="cpu", compute_type="int8", cpu_threads=1)

    def run(pcm: PCM) -> tuple[str, float]:
        t = time.process_time()
        segments, _ = model.transcribe(
            pcm.astype(np.float32) / 32768.0, language="en", beam_size=1, condition_on_previous_text=False
        )
        text = " ".join(s.text.strip() for s in segments)
        return text, time.process_time() - t

    return run


def measure(run: Callable[[PCM], tuple[str, float]], clips: list[Clip]) -> dict[str, Any]:
    pairs, finishes = [], []
    audio_s = sum(len(pcm) for _, pcm in clips) / SAMPLE_RATE
    cpu = time.process_time()
    for text, pcm in clips:
        hypothesis, finish_s = run(pcm)
        pairs.append((text, hypothesis))
        finishes.append(finish_s * 1000)
    cpu = time.process_time() - cpu
    return {
        "wer": round(corpus_word_error_rate(pairs), 3),
        "rtf": round(cpu / audio_s, 3),
        "finish_ms_p50": round(statistics.median(finishes), 1),
        "finish_ms_max": round(max(finishes), 1),
        "audio_s": round(audio_s, 2),
        "hypotheses": [h for _, h in pairs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--pocketsphinx-settings", action="store_true", help="also the PocketSphinx tunings")
    args = parser.parse_args()
    data = sets()
    rows: dict[str, Callable[[], Callable[[PCM], tuple[str, float]]]] = {
        name: (lambda engine=engine, options=options: streamed(create_recognizer(engine, **options)))
        for name, (engine, options) in ENGINES.items()
    }
    rows["faster-whisper transcribe() (raw stack)"] = faster_whisper_stock
    if args.pocketsphinx_settings:
        for name, options in POCKETSPHINX_SETTINGS.items():
            rows[f"pocketsphinx, {name}"] = lambda options=options: streamed(
                create_recognizer("pocketsphinx", **options)
            )
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; audio: "
          + ", ".join(f"{k} {sum(len(p) for _, p in v) / SAMPLE_RATE:.1f} s" for k, v in data.items()))  # fmt: skip
    print(f"{'engine':42} {'WER real':>8} {'WER eSpeak':>10} {'RTF real':>8} {'finish p50':>10} {'finish max':>10}")
    results = {}
    for name, make in rows.items():
        run = make()
        real, espeak = measure(run, data["real"]), measure(run, data["espeak"])
        results[name] = {"real": real, "espeak": espeak}
        print(f"{name:42} {real['wer']:8.3f} {espeak['wer']:10.3f} {real['rtf']:8.3f} "
              f"{real['finish_ms_p50']:8.1f}ms {real['finish_ms_max']:8.1f}ms")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"stt": results}, indent=2))


if __name__ == "__main__":
    main()
