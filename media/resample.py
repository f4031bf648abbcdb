"""Sample-rate conversion between WebRTC (48 kHz) and the speech pipeline (16 kHz mono), in numpy.

Two streaming converters, both exact across chunk boundaries (feeding a signal in pieces gives the same
samples as feeding it in one go, up to float rounding: at most 1 LSB):

* :class:`Downsampler48to16`: inbound WebRTC audio (48 kHz, interleaved or planar stereo, 20 ms frames
  of 960 samples per channel) to 16 kHz mono ``int16``. Channels are averaged, then a 95-tap
  Kaiser-windowed sinc low-pass (cut-off 7.6 kHz: flat to ~6.6 kHz, >= 70 dB down from ~8.6 kHz, so
  aliases land above ~7.4 kHz, outside the band the recognisers use) is applied at the decimated
  points only. Causal, linear phase: the output lags by exactly 15 samples at 16 kHz (0.94 ms), and
  every 960-sample input frame gives exactly one 320-sample output frame. It runs on the event loop for
  every inbound frame, so the hot path is a handful of numpy calls on preallocated buffers (one small
  matrix product); see :func:`_bench` for the measured cost.
* :class:`Resampler` / :class:`Upsampler`: any rational ratio (e.g. eSpeak's 22050 Hz to 48 kHz for the
  outbound track, 320/147), polyphase windowed sinc (48 taps per phase by default, Kaiser beta 8.6,
  cut-off at 92 % of the lower Nyquist frequency). Zero-delay (the kernel is centred on each output
  instant; it looks ahead 24 input samples), so ``process`` + ``flush`` returns exactly
  ``ceil(len * rate_out / rate_in)`` samples aligned with the input, identical to :func:`resample`.

No scipy: the filters are designed here (windowed sinc with :func:`numpy.i0`).
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from media.audio import PCM

__all__ = [
    "Downsampler48to16",
    "Resampler",
    "Upsampler",
    "kaiser_sinc",
    "resample",
    "single_threaded_blas",
    "webrtc_to_pcm16k",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

WEBRTC_RATE: Final = 48_000
WEBRTC_FRAME: Final = 960  # samples per channel in one 20 ms WebRTC frame


def kaiser_sinc(tau: F64, cutoff: float, half_width: float, beta: float) -> F64:
    """Windowed-sinc low-pass kernel at (fractional) offsets ``tau``, in input samples.

    ``cutoff`` is in cycles per input sample (0.5 = Nyquist); the Kaiser window spans ``|tau| <= half_width``
    and is zero outside.
    """
    x = np.clip(tau / half_width, -1.0, 1.0)
    window = np.i0(beta * np.sqrt(1.0 - x * x)) / np.i0(beta)
    kernel: F64 = 2.0 * cutoff * np.sinc(2.0 * cutoff * tau) * window
    kernel[np.abs(tau) > half_width] = 0.0
    return kernel


def _to_int16(y: F32) -> PCM:
    """Round half to even and saturate, in place on ``y``; returns a new int16 array."""
    np.rint(y, out=y)
    np.minimum(y, 32767.0, out=y)
    np.maximum(y, -32768.0, out=y)
    return y.astype(np.int16)


class Downsampler48to16:
    """48 kHz (stereo or mono) to 16 kHz mono ``int16``, streaming; one instance per inbound track.

    ``process`` accepts what ``av.AudioFrame.to_ndarray()`` returns: packed ``s16`` of shape
    ``(1, samples * channels)`` (aiortc's default: stereo, 960 samples per channel), planar ``s16p`` of
    shape ``(channels, samples)``, or a 1-D interleaved array. Any length works (leftover samples that do
    not make a whole output sample wait for the next call); 960 samples per channel is the fast path.
    """

    TAPS: Final = 95  # odd (linear phase); (TAPS - 1) / 2 - 2 is a multiple of 3: integer output delay
    CUTOFF_HZ: Final = 7_600.0
    BETA: Final = 7.0  # Kaiser window: about 70 dB stop-band attenuation
    DELAY: Final = 15  # output samples: ((TAPS - 1) / 2 - 2) / 3
    _SPAN: Final = 96  # coefficients per output sample, TAPS padded to a multiple of 3
    _HIST: Final = 93  # input samples of history kept between calls (_SPAN - 3)
    _BLOCK: Final = 32  # outputs per row of the block matrix product

    def __init__(self, channels: int = 2) -> None:
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self.channels = channels
        k = np.arange(self.TAPS, dtype=np.float64) - (self.TAPS - 1) / 2
        h = kaiser_sinc(k, self.CUTOFF_HZ / WEBRTC_RATE, (self.TAPS + 1) / 2, self.BETA)
        h /= h.sum()
        # Output m (local) = g . buf[3m : 3m + 96] where buf = 93 samples of history + the new input;
        # the first coefficient is the padding zero. The channel average is folded into g.
        g = np.zeros(self._SPAN, dtype=np.float64)
        g[1:] = h[::-1] / channels
        self._g: F32 = g.astype(np.float32)
        # Block form for the fixed 960-sample frame: 10 rows of 32 outputs, each row a window of
        # 3 * 32 + 93 input samples; Y = X @ W.T is one small BLAS product.
        b = self._BLOCK
        width = 3 * b + self._HIST
        w = np.zeros((b, width), dtype=np.float32)
        for j in range(b):
            w[j, 3 * j : 3 * j + self._SPAN] = self._g
        self._wt: F32 = np.ascontiguousarray(w.T)
        rows = WEBRTC_FRAME // 3 // b
        self._fbuf: F32 = np.zeros(self._HIST + WEBRTC_FRAME, dtype=np.float32)
        self._frows: F32 = as_strided(self._fbuf, shape=(rows, width), strides=(3 * b * 4, 4))
        self._fx: F32 = np.empty((rows, width), dtype=np.float32)
        self._fy: F32 = np.empty((rows, b), dtype=np.float32)
        self._pending: F32 = np.zeros(0, dtype=np.float32)  # 0..2 mono samples not yet consumed

    def reset(self) -> None:
        """Forget the filter state (start of a new, unrelated stream)."""
        self._fbuf[:] = 0.0
        self._pending = np.zeros(0, dtype=np.float32)

    def _mono_into(self, frame: np.ndarray, out: F32) -> None:
        """Sum the channels of ``frame`` into ``out`` (the 1/channels gain is in the filter)."""
        c = self.channels
        if frame.ndim == 2 and frame.shape[0] == c and c > 1:  # planar
            if c == 2:
                np.add(frame[0], frame[1], out=out, dtype=np.float32)
            else:
                np.sum(frame, axis=0, dtype=np.float32, out=out)
            return
        flat = frame.reshape(-1)
        if c == 1:
            out[:] = flat
        elif c == 2:
            np.add(flat[0::2], flat[1::2], out=out, dtype=np.float32)
        else:
            np.sum(flat.reshape(-1, c), axis=1, dtype=np.float32, out=out)

    def _samples_per_channel(self, frame: np.ndarray) -> int:
        c = self.channels
        if frame.ndim == 2 and frame.shape[0] == c and c > 1:
            return int(frame.shape[1])
        if frame.ndim not in (1, 2) or (frame.ndim == 2 and frame.shape[0] != 1):
            raise ValueError(f"expected packed (1, n*{c}), planar ({c}, n) or 1-D audio, got shape {frame.shape}")
        size = int(frame.size)
        if size % c:
            raise ValueError(f"interleaved audio of {size} samples is not a whole number of {c}-channel frames")
        return size // c

    def process(self, frame: np.ndarray) -> PCM:
        """The 16 kHz mono samples for ``frame`` (320 for a 960-sample frame)."""
        n = self._samples_per_channel(frame)
        if n == WEBRTC_FRAME and len(self._pending) == 0:
            buf = self._fbuf
            buf[: self._HIST] = buf[WEBRTC_FRAME:]
            self._mono_into(frame, buf[self._HIST :])
            np.copyto(self._fx, self._frows)
            np.matmul(self._fx, self._wt, out=self._fy)
            return _to_int16(self._fy.reshape(-1))
        return self._process_any(frame, n)

    def _process_any(self, frame: np.ndarray, n: int) -> PCM:
        mono = np.empty(n, dtype=np.float32)
        if n:
            self._mono_into(frame, mono)
        x = np.concatenate((self._pending, mono)) if len(self._pending) else mono
        outputs = len(x) // 3
        used = 3 * outputs
        self._pending = x[used:].copy()
        if outputs == 0:
            return np.zeros(0, dtype=np.int16)
        buf = np.concatenate((self._fbuf[WEBRTC_FRAME:], x[:used]))
        rows = as_strided(buf, shape=(outputs, self._SPAN), strides=(12, 4))
        y: F32 = np.ascontiguousarray(rows) @ self._g
        # keep the last 93 input samples where the fast path expects them
        self._fbuf[WEBRTC_FRAME:] = buf[len(buf) - self._HIST :]
        return _to_int16(y)


def single_threaded_blas() -> bool:
    """Make numpy's OpenBLAS use one thread in this process; True if it was found and set.

    The filters here are small matrix products on the event loop (a few hundred thousand multiply-adds).
    OpenBLAS splits such a product over every core and its helper threads spin while they wait for
    work: measured on 2 cores, a 100 ms chunk through ``Upsampler(22050)`` took 640 us of the loop's
    CPU plus a spinning helper thread, against 100 us on one thread. Same effect as
    ``OPENBLAS_NUM_THREADS=1``, but applied after numpy is loaded (what threadpoolctl does).
    """
    import numpy.linalg  # noqa: F401  (makes sure the BLAS library is loaded)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    done = False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(1))
                done = True
                break
    return done


def webrtc_to_pcm16k(frame_samples: np.ndarray, state: Downsampler48to16 | None = None) -> PCM:
    """One aiortc frame (``frame.to_ndarray()``, s16 stereo 48 kHz) as 16 kHz mono int16.

    Pass the track's :class:`Downsampler48to16` as ``state`` for a continuous stream; without it each
    frame is filtered from silence (a fresh filter), which is only right for one-off conversions.
    """
    return (state or Downsampler48to16()).process(frame_samples)


@functools.lru_cache(maxsize=32)
def _polyphase_matrix(up: int, down: int, half: int, width: int, cutoff: float, beta: float) -> F32:
    """The ``width x up`` coefficient matrix of :class:`Resampler` (transposed), shared and read-only.

    Designing it takes ~10 ms for 22050 -> 48000 Hz; every assistant utterance makes a resampler, so the
    design is made once per ratio.
    """
    # Row j: output at t = j*M/L (input units) within a period; column c: input index c - H + 1.
    t = np.arange(up, dtype=np.float64)[:, None] * down / up
    inputs = np.arange(width, dtype=np.float64)[None, :] - (half - 1)
    tau = t - inputs
    q = np.floor(t)
    in_window = (inputs > q - half) & (inputs <= q + half)  # exactly 2H taps per output
    c = kaiser_sinc(tau, 0.5 * cutoff, float(half), beta) * in_window
    c /= c.sum(axis=1, keepdims=True)  # unit DC gain for every phase
    ct: F32 = np.ascontiguousarray(c.T.astype(np.float32))
    ct.flags.writeable = False
    return ct


class Resampler:
    """Streaming rational-ratio resampler for mono ``int16`` (polyphase Kaiser-windowed sinc).

    ``process(chunk)`` returns the output samples that are complete so far; ``flush()`` returns the rest
    (the input is taken to end there, followed by silence) and resets the resampler for a new stream.
    Concatenating everything returned is exactly :func:`resample` of the concatenated input:
    ``ceil(n * rate_out / rate_in)`` samples, time-aligned with it (no delay).

    ``taps`` is the kernel length in input samples for upsampling (scaled up by ``rate_in / rate_out``
    when downsampling, so the transition band stays the same fraction of the output band); ``cutoff``
    is the fraction of the lower Nyquist frequency at the centre of the transition band.

    Implementation: with ``L/M = rate_out/rate_in`` reduced, every ``L`` outputs consume exactly ``M``
    inputs with the same pattern of fractional offsets, so a block of ``L`` outputs is a fixed
    ``L x (M + taps - 1)`` matrix times a window of the input, and a whole chunk is one matrix product
    over overlapping input windows. Outputs are produced a period (``L`` samples, at least 32; 320 =
    6.7 ms for 22050 -> 48000) at a time, once the look-ahead of ``taps / 2`` input samples has arrived.
    """

    def __init__(
        self, rate_in: int, rate_out: int = WEBRTC_RATE, *, taps: int = 48, cutoff: float = 0.92, beta: float = 8.6
    ) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        if not 0.0 < cutoff <= 1.0:
            raise ValueError("cutoff must be in (0, 1]")
        self.rate_in = rate_in
        self.rate_out = rate_out
        g = math.gcd(rate_in, rate_out)
        # L/M in lowest terms, then both multiplied so that one matrix row makes at least ~32 outputs
        # (fewer, larger rows: 48 kHz -> 16 kHz is rows of 32 outputs from windows of 96 + 143 inputs).
        group = max(1, 32 // (rate_out // g))
        self.up = up = rate_out // g * group  # L
        self.down = down = rate_in // g * group  # M
        scale = min(1.0, up / down)
        half = math.ceil(taps / scale / 2)  # H: the kernel spans H input samples either side
        self.taps = 2 * half
        width = down + 2 * half - 1
        if up * width > 4_000_000:
            raise ValueError(f"unsupported ratio {rate_in} -> {rate_out} (period of {up} outputs is too long)")
        self._half = half
        self._ct = _polyphase_matrix(up, down, half, width, scale * cutoff, beta)
        self._width = width
        self._reset()

    def _reset(self) -> None:
        self._buf: F32 = np.zeros(self._half - 1, dtype=np.float32)  # inputs from index _base on
        self._base = -(self._half - 1)
        self._in = 0  # input samples received
        self._period = 0  # next period to produce
        self._out = 0  # output samples returned

    def process(self, pcm: PCM) -> PCM:
        """Resample the next chunk; may return fewer samples than its length implies (look-ahead)."""
        if self.up == self.down:
            return np.array(pcm, dtype=np.int16, copy=True)
        if len(pcm):
            self._buf = np.concatenate((self._buf, np.asarray(pcm, dtype=np.float32)))
            self._in += len(pcm)
        return self._run(None)

    def flush(self) -> PCM:
        """The remaining output, ending exactly at ``ceil(inputs * rate_out / rate_in)``; then reset."""
        if self.up == self.down:
            return np.zeros(0, dtype=np.int16)
        total = -(-self._in * self.up // self.down)
        periods = -(-total // self.up)
        need = periods * self.down + self._half  # inputs needed to finish period `periods - 1`
        if need > self._in:
            self._buf = np.concatenate((self._buf, np.zeros(need - self._in, dtype=np.float32)))
        before = self._out
        out = self._run(need)
        out = out[: max(0, total - before)]
        self._reset()
        return out

    def _run(self, available: int | None) -> PCM:
        L, M, H = self.up, self.down, self._half
        have = self._in if available is None else max(self._in, available)
        # period p needs inputs up to p*M + M + H - 1
        end = (have - M - H) // M + 1 if have >= M + H else 0
        count = end - self._period
        if count <= 0:
            return np.zeros(0, dtype=np.int16)
        start = self._period * M - H + 1 - self._base
        window = self._buf[start:]
        rows = as_strided(window, shape=(count, self._width), strides=(M * 4, 4))
        y: F32 = (np.ascontiguousarray(rows) @ self._ct).reshape(-1)
        self._period = end
        new_base = end * M - H + 1
        self._buf = self._buf[new_base - self._base :].copy()
        self._base = new_base
        self._out += count * L
        return _to_int16(y)


class Upsampler(Resampler):
    """A :class:`Resampler` to 48 kHz by default: synthesiser output for the outbound WebRTC track."""

    def __init__(
        self, rate_in: int, rate_out: int = WEBRTC_RATE, *, taps: int = 48, cutoff: float = 0.92, beta: float = 8.6
    ) -> None:
        super().__init__(rate_in, rate_out, taps=taps, cutoff=cutoff, beta=beta)


def resample(pcm: PCM, rate_in: int, rate_out: int) -> PCM:
    """Resample a whole signal in one go (same samples as streaming it through a :class:`Resampler`)."""
    if rate_in == rate_out:
        return np.array(pcm, dtype=np.int16, copy=True)
    r = Resampler(rate_in, rate_out)
    return np.concatenate((r.process(pcm), r.flush()))


def _bench() -> None:  # pragma: no cover - measurement helper: python -m media.resample
    import timeit

    single_threaded_blas()
    rng = np.random.default_rng(0)
    frame = rng.integers(-8000, 8000, size=(1, 2 * WEBRTC_FRAME), dtype=np.int16)
    d = Downsampler48to16()
    n = 20_000
    t = timeit.timeit(lambda: d.process(frame), number=n) / n
    print(f"Downsampler48to16.process (960x2 -> 320): {t * 1e6:.1f} us per 20 ms frame")
    for rate in (22_050, 16_000, 24_000):
        up = Upsampler(rate)
        chunk = rng.integers(-8000, 8000, size=rate // 10, dtype=np.int16)  # 100 ms
        small = rng.integers(-8000, 8000, size=rate // 50, dtype=np.int16)  # 20 ms
        t = timeit.timeit(functools.partial(up.process, chunk), number=2000) / 2000
        t20 = timeit.timeit(functools.partial(up.process, small), number=5000) / 5000
        print(f"Upsampler({rate}).process: {t * 1e6:.1f} us per 100 ms chunk, {t20 * 1e6:.1f} us per 20 ms chunk")


if __name__ == "__main__":  # pragma: no cover
    _bench()
