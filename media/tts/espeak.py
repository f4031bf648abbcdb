"""Streaming text-to-speech with eSpeak NG, through the library and data bundled in ``espeakng-loader``.

The ``espeakng-loader`` wheel ships ``libespeak-ng.so`` (1.52) and its ``espeak-ng-data``; this module
binds the handful of C functions it needs with :mod:`ctypes`. No subprocess, no system package, nothing
downloaded. The voice is formant-synthesised: robotic but intelligible, fast (well over 10x real time on
one core) and tiny.

Process-wide state: libespeak-ng keeps one synthesiser per process (voice, parameters, output buffer,
callback) and is not thread-safe. It is initialised once, on first use, and every call into it is
serialised by the module-level :data:`_LOCK`; concurrent :meth:`EspeakSynthesizer.synthesize` calls from
several threads therefore run one after the other, each with its own voice/rate/pitch re-applied.
"""

from __future__ import annotations

import ctypes
import queue
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from media.audio import PCM
from media.tts.base import Synthesizer

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when the data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_EE_NOT_FOUND = 2
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PHONEMES_IPA = 0x02  # espeakPHONEMES_IPA: phoneme names as IPA characters (UTF-8)

RATE_MIN, RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM, words per minute
PITCH_MIN, PITCH_MAX = 0, 100

#: Length of the sample buffers handed to the synth callback (process-wide, fixed at initialisation).
#: Smaller buffers mean an earlier first chunk and more, smaller chunks.
BUFFER_MS = 100

# int callback(short *wav, int numsamples, espeak_EVENT *events); return 0 to continue, 1 to abort.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)

_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class _Job:
    """One ``espeak_Synth`` call: chunks go to ``out``; ``cancel`` makes the callback abort synthesis."""

    out: queue.SimpleQueue[PCM | BaseException | None] = field(default_factory=queue.SimpleQueue)
    cancel: threading.Event = field(default_factory=threading.Event)


class _Engine:
    """The process-wide libespeak-ng instance. Every method must be called with :data:`_LOCK` held."""

    def __init__(self) -> None:
        import espeakng_loader  # type: ignore[import-untyped]

        lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size (unused in synchronous mode)
            ctypes.c_uint,  # position
            ctypes.c_int,  # position_type
            ctypes.c_uint,  # end_position (0 = no end)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique_identifier (unsigned int *), may be NULL
            ctypes.c_void_p,  # user_data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self._lib = lib

        data_path = str(espeakng_loader.get_data_path()).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data path {data_path.decode()!r}")
        self.sample_rate: int = rate
        # The CFUNCTYPE object must outlive every call into the library: keep it on the engine.
        self._callback = _SynthCallback(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)
        self._job: _Job | None = None
        self._voice: str | None = None

    def _on_samples(self, wav: int | None, numsamples: int, _events: int | None) -> int:
        """Runs inside ``espeak_Synth`` on the synthesising thread; ``wav`` is NULL at the end."""
        job = self._job
        if job is None:
            return 1
        if job.cancel.is_set():
            return 1
        try:
            if wav and numsamples > 0:
                data = ctypes.string_at(wav, numsamples * 2)
                job.out.put(np.frombuffer(data, dtype=np.int16).copy())
        except BaseException as exc:  # never let an exception unwind through C
            job.out.put(exc)
            return 1
        return 0

    def set_voice(self, voice: str) -> None:
        if voice == self._voice:
            return
        err = self._lib.espeak_SetVoiceByName(voice.encode())
        if err != _EE_OK:
            self._voice = None
            if err == _EE_NOT_FOUND:
                raise ValueError(f"unknown eSpeak NG voice {voice!r}")
            raise RuntimeError(f"espeak_SetVoiceByName({voice!r}) failed ({err})")
        self._voice = voice

    def set_parameter(self, parameter: int, value: int) -> None:
        err = self._lib.espeak_SetParameter(parameter, value, 0)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_SetParameter({parameter}, {value}) failed ({err})")

    def phonemes(self, text: bytes) -> list[str]:
        """IPA phonemes (with stress marks) of ``text`` (UTF-8) in the current voice, one string per clause.

        ``espeak_TextToPhonemes`` translates one clause per call and moves the text pointer on (NULL at the
        end); the clause's punctuation is not in its result (callers that need it split clauses themselves).
        """
        buffer = ctypes.create_string_buffer(text)
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        clauses: list[str] = []
        while pointer.value:
            result = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
            if result:
                clauses.append(result.decode("utf-8", errors="replace"))
        return clauses

    def synth(self, text: bytes, job: _Job) -> None:
        """Synthesise ``text`` (UTF-8), delivering chunks to ``job``; returns when done or cancelled."""
        self._job = job
        try:
            err = self._lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        finally:
            self._job = None
        # An abort requested by the callback is not an error of its own.
        if err != _EE_OK and not job.cancel.is_set():
            raise RuntimeError(f"espeak_Synth failed ({err})")


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    """The process-wide engine, initialised on first use. Call with :data:`_LOCK` held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def _clean(text: str) -> bytes:
    """UTF-8 bytes safe to hand to C: no NULs or other control characters, no lone surrogates."""
    return _CONTROL_CHARS.sub(" ", text).encode("utf-8", errors="replace")


def phonemize(text: str, voice: str = "en-us") -> list[str]:
    """IPA phonemes of ``text`` spoken by eSpeak NG voice ``voice``, one string per clause (for Piper voices,
    which were trained on eSpeak NG's phonemes). Serialised with synthesis on the process-wide engine."""
    if not text.strip():
        return []
    with _LOCK:
        engine = _engine()
        engine.set_voice(voice)
        return engine.phonemes(_clean(text))


class EspeakSynthesizer(Synthesizer):
    """eSpeak NG, streaming: :meth:`synthesize` yields ``int16`` chunks at :attr:`sample_rate` (22050 Hz).

    Streaming design: libespeak-ng is initialised in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode, where
    ``espeak_Synth`` blocks until the whole text is spoken and hands the audio to a C callback in
    :data:`BUFFER_MS` pieces while it goes. A generator cannot yield from inside a C callback, so each
    :meth:`synthesize` call runs ``espeak_Synth`` on a short-lived worker thread whose callback puts each
    piece on an unbounded queue; the generator yields them as they arrive. This was chosen over
    sentence-by-sentence synthesis because the first chunk is ready after ~100 ms of audio has been
    produced, whatever the length of the first sentence, and eSpeak keeps its own sentence-level
    prosody and pauses. The queue is unbounded (eSpeak is far faster than real time and the audio is
    small: 44 kB/s), so a slow or abandoned consumer never blocks the worker while it holds the lock.
    Closing the generator early (``.close()`` or dropping it) makes the callback abort the synthesis.

    Empty or whitespace-only text yields no chunks (and :meth:`synthesize_all` returns an empty array)
    rather than raising: a reply that turns out to be empty simply produces no audio.

    Options (keyword-only): ``voice`` (an eSpeak NG voice name, default ``"en-us"``), ``rate`` in words
    per minute (80-450, default 160) and ``pitch`` (0-100, default 50 = the voice's base pitch).
    An unknown voice or an out-of-range value raises :class:`ValueError` at construction.
    """

    name = "espeak"

    def __init__(self, *, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> None:
        if not RATE_MIN <= rate <= RATE_MAX:
            raise ValueError(f"rate must be between {RATE_MIN} and {RATE_MAX} words per minute, got {rate}")
        if not PITCH_MIN <= pitch <= PITCH_MAX:
            raise ValueError(f"pitch must be between {PITCH_MIN} and {PITCH_MAX}, got {pitch}")
        self.voice = voice
        self.rate = rate
        self.pitch = pitch
        with _LOCK:
            engine = _engine()
            engine.set_voice(voice)  # validates the name now rather than at the first reply
        self.sample_rate = engine.sample_rate

    def _run(self, text: bytes, job: _Job) -> None:
        """Worker thread body. The end marker is queued before the lock is released."""
        with _LOCK:
            try:
                if job.cancel.is_set():
                    return
                engine = _engine()
                engine.set_voice(self.voice)
                engine.set_parameter(_PARAM_RATE, self.rate)
                engine.set_parameter(_PARAM_PITCH, self.pitch)
                engine.synth(text, job)
            except BaseException as exc:
                job.out.put(exc)
            finally:
                job.out.put(None)

    def synthesize(self, text: str) -> Generator[PCM, None, None]:
        """Yield mono ``int16`` chunks at :attr:`sample_rate` as eSpeak produces them."""
        if not text.strip():
            return
        job = _Job()
        worker = threading.Thread(target=self._run, args=(_clean(text), job), name="espeak-synth", daemon=True)
        worker.start()
        try:
            while True:
                item = job.out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancel.set()  # no-op if finished; aborts the synthesis if the consumer stopped early

    def synthesize_all(self, text: str) -> PCM:
        """The whole utterance as one array (empty for empty text)."""
        chunks = list(self.synthesize(text))
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)


def benchmark(runs: int = 3) -> None:
    """Print time to first chunk and real-time factor for a two-sentence reply.

    ``python -c "from media.tts.espeak import benchmark; benchmark()"``
    """
    import time

    text = "Thank you, that is really helpful. Could you tell me a little more about what a typical day looks like?"
    t0 = time.perf_counter()
    tts = EspeakSynthesizer()
    print(f"init (load library + voice): {(time.perf_counter() - t0) * 1000:.1f} ms, {tts.sample_rate} Hz")
    for run in range(runs):
        start = time.perf_counter()
        first = 0.0
        samples = chunks = 0
        for chunk in tts.synthesize(text):
            if not chunks:
                first = time.perf_counter() - start
            samples += len(chunk)
            chunks += 1
        total = time.perf_counter() - start
        audio_s = samples / tts.sample_rate
        print(
            f"run {run}: first chunk {first * 1000:.1f} ms, total {total * 1000:.1f} ms, {chunks} chunks, "
            f"audio {audio_s:.2f} s, RTF {total / audio_s:.4f} ({audio_s / total:.0f}x real time)"
        )
