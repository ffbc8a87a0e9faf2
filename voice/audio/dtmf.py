"""DTMF (touch-tone) signalling: the ITU-T Q.23 tone generator and a Q.24-style streaming detector.

ITU-T Q.23 assigns each key a pair of tones, one from the low (row) group and one from the high (column)
group::

              1209 Hz  1336 Hz  1477 Hz  1633 Hz
    697 Hz       1        2        3        A
    770 Hz       4        5        6        B
    852 Hz       7        8        9        C
    941 Hz       *        0        #        D

:func:`dtmf_tones` synthesises exact tone pairs (for in-band sending on legs without RFC 4733 events).

:class:`DtmfDetector` follows the receiver requirements of ITU-T Q.24 with their common values: it
accepts tone pairs of ``min_duration_ms`` (40 ms) or more and rejects 25 ms or less, accepts a frequency
deviation up to 1.5 % and rejects 3.5 % or more, limits twist (the level of the high-group tone minus the
low-group tone) to ``-normal_twist_db`` (the low group louder by up to 8 dB) through ``+reverse_twist_db``
(the high group louder by up to 4 dB), and must not respond to speech, noise or silence. It works at 8, 16,
24, 32 and 48 kHz.

How it works: every 5 ms (a hop) it takes the last 20 ms of audio, applies a Hann window and computes the
eight DFT bins at the Q.23 frequencies - the quantities the Goertzel algorithm computes, here as one small
matrix product per batch of hops (faster than a per-sample recursion in Python). A hop is a *hit* for a key
when, for the strongest row and the strongest column:

- both tones are at least ``min_level_dbfs`` (each);
- the twist is within the limits above;
- the two tones carry at least 70 % of the window's energy (speech and noise spread their energy widely);
- each tone's frequency, measured from the phase advance of its bin between consecutive hops, is within
  2.5 % of nominal (between the accept and reject limits; exact to a fraction of a Hz for clean tones).

Consecutive hits of one key form a tone. Its start and end are where the tone-pair amplitude crosses
half its peak, interpolated between hops: with a symmetric window that is where the window's centre
crosses the tone's edge, so the measured duration is the tone's, to about 1 ms. Tones of the same key
less than 20 ms apart are one key press (an interruption, not a pause; Q.24's shortest pause is 40 ms).
The key is reported once, about 25 ms after its tone ends, if the tone lasted at least 80 % of
``min_duration_ms`` (32 ms by default: the middle of Q.24's 25..40 ms don't-care band).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from voice.audio.pcm import FloatArray, amplitude_for_dbfs, samples, to_pcm16
from voice.errors import AudioError

__all__ = ["COLUMN_HZ", "KEYPAD", "ROW_HZ", "DtmfDetector", "DtmfDigit", "dtmf_frequencies", "dtmf_tones"]

ROW_HZ: Final = (697.0, 770.0, 852.0, 941.0)
"""Q.23 low-group frequencies."""
COLUMN_HZ: Final = (1209.0, 1336.0, 1477.0, 1633.0)
"""Q.23 high-group frequencies."""
KEYPAD: Final = ("123A", "456B", "789C", "*0#D")
"""Keys by row and column."""

DETECTOR_RATES: Final = (8000, 16000, 24000, 32000, 48000)

ComplexArray = npt.NDArray[np.complex128]

_WINDOW_MS: Final = 20
_HOP_MS: Final = 5
_MAX_GAP_HOPS: Final = 2  # a run of hits survives up to 10 ms of misses
_BRIDGE_MS: Final = 20.0  # tones of one key this close are one key press (Q.24: short interruptions)
_LOOKBACK_HOPS: Final = _WINDOW_MS // _HOP_MS + 2
_MIN_PURITY: Final = 0.7
_MAX_DEVIATION: Final = 0.025
_DURATION_FRACTION: Final = 0.8


def dtmf_frequencies(digit: str) -> tuple[float, float]:
    """The (low, high) Q.23 frequencies of ``digit`` (``0-9``, ``*``, ``#``, ``A-D``; case-insensitive)."""
    key = digit.upper()
    for row, keys in enumerate(KEYPAD):
        column = keys.find(key) if len(key) == 1 else -1
        if column >= 0:
            return ROW_HZ[row], COLUMN_HZ[column]
    raise AudioError(f"not a DTMF digit: {digit!r} (use 0-9, *, #, A-D)")


def dtmf_tones(
    digits: str,
    sample_rate: int,
    *,
    on_ms: int = 100,
    off_ms: int = 60,
    level_dbfs: float = -10.0,
    twist_db: float = 0.0,
) -> bytes:
    """PCM16 of ``digits`` dialled as Q.23 tone pairs: per digit ``on_ms`` of tone then ``off_ms`` of silence.

    ``level_dbfs`` is the level of the low-group tone (0 dBFS = a full-scale sine); the high-group tone is
    at ``level_dbfs + twist_db``. Both tones start at phase 0. Raises :class:`AudioError` for a character
    that is not a DTMF digit or a non-positive rate.
    """
    if sample_rate <= 0:
        raise AudioError(f"sample rate must be positive; got {sample_rate}")
    if on_ms < 0 or off_ms < 0:
        raise AudioError("on_ms and off_ms must not be negative")
    pairs = [dtmf_frequencies(d) for d in digits]
    on = round(sample_rate * on_ms / 1000)
    off = round(sample_rate * off_ms / 1000)
    t = np.arange(on) / sample_rate
    low_amp = amplitude_for_dbfs(level_dbfs)
    high_amp = amplitude_for_dbfs(level_dbfs + twist_db)
    gap = np.zeros(off)
    parts: list[FloatArray] = []
    for low, high in pairs:
        parts.append(low_amp * np.sin(2 * np.pi * low * t) + high_amp * np.sin(2 * np.pi * high * t))
        parts.append(gap)
    return to_pcm16(np.concatenate(parts)) if parts else b""


@dataclass(frozen=True)
class DtmfDigit:
    """One key press: the key and where its tone started and ended on the detector's timeline (ms)."""

    digit: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class _Tone:
    """A measured tone pair not yet reported (it may continue after a short interruption)."""

    key: int
    start_ms: float
    end_ms: float


@dataclass
class _Run:
    """Consecutive hits of one key; ``envelope[i]`` is its tone-pair amplitude at hop ``first_hop + i``."""

    key: int
    first_hop: int
    envelope: list[float]
    first_hit: int  # hop numbers
    last_hit: int
    misses: int = 0


class DtmfDetector:
    """Streaming DTMF detector for one stream of PCM16 (see the module docstring for the method).

    ``push`` accepts audio of any length (a whole number of samples) and returns the key presses that are
    complete, each once, with ``start_ms``/``end_ms`` on the timeline of all audio pushed so far. A key
    press is complete about 25 ms after its tone ends, so a tone still sounding at the end of a push is
    reported by a later push. Parameters: ``min_duration_ms`` (shortest tone to accept), ``min_level_dbfs``
    (quietest tone, each of the pair), ``normal_twist_db`` (how much louder the low-group tone may be) and
    ``reverse_twist_db`` (how much louder the high-group tone may be). Not thread-safe: one per stream.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        min_duration_ms: int = 40,
        min_level_dbfs: float = -40.0,
        normal_twist_db: float = 8.0,
        reverse_twist_db: float = 4.0,
    ) -> None:
        if sample_rate not in DETECTOR_RATES:
            raise AudioError(f"DTMF detection supports {list(DETECTOR_RATES)} Hz, not {sample_rate} Hz")
        if min_duration_ms <= 0:
            raise AudioError(f"min_duration_ms must be positive; got {min_duration_ms}")
        self.sample_rate = sample_rate
        self.min_duration_ms = min_duration_ms
        self.min_level_dbfs = min_level_dbfs
        self.normal_twist_db = normal_twist_db
        self.reverse_twist_db = reverse_twist_db
        self._window = sample_rate * _WINDOW_MS // 1000
        self._hop = sample_rate * _HOP_MS // 1000
        freqs = np.array(ROW_HZ + COLUMN_HZ)
        self._freqs = freqs
        hann = np.hanning(self._window)
        n = np.arange(self._window)
        omega = 2 * np.pi * freqs / sample_rate
        norm = 2.0 / hann.sum()  # amplitude of a sine exactly on a bin
        self._basis = (
            np.concatenate(
                [hann[:, None] * np.cos(np.outer(n, omega)), hann[:, None] * np.sin(np.outer(n, omega))],
                axis=1,
            )
            * norm
        )
        self._energy_weights = hann / hann.sum()
        self._advance = np.exp(-1j * omega * self._hop)  # removes the nominal phase advance per hop
        self._deviation_scale = sample_rate / (2 * np.pi * self._hop) / freqs  # radians -> fraction of f
        self._min_amplitude = amplitude_for_dbfs(min_level_dbfs)
        # Window k covers samples [k*hop - window/2, k*hop + window/2): its centre is (k*hop - 0.5) samples.
        self._buffer: FloatArray = np.zeros(self._window // 2)
        self._next_hop = 0
        self._previous: ComplexArray | None = None
        self._history: deque[tuple[int, list[float]]] = deque(maxlen=_LOOKBACK_HOPS)
        self._run: _Run | None = None
        self._pending: _Tone | None = None

    def push(self, pcm16: bytes) -> list[DtmfDigit]:
        """Analyse more audio; return the key presses that ended in it."""
        new = samples(pcm16).astype(np.float64)
        buffer = np.concatenate((self._buffer, new)) if len(self._buffer) else new
        hops = (len(buffer) - self._window) // self._hop + 1 if len(buffer) >= self._window else 0
        if hops <= 0:
            self._buffer = buffer
            return []
        step = buffer.strides[0]
        windows = np.lib.stride_tricks.as_strided(
            buffer, shape=(hops, self._window), strides=(step * self._hop, step), writeable=False
        )
        self._buffer = buffer[hops * self._hop :].copy()
        projections = windows @ self._basis
        bins = projections[:, :8] - 1j * projections[:, 8:]
        energy = (windows * windows) @ self._energy_weights
        return self._classify(bins, energy)

    def _classify(self, bins: ComplexArray, energy: FloatArray) -> list[DtmfDigit]:
        amplitude = np.abs(bins)
        previous = self._previous if self._previous is not None else np.zeros(8, dtype=np.complex128)
        before = np.vstack((previous[None, :], bins[:-1]))
        deviation = np.abs(np.angle(bins * np.conj(before) * self._advance)) * self._deviation_scale
        self._previous = bins[-1].copy()

        hops = len(bins)
        index = np.arange(hops)
        row = np.argmax(amplitude[:, :4], axis=1)
        col = np.argmax(amplitude[:, 4:], axis=1) + 4
        a_row = amplitude[index, row]
        a_col = amplitude[index, col]
        with np.errstate(divide="ignore", invalid="ignore"):
            twist = 20 * np.log10(a_col / a_row)
            purity = (a_row * a_row + a_col * a_col) / 2.0 / energy
        hit = (
            (a_row >= self._min_amplitude)
            & (a_col >= self._min_amplitude)
            & (twist >= -self.normal_twist_db)
            & (twist <= self.reverse_twist_db)
            & (purity >= _MIN_PURITY)
            & (deviation[index, row] <= _MAX_DEVIATION)
            & (deviation[index, col] <= _MAX_DEVIATION)
        )
        keys = np.where(hit, row * 4 + (col - 4), -1).tolist()
        amplitudes = amplitude.tolist()
        found: list[DtmfDigit] = []
        for key, amps in zip(keys, amplitudes, strict=True):
            self._step(key, amps, found)
        return found

    def _step(self, key: int, amps: list[float], found: list[DtmfDigit]) -> None:
        """Advance the state machine by one hop, appending key presses that are complete to ``found``."""
        hop = self._next_hop
        self._next_hop += 1
        run = self._run
        if run is not None:
            run.envelope.append(_pair_amplitude(run.key, amps))
            if key == run.key:
                run.last_hit, run.misses = hop, 0
            else:
                run.misses += 1
                if key >= 0 or run.misses > _MAX_GAP_HOPS:
                    self._finish(run, found)
                    self._run = run = None
        if run is None and key >= 0:
            lookback = [(h, _pair_amplitude(key, a)) for h, a in self._history]
            first = lookback[0][0] if lookback else hop
            self._run = run = _Run(
                key, first, [e for _, e in lookback] + [_pair_amplitude(key, amps)], hop, hop
            )
        self._history.append((hop, amps))
        pending = self._pending
        if pending is not None:
            horizon = pending.end_ms + _BRIDGE_MS + _HOP_MS
            continuing = (
                run is not None and run.key == pending.key and self._centre_ms(run.first_hit) <= horizon
            )
            if not continuing and self._centre_ms(hop) > horizon:
                self._emit(pending, found)
                self._pending = None

    def _centre_ms(self, hop: float) -> float:
        return (hop * self._hop - 0.5) * 1000.0 / self.sample_rate

    def _finish(self, run: _Run, found: list[DtmfDigit]) -> None:
        """Measure a finished run; merge it with the previous one across a short interruption."""
        env = run.envelope
        lo, hi = run.first_hit - run.first_hop, run.last_hit - run.first_hop
        if hi <= lo:
            return  # a single hit hop: not a tone
        peak = max(env[lo : hi + 1])
        half = peak / 2.0
        i = lo
        while i < hi and env[i] < half:
            i += 1
        while i > 0 and env[i - 1] >= half:
            i -= 1
        rise = float(i) if i == 0 else i - 1 + (half - env[i - 1]) / (env[i] - env[i - 1])
        j = hi
        while j > lo and env[j] < half:
            j -= 1
        while j + 1 < len(env) and env[j + 1] >= half:
            j += 1
        fall = float(j) if j + 1 >= len(env) else j + (env[j] - half) / (env[j] - env[j + 1])
        start = self._centre_ms(run.first_hop + rise)
        end = self._centre_ms(run.first_hop + fall)
        pending = self._pending
        if pending is not None and pending.key == run.key and start - pending.end_ms <= _BRIDGE_MS:
            self._pending = _Tone(run.key, pending.start_ms, end)
            return
        if pending is not None:
            self._emit(pending, found)
        self._pending = _Tone(run.key, start, end)

    def _emit(self, tone: _Tone, found: list[DtmfDigit]) -> None:
        if tone.end_ms - tone.start_ms >= _DURATION_FRACTION * self.min_duration_ms:
            digit = KEYPAD[tone.key // 4][tone.key % 4]
            found.append(DtmfDigit(digit, max(0, round(tone.start_ms)), round(tone.end_ms)))


def _pair_amplitude(key: int, amps: list[float]) -> float:
    return amps[key // 4] + amps[4 + key % 4]
