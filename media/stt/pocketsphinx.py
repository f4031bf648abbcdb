"""Streaming speech-to-text with CMU PocketSphinx 5 and its bundled US English model.

Uses the general en-us acoustic model, trigram LM (``en-us.lm.bin``) and CMU dictionary shipped in
the ``pocketsphinx`` wheel: nothing is downloaded and nothing is tuned to the interview domain.
The defaults below are the search settings tuned for speed (``bench/stt.py``, docs/benchmarks.md):
narrower beams and per-frame caps cut CPU from ~0.32-0.43 to ~0.18 of real time at the same
WER (0.083 on the fixtures); the flat second pass is kept, since dropping it costs 2 more errors
in 48 words, and its ~90 ms runs while the end-of-speech silence window is still open.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import numpy.typing as npt
import pocketsphinx  # type: ignore[import-untyped]

from media.audio import PCM, SAMPLE_RATE
from media.stt.base import Recognizer

log = logging.getLogger(__name__)
_VARIANT = re.compile(r"\(\d+\)$")


def _normalize(hypstr: str) -> str:
    """Lower-case words, without pronunciation-variant suffixes ("as(2)") or filler tokens."""
    words = (_VARIANT.sub("", w).lower() for w in hypstr.split())
    return " ".join(w for w in words if w and not w.startswith(("<", "[", "+")))


def _peak_rms(pcm: PCM) -> float:
    """The loudest 10 ms window's RMS (a click shorter than that barely counts)."""
    window = SAMPLE_RATE // 100
    usable = len(pcm) - len(pcm) % window
    if usable == 0:
        return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
    blocks = pcm[:usable].astype(np.float64).reshape(-1, window)
    return float(np.sqrt((blocks**2).mean(axis=1)).max())


class PocketsphinxRecognizer(Recognizer):
    """One decoder per instance, reused across utterances (loading the model takes ~0.3 s CPU).

    Audio fed with :meth:`feed` is decoded immediately (``process_raw``), so :meth:`finish` only
    has to flush the last frames and run the optional second passes. Not thread-safe: one
    utterance at a time, from one worker thread at a time.

    Search options (keyword-only; defaults are the tuned values, PocketSphinx's own defaults in
    brackets):

    * ``beam`` [1e-48], ``wbeam`` [7e-29], ``pbeam`` [1e-48]: Viterbi beam widths per frame, at
      word exits and at phone transitions; larger values prune harder (faster, less accurate).
    * ``maxhmmpf`` [30000], ``maxwpf`` [-1]: cap on active HMMs / distinct word exits per frame.
    * ``topn`` [4]: Gaussians per mixture scored; ``ds`` [1]: score the acoustic model every
      ``ds``-th frame.
    * ``lw`` [6.5]: language-model weight.
    * ``fwdflat`` [True]: second, flat-lexicon pass at the end of the utterance;
      ``bestpath`` [True]: third pass over the word lattice.
    * ``noise_floor_dbfs``: constant low noise mixed in, so digital silence does not upset CMN;
      ``min_level_dbfs``: an utterance whose loudest 10 ms stays below this is silence ("").
    * ``extra``: any other PocketSphinx configuration parameter, by name without the dash.

    ``hmm``, ``lm`` and ``dict`` default to the model bundled with the wheel
    (``pocketsphinx.get_model_path("en-us")``).
    """

    name = "pocketsphinx"

    def __init__(
        self,
        *,
        beam: float = 1e-48,
        wbeam: float = 1e-20,
        pbeam: float = 1e-40,
        maxhmmpf: int = 5000,
        maxwpf: int = 10,
        topn: int = 4,
        ds: int = 1,
        lw: float = 6.5,
        fwdflat: bool = True,
        bestpath: bool = True,
        cmn_prime_s: float = 1.5,
        noise_floor_dbfs: float | None = -60.0,
        min_level_dbfs: float = -50.0,
        hmm: str | None = None,
        lm: str | None = None,
        dictionary: str | None = None,
        extra: dict[str, Any] | None = None,
        language: str = "en",
    ) -> None:
        if language.split("-")[0].lower() != "en":
            log.warning("PocketSphinx has only its US English model; recognising %s speech as English", language)
        config = pocketsphinx.Config(
            hmm=hmm or pocketsphinx.get_model_path("en-us/en-us"),
            lm=lm or pocketsphinx.get_model_path("en-us/en-us.lm.bin"),
            dict=dictionary or pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"),
            samprate=SAMPLE_RATE,
            loglevel="ERROR",
            beam=beam,
            wbeam=wbeam,
            pbeam=pbeam,
            maxhmmpf=maxhmmpf,
            maxwpf=maxwpf,
            topn=topn,
            ds=ds,
            lw=lw,
            fwdflat=fwdflat,
            bestpath=bestpath,
            **(extra or {}),
        )
        if cmn_prime_s < 0:
            raise ValueError(f"cmn_prime_s must be >= 0, not {cmn_prime_s!r}")
        self.config = config
        self._noise: npt.NDArray[np.float64] | None = None
        if noise_floor_dbfs is not None:
            rms = 32768.0 * 10.0 ** (noise_floor_dbfs / 20.0)
            self._noise = np.random.default_rng(0).normal(0.0, rms, SAMPLE_RATE)
        self._position = 0  # samples fed in this utterance (indexes the noise loop)
        # Below this peak level an utterance is silence: PocketSphinx would otherwise "hear" a word
        # ("if", "the") in its own noise floor.
        self._min_peak = 32768.0 * 10.0 ** (min_level_dbfs / 20.0)
        self._peak = 0.0  # loudest 10 ms RMS heard in this utterance
        self._decoder = pocketsphinx.Decoder(config)
        self._in_utterance = False
        # Cold-start CMN priming: until this many samples have been heard, the current utterance's
        # audio is kept so it can be decoded again once the decoder has estimated its cepstral mean.
        self._prime_samples = round(cmn_prime_s * SAMPLE_RATE)
        self._primed = self._prime_samples == 0
        self._heard = 0  # samples decoded with a settled CMN or counted towards priming
        self._utterance: list[bytes] = []

    def start(self) -> None:
        if self._in_utterance:
            self._decoder.end_utt()  # abandon the previous utterance
        self._decoder.start_utt()
        self._in_utterance = True
        self._utterance = []
        self._position = 0
        self._peak = 0.0

    def feed(self, pcm: PCM) -> str:
        if not self._in_utterance:
            raise RuntimeError("feed() before start()")
        if len(pcm) == 0:
            return self._hypothesis()
        raw = np.asarray(pcm, dtype=np.int16)
        self._peak = max(self._peak, _peak_rms(raw))
        samples = self._with_noise_floor(raw)
        if not self._primed:
            # Split at the priming boundary so the CMN estimate never depends on how audio was chunked.
            needed = self._prime_samples - self._heard
            head, samples = samples[:needed], samples[needed:]
            self._decoder.process_raw(head.tobytes(), False, False)
            self._utterance.append(head.tobytes())
            self._heard += len(head)
            if self._heard >= self._prime_samples:
                self._redecode()
        if len(samples):
            self._decoder.process_raw(samples.tobytes(), False, False)
        return self._hypothesis()

    def finish(self) -> str:
        if not self._in_utterance:
            raise RuntimeError("finish() before start()")
        if not self._primed and self._utterance:
            self._redecode()
            self._primed = False  # still short of cmn_prime_s in total: keep priming next time
        self._decoder.end_utt()
        self._in_utterance = False
        self._utterance = []
        return self._hypothesis()

    def _with_noise_floor(self, pcm: PCM) -> PCM:
        """``pcm`` plus the constant noise loop, indexed by position in the utterance (so chunking cannot matter)."""
        start = self._position
        self._position += len(pcm)
        if self._noise is None:
            return np.ascontiguousarray(pcm)
        index = np.arange(start, start + len(pcm)) % len(self._noise)
        mixed = np.round(pcm + self._noise[index])
        return np.clip(mixed, -32768, 32767).astype(np.int16)

    def _redecode(self) -> None:
        """End the utterance (live CMN updates its mean from it) and decode its audio again."""
        self._decoder.end_utt()
        self._decoder.start_utt()
        self._decoder.process_raw(b"".join(self._utterance), False, False)
        self._utterance = []
        self._primed = True

    def adaptation(self) -> object | None:
        """The live cepstral mean, once primed: a new recogniser starting from it skips priming."""
        return self._decoder.get_cmn(False) if self._primed else None

    def adapt(self, state: object) -> None:
        if isinstance(state, str) and not self._in_utterance and self._heard == 0:
            self._decoder.set_cmn(state)
            self._primed = True

    def _hypothesis(self) -> str:
        if self._peak < self._min_peak:
            return ""
        hyp = self._decoder.hyp()
        return _normalize(hyp.hypstr) if hyp is not None else ""
