"""Not cutting people off: false cut-offs on answers with thinking pauses, against the delay added to complete ones.

    .venv/bin/python bench/turn_end.py [--json out.json] [--max-silence-ms 2000] [--pauses 0.8,1.2,1.5]

Answers with pauses: every recording of the real-speech set (fixtures/fetch_speech.py) is cut at each
boundary between two words (the LibriVox word alignments give the times; the cards and commands are cut at
the silences between their words) and a pause of 0.8, 1.2 or 1.5 s of digital silence is spliced in: a
speaker stopping mid-sentence to think. Complete answers: the recordings as they are, and the eSpeak
fixture answers.

Each case runs through what api/voice.py does, without the network: the WebRTC VAD and the endpointer
(``eos_silence_ms`` 500, early finish at 200 ms) on 20 ms frames, with Whisper tiny.en decoding the words
so far at the pause. Two policies: ``silence`` (the window alone) and ``words`` (runtime/turn_end.py: the
endpointer holds the pause from the early finish until the verdict, which arrives after the decode's measured
wall time, then keeps the short window or waits up to ``--max-silence-ms``). A false cut-off is a turn
ended inside a spliced pause; the delay is ``eos`` (end of the last voiced frame to the end-of-turn decision)
on complete answers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.fetch_speech import load  # noqa: E402
from media.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE  # noqa: E402
from media.stt import create_recognizer  # noqa: E402
from media.vad import create_vad  # noqa: E402
from runtime.endpointing import FRAME_S, Endpointer, EndpointSettings, Pausing, Resumed, SpeechEnded  # noqa: E402
from runtime.turn_end import TurnEndSettings, Verdict, judge, silence_window  # noqa: E402

PREROLL_S = 0.3


@dataclass
class Case:
    name: str
    pcm: PCM
    pause_at: float | None  # where a pause was spliced in (s), or None: a complete answer
    pause_s: float = 0.0


def word_boundaries(entry: dict[str, Any], folder: Path, pcm: PCM) -> list[float]:
    """Times between words: from the alignment, or the middle of each silence of 150 ms or more."""
    if "alignment" in entry:
        words = [w for w in json.loads((folder / str(entry["alignment"])).read_text())["w"] if w["t"] != "<sil>"]
        return [round(w["b"] + w["d"], 3) for w in words[:-1]]
    vad = create_vad("webrtc")
    voiced = [vad.speech_probability(pcm[i : i + FRAME_SAMPLES]) >= 0.5 for i in range(0, len(pcm) - 319, 320)]
    first, last = voiced.index(True), len(voiced) - 1 - voiced[::-1].index(True)
    out, run = [], 0
    for i in range(first, last + 1):
        if not voiced[i]:
            run += 1
        elif run:
            if run * FRAME_S >= 0.15:
                out.append(round((i - run / 2) * FRAME_S, 3))
            run = 0
    return out


def cases(pauses: list[float]) -> tuple[list[Case], list[Case]]:
    folder, entries = load()
    paused, complete = [], []
    for e in entries:
        pcm = sf.read(folder / str(e["file"]), dtype="int16")[0]
        complete.append(Case(str(e["id"]), pcm, None))
        for cut in word_boundaries(e, folder, pcm):
            at = int(cut * SAMPLE_RATE)
            for pause in pauses:
                spliced = np.concatenate([pcm[:at], np.zeros(int(pause * SAMPLE_RATE), dtype=np.int16), pcm[at:]])
                paused.append(Case(f"{e['id']}@{cut:.2f}+{pause}", spliced, cut, pause))
    fixtures = ROOT / "fixtures" / "answers"
    for entry in json.loads((fixtures / "answers.json").read_text()):
        complete.append(Case(f"espeak {entry['id']}", sf.read(fixtures / entry["file"], dtype="int16")[0], None))
    return paused, complete


class Words:
    """The early transcript at a pause (the segment so far, from its pre-roll), decoded once per audio prefix."""

    def __init__(self) -> None:
        self.recognizer = create_recognizer("whisper")
        self.cache: dict[tuple[int, int, int], tuple[str, float]] = {}

    def at(self, pcm: PCM, start: int, end: int) -> tuple[str, float]:
        key = (id(pcm), start, end)
        if key not in self.cache:
            began = time.perf_counter()
            self.recognizer.start()
            self.recognizer.feed(pcm[start:end])
            text = self.recognizer.finish()
            self.cache[key] = (text, time.perf_counter() - began)
        return self.cache[key]


def replay(case: Case, words: Words | None, settings: TurnEndSettings) -> dict[str, Any]:
    """Frames through VAD + endpointer; with ``words``, the turn-end rules decide each pause's length."""
    vad = create_vad("webrtc")
    ep = Endpointer(EndpointSettings(eos_silence_ms=500, finalize_after_ms=200))
    pcm = np.concatenate([case.pcm, np.zeros(3 * SAMPLE_RATE, dtype=np.int16)])  # room for the longest wait
    onset = 0.0
    verdict_due: tuple[float, float] | None = None  # (time, window)
    ends: list[SpeechEnded] = []
    texts: list[tuple[float, str]] = []  # (pause decided at, the words then)
    for n, i in enumerate(range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)):
        now = (n + 1) * FRAME_S
        if verdict_due is not None and now >= verdict_due[0]:
            ep.hold(verdict_due[1])
            verdict_due = None
        for d in ep.frame(now, vad.speech_probability(pcm[i : i + FRAME_SAMPLES])):
            if hasattr(d, "onset_at") and not isinstance(d, SpeechEnded):
                onset = d.onset_at
            if isinstance(d, Pausing) and words is not None:
                ep.hold(settings.max_silence_ms)
                start = max(0, int((onset - PREROLL_S) * SAMPLE_RATE))
                text, took = words.at(case.pcm, start, min(int(now * SAMPLE_RATE), len(case.pcm)))
                texts.append((now, text))
                verdict_due = (now + took, silence_window(text, 500, settings))
            elif isinstance(d, Resumed):
                verdict_due = None
            elif isinstance(d, SpeechEnded):
                ends.append(d)
    spoken_end = len(case.pcm) / SAMPLE_RATE
    cut_off = any(e.decided_at < spoken_end - 0.1 for e in ends)
    words_then = texts[-1][1] if texts else ""
    if case.pause_at is not None:  # only a turn ended inside the spliced pause counts
        lo, hi = case.pause_at - 0.3, case.pause_at + case.pause_s
        cut_off = any(lo <= e.last_voiced_at <= hi and e.decided_at < spoken_end - 0.1 for e in ends)
        words_then = next((t for at, t in texts if lo <= at <= hi + 0.1), "")
    last = ends[-1] if ends else None
    return {
        "cut_off": cut_off,
        "eos_ms": None if last is None else round((last.decided_at - last.last_voiced_at) * 1000, 1),
        "words": words_then,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--max-silence-ms", type=float, default=2000.0)
    parser.add_argument("--pauses", default="0.8,1.2,1.5")
    args = parser.parse_args()
    settings = TurnEndSettings(max_silence_ms=args.max_silence_ms, punctuated=True)  # Whisper writes the words
    paused, complete = cases([float(p) for p in args.pauses.split(",")])
    words = Words()
    results: dict[str, Any] = {}
    for policy, w in (("silence", None), ("words", words)):
        cut = [replay(c, w, settings) for c in paused]
        done = [replay(c, w, settings) for c in complete]
        eos = [r["eos_ms"] for r in done if r["eos_ms"] is not None]
        results[policy] = {
            "paused_answers": len(cut),
            "false_cut_offs": sum(r["cut_off"] for r in cut),
            "complete_answers": len(done),
            "complete_cut_early": sum(r["cut_off"] for r in done),
            "complete_held": sum(judge(r["words"], True) is Verdict.UNFINISHED for r in done if r["words"]),
            "eos_ms_p50": statistics.median(eos),
            "eos_ms_p95": sorted(eos)[max(0, round(0.95 * len(eos)) - 1)],
            "eos_ms_mean": round(statistics.fmean(eos), 1),
            "by_pause": {
                str(p): sum(r["cut_off"] for c, r in zip(paused, cut, strict=True) if c.pause_s == p)
                for p in sorted({c.pause_s for c in paused})
            },
            "cut_at": [c.name + ": " + r["words"] for c, r in zip(paused, cut, strict=True) if r["cut_off"]][:40],
        }
    decode_ms = [took * 1000 for _, took in words.cache.values()]
    print(f"{len(paused)} answers with a spliced pause, {len(complete)} complete answers; "
          f"early decodes p50 {statistics.median(decode_ms):.0f} ms, max {max(decode_ms):.0f} ms (wall)")  # fmt: skip
    print(f"{'policy':10} {'false cut-offs':>16} {'per pause (s)':>24} {'eos p50':>8} {'eos p95':>8} {'held':>5}")
    for policy, r in results.items():
        rate = f"{r['false_cut_offs']}/{r['paused_answers']} ({100 * r['false_cut_offs'] / r['paused_answers']:.0f}%)"
        per = " ".join(f"{p}:{n}" for p, n in r["by_pause"].items())
        print(f"{policy:10} {rate:>16} {per:>24} {r['eos_ms_p50']:6.0f}ms {r['eos_ms_p95']:6.0f}ms "
              f"{r['complete_held']:>5}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"turn_end": results}, indent=2))


if __name__ == "__main__":
    main()
