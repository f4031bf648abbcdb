"""Speech-to-text with Whisper (CTranslate2, the engine behind faster-whisper): the default recogniser.

Whisper reads a whole window of audio at once; it does not stream. What this module does about it:

* **Short windows.** Whisper was trained on 30 s windows and faster-whisper pads every call to 30 s, which
  costs ~0.6 s of encoder per call with tiny.en on one core. CTranslate2's encoder takes shorter inputs, so an
  utterance is encoded in a window of ``max(min_context_s, its length + pad_s)``. Windows much shorter than
  ~10 s make the decoder loop ("ten of clubs ten of clubs ..."); at 10 s it transcribes as well as at 30 s on
  the real-speech set, ~4x faster (docs/benchmarks.md). A decode that still looks wrong (a loop: repeated
  phrases, too compressible, cut at the token limit; or too unlikely) is done again in the full 30 s window,
  and a loop then with the temperature fallback (0.2, 0.4, ... within ``fallback_budget_s``; CTranslate2's
  sampler is seeded once per process, so runs repeat).
* **Pieces.** :meth:`finish` is called when the participant pauses (before the turn has ended: see
  api/voice.py); if they go on (:meth:`resume`), a decoded stretch of at least ``piece_s`` is kept as a
  closed piece and only the audio after it is decoded at the end, so the end-of-turn decode stays short
  however long the answer. Shorter stretches are decoded again with what follows (more context, fewer
  errors). A stretch of ``max_tail_s`` without such a pause is cut at its quietest 200 ms.
* **Captions.** :meth:`partial` decodes the undecoded tail again when ``caption_every_s`` of new audio has
  arrived, as long as caption decodes have cost at most ``caption_budget`` of the audio's duration.
* **Hallucinations.** Whisper writes "Thank you." or "Bye." over silence and noise. An utterance whose
  loudest 10 ms stays below ``min_level_dbfs`` is not decoded; a decode with ``no_speech_prob`` above
  ``no_speech_threshold`` and an average log-probability below ``logprob_threshold`` is silence (Whisper's
  own rule, with 0.5 for its 0.6: an out-breath came through as "Huh?" at 0.58; real speech stayed below
  0.35 on the real-speech set); one of the phrases Whisper is known to invent, decoded with ``no_speech_prob`` above
  ``phrase_no_speech`` or an average log-probability below ``phrase_logprob``, is dropped; and a decode that
  loops in every fallback is dropped too. Each of these gives "", which the interview treats as no answer.

Transcripts keep Whisper's casing and punctuation (researchers read them); word error rates are computed on
normalised words (:mod:`media.stt.wer`). One model per process is shared by every recogniser
(:mod:`media.stt.whisper_models`); a recogniser is cheap and holds one utterance's audio.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from media.audio import PCM, SAMPLE_RATE
from media.stt.base import Recognizer
from media.stt.whisper_models import LoadedModel, load_model, model_dir

__all__ = ["Decoded", "WhisperRecognizer"]

FULL_WINDOW_S = 30.0
#: What Whisper says over silence, noise and breath, normalised (lower case, no punctuation).
INVENTED_PHRASES = frozenset(
    {"thank you", "thanks", "thank you very much", "thanks for watching", "thank you for watching", "bye", "you"}
    | {"bye bye", "oh", "so", "okay", "hmm", "please subscribe", "subscribe", "the end", "i'm sorry"}
    | {"huh", "uh", "um", "mm", "ah", "oh yeah", "oh yeah yeah", "okay okay", "i'm"}
)
_NOT_WORD = re.compile(r"[^\w\s']")


@dataclass(frozen=True)
class Decoded:
    """One decode of one stretch of audio, with the scores the guards look at."""

    text: str
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    truncated: bool = False
    window_s: float = 0.0
    temperature: float = 0.0

    def loops(self, compression_threshold: float) -> bool:
        return self.truncated or self.compression_ratio > compression_threshold or repeats_itself(self.text)

    def looks_wrong(self, compression_threshold: float, logprob_threshold: float) -> bool:
        return self.loops(compression_threshold) or self.avg_logprob < logprob_threshold


def compression_ratio(text: str) -> float:
    """Bytes over zlib-compressed bytes: a looping decode repeats itself and compresses well."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeats_itself(text: str) -> bool:
    """A phrase said again and again back to back: 3+ times over 6+ words ("ten of clubs ten of clubs ten of
    clubs", "five five five five five five"), or twice over 8+ words ("go forward ten meters go forward ten
    meters"); zlib's ratio misses these in short texts. "No, no, no" and "I think, I think" are answers."""
    words = _NOT_WORD.sub(" ", text.lower()).split()
    for n in range(1, 9):
        for start in range(n):
            run = 1
            for i in range(start + n, len(words) - n + 1, n):
                run = run + 1 if words[i : i + n] == words[i - n : i] else 1
                if (run >= 3 and run * n >= 6) or (run >= 2 and run * n >= 8):
                    return True
    return False


def _peak_dbfs(pcm: PCM) -> float:
    window = SAMPLE_RATE // 100
    usable = len(pcm) - len(pcm) % window
    if usable == 0:
        return -120.0
    blocks = pcm[:usable].astype(np.float64).reshape(-1, window)
    peak = float(np.sqrt((blocks**2).mean(axis=1)).max())
    return float(20.0 * np.log10(max(peak, 1e-9) / 32768.0))


def _language_code(language: str) -> str:
    return language.split("-")[0].lower()


class WhisperRecognizer(Recognizer):
    """One utterance at a time (see the module docs). Not thread-safe; the model it uses is shared.

    ``model``: ``tiny.en``, ``base`` or a CTranslate2 Whisper folder; default ``tiny.en`` for English and
    ``base`` for any other ``language`` (a BCP 47 tag; its primary subtag is used). ``beam_size`` is for final
    transcripts (3: 4.9 % WER on the real-speech set against 6.9 % greedy, for ~1.5x the decoder's time);
    captions decode greedily. The other options are described in the module docs; ``compute_type`` and
    ``cpu_threads`` go to CTranslate2.
    """

    name = "whisper"

    def __init__(
        self,
        *,
        model: str | None = None,
        language: str = "en",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        model_cache: str | None = None,
        min_context_s: float = 10.0,
        pad_s: float = 0.5,
        piece_s: float = 4.0,
        max_tail_s: float = 20.0,
        caption_every_s: float = 0.8,
        caption_budget: float = 0.5,
        min_level_dbfs: float = -50.0,
        no_speech_threshold: float = 0.5,
        logprob_threshold: float = -1.0,
        compression_threshold: float = 2.4,
        phrase_no_speech: float = 0.25,
        phrase_logprob: float = -0.7,
        temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0),
        tokens_per_s: float = 12.0,
        beam_size: int = 3,
        fallback_budget_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        code = _language_code(language)
        if model is None:
            model = "tiny.en" if code == "en" else "base"
        if not 0 < min_context_s <= FULL_WINDOW_S or pad_s < 0 or piece_s <= 0:
            raise ValueError("need 0 < min_context_s <= 30, pad_s >= 0 and piece_s > 0")
        if not piece_s < max_tail_s <= FULL_WINDOW_S - pad_s:
            raise ValueError("need piece_s < max_tail_s <= 30 - pad_s")
        self.model_name = model
        self.language = code
        self._model: LoadedModel = load_model(
            model_dir(model, Path(model_cache) if model_cache else None),
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            seed=seed,
        )
        self._prompt = self._make_prompt(code)
        self.min_context_s = min_context_s
        self.pad_s = pad_s
        self.piece_s = piece_s
        self.max_tail_s = max_tail_s
        self.caption_every_s = caption_every_s
        self.caption_budget = caption_budget
        self.min_level_dbfs = min_level_dbfs
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.compression_threshold = compression_threshold
        self.phrase_no_speech = phrase_no_speech
        self.phrase_logprob = phrase_logprob
        self.temperatures = temperatures
        self.tokens_per_s = tokens_per_s
        self.beam_size = beam_size
        self.fallback_budget_s = fallback_budget_s
        self.decodes = 0  # decoder runs, for tests and benchmarks
        self.start()

    def _make_prompt(self, code: str) -> list[int]:
        m = self._model
        prompt = [m.token("<|startoftranscript|>")]
        if m.multilingual:
            prompt += [m.token(f"<|{code}|>"), m.token("<|transcribe|>")]
        elif code != "en":
            raise ValueError(f"Whisper model {self.model_name!r} is English-only; {code!r} needs a multilingual one")
        return [*prompt, m.token("<|notimestamps|>")]

    # --- Recognizer ------------------------------------------------------------------------------

    def start(self) -> None:
        self._chunks: list[PCM] = []
        self._length = 0
        self._joined: PCM | None = None
        self._cut = 0  # samples before this are decoded into self._pieces
        self._pieces: list[str] = []
        self._finished: tuple[int, str] | None = None  # (end, text of the tail) of the last finish()
        self._caption = ""
        self._caption_at = 0  # audio length when the caption was decoded
        self._caption_cost = 0.0

    def feed(self, pcm: PCM) -> str:
        if len(pcm):
            self._chunks.append(np.asarray(pcm, dtype=np.int16))
            self._length += len(pcm)
            self._joined = None
            if self._length - self._cut > self.max_tail_s * SAMPLE_RATE:
                self._cut_at_quietest()
        return self._caption

    def partial(self) -> str | None:
        new = self._length - self._caption_at
        if new < self.caption_every_s * SAMPLE_RATE:
            return self._caption
        if self._caption_cost > self.caption_budget * self._length / SAMPLE_RATE:
            return self._caption  # over budget: the caption waits
        began = time.perf_counter()
        tail = self._decode_fast(self._audio()[self._cut :])
        self._caption_cost += time.perf_counter() - began
        self._caption_at = self._length
        self._caption = self._join(tail.text)
        return self._caption

    def finish(self) -> str:
        if self._finished is not None and self._finished[0] == self._length:
            return self._join(self._finished[1])  # nothing new since the last finish()
        tail = self.transcribe(self._audio()[self._cut :]).text
        self._finished = (self._length, tail)
        return self._join(tail)

    def resume(self) -> bool:
        if self._finished is not None:
            end, text = self._finished
            if end - self._cut >= self.piece_s * SAMPLE_RATE:
                if text:
                    self._pieces.append(text)
                self._cut = end
        self._finished = None
        return True

    @property
    def pieces(self) -> tuple[str, ...]:
        """The closed pieces of the current utterance: decoded, and not decoded again."""
        return tuple(self._pieces)

    # --- decoding ---------------------------------------------------------------------------------

    def decode_once(self, pcm: PCM) -> Decoded:
        """One greedy decode in the short window and none of the guards: what Whisper alone makes of ``pcm``
        (for tests and benchmarks of the guards)."""
        return self._decode(pcm, self._window_s(len(pcm)), 0.0)

    def transcribe(self, pcm: PCM) -> Decoded:
        """The transcript of ``pcm`` (16 kHz int16, at most ~30 s), through every guard (module docs).

        Fallbacks, cheapest first: a decode that loops or is unlikely is done again in the full window; only a
        loop goes on to the sampled temperatures, and only while ``fallback_budget_s`` of wall time lasts (an
        unlikely but sane decode such as "5, 5." is kept rather than sampled five times over 3 s).
        """
        if len(pcm) == 0 or _peak_dbfs(pcm) < self.min_level_dbfs:
            return Decoded("")
        began = time.perf_counter()
        first = self._decode(pcm, self._window_s(len(pcm)), 0.0, self.beam_size)
        if self._is_silence(first):
            return Decoded("", first.no_speech_prob, first.avg_logprob, first.compression_ratio)
        tries = [first]
        if first.looks_wrong(self.compression_threshold, self.logprob_threshold) and first.window_s < FULL_WINDOW_S:
            tries.append(self._decode(pcm, FULL_WINDOW_S, 0.0, self.beam_size))
        for temperature in self.temperatures:
            if not tries[-1].loops(self.compression_threshold) or time.perf_counter() - began > self.fallback_budget_s:
                break
            tries.append(self._decode(pcm, FULL_WINDOW_S, temperature))
        good = [d for d in tries if not d.looks_wrong(self.compression_threshold, self.logprob_threshold)]
        not_looping = [d for d in tries if not d.loops(self.compression_threshold)]
        chosen = good[0] if good else max(not_looping, key=lambda d: d.avg_logprob, default=None)
        if chosen is None or self._is_silence(chosen) or self._is_invented(chosen):
            return Decoded("", first.no_speech_prob, first.avg_logprob, first.compression_ratio)
        return chosen

    def _decode_fast(self, pcm: PCM) -> Decoded:
        """One decode in the short window, silence guards only: for captions."""
        if len(pcm) == 0 or _peak_dbfs(pcm) < self.min_level_dbfs:
            return Decoded("")
        decoded = self._decode(pcm, self._window_s(len(pcm)), 0.0)
        return Decoded("") if self._is_silence(decoded) or self._is_invented(decoded) else decoded

    def _window_s(self, samples: int) -> float:
        return min(FULL_WINDOW_S, max(self.min_context_s, samples / SAMPLE_RATE + self.pad_s))

    def _decode(self, pcm: PCM, window_s: float, temperature: float, beam_size: int = 1) -> Decoded:
        import ctranslate2  # type: ignore[import-untyped]

        m = self._model
        audio = pcm[: int(FULL_WINDOW_S * SAMPLE_RATE)].astype(np.float32) / 32768.0
        window = int(window_s * SAMPLE_RATE)
        features = m.features(audio, padding=max(window - len(audio), 0) + 160)
        frames = int(window_s * 100) // 2 * 2  # the encoder halves it: an even count of 10 ms frames
        features = np.ascontiguousarray(features[:, :frames][None], dtype=np.float32)
        encoded = m.whisper.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        max_new = int(self.tokens_per_s * len(pcm) / SAMPLE_RATE) + 8
        options: dict[str, object] = {"beam_size": beam_size if temperature == 0 else 1}
        if temperature > 0:
            options.update(sampling_temperature=temperature, sampling_topk=0)
        result = m.whisper.generate(
            encoded,
            [self._prompt],
            max_length=len(self._prompt) + 2 * max_new,  # room to see a decode run past max_new
            return_scores=True,
            return_no_speech_prob=True,
            **options,
        )[0]
        self.decodes += 1
        tokens = result.sequences_ids[0]
        text = " ".join(m.tokenizer.decode(tokens).split())
        return Decoded(
            text=text,
            no_speech_prob=float(result.no_speech_prob),
            avg_logprob=float(result.scores[0]) if result.scores else 0.0,
            compression_ratio=compression_ratio(text),
            truncated=len(tokens) >= max_new,
            window_s=window_s,
            temperature=temperature,
        )

    def _is_silence(self, d: Decoded) -> bool:
        if not d.text:
            return True
        return d.no_speech_prob > self.no_speech_threshold and d.avg_logprob < self.logprob_threshold

    def _is_invented(self, d: Decoded) -> bool:
        words = " ".join(_NOT_WORD.sub(" ", d.text.lower()).split())
        if words not in INVENTED_PHRASES:
            return False
        return d.no_speech_prob > self.phrase_no_speech or d.avg_logprob < self.phrase_logprob

    # --- the utterance's audio --------------------------------------------------------------------

    def _audio(self) -> PCM:
        if self._joined is None:
            self._joined = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
            self._chunks = [self._joined]
        return self._joined

    def _join(self, tail: str) -> str:
        return " ".join(part for part in [*self._pieces, tail] if part)

    def _cut_at_quietest(self) -> None:
        """Close a piece at the quietest 200 ms of the tail's last 5 s (no pause long enough came)."""
        audio = self._audio()
        frame = SAMPLE_RATE // 50
        lo = max(self._cut, self._length - 5 * SAMPLE_RATE)
        region = audio[lo : self._length - self._length % frame].astype(np.float64)
        usable = len(region) - len(region) % frame
        energy = (region[:usable].reshape(-1, frame) ** 2).mean(axis=1)
        span = 10  # frames: 200 ms
        if len(energy) > span:
            sums = np.convolve(energy, np.ones(span), mode="valid")
            cut = lo + (int(np.argmin(sums)) + span // 2) * frame
        else:
            cut = self._length
        text = self.transcribe(audio[self._cut : cut]).text
        if text:
            self._pieces.append(text)
        self._cut = cut
        self._finished = None
