"""The call recording: one stereo 16-bit WAV, caller on the left, agent on the right, on one timeline.

Both channels are placed by the call timeline (``t_ms``, ms since the call started): sample
``t_ms * sample_rate / 1000`` of the file is that moment, whatever arrived when. Gaps are silence. The agent
channel must hold what the caller really heard: write agent audio at the position it started playing, and if
audio was written ahead of playout and then cut by a barge-in, call :meth:`Recorder.truncate_agent` at the
moment playout stopped.

Incremental writing. Audio is first placed in a small in-memory window and committed to the file in order.
The window's right edge, the *horizon*, follows the caller channel (live caller audio arrives continuously,
so its end is the call's "now") minus ``hold_ms``, which leaves room for agent audio reported a little late
by a playout clock and for truncation. Whenever the horizon is ``flush_every_ms`` past what the file holds,
the recorder commits up to it and rewrites the WAV header (libsndfile ``SFC_UPDATE_HEADER_NOW``), so that at
any moment the file on disk is a valid WAV. After a ``kill -9`` it holds everything but the last
``hold_ms + flush_every_ms`` (under a second with the defaults). :meth:`Recorder.flush` commits on demand.
Before the first caller audio there is no clock and nothing is committed by itself; a leg that sends no
caller audio (no comfort noise, no silence frames) should call ``flush(upto_ms=now)`` every second.

Audio comes in the call's ``codec``: PCM16, or G.711 (µ-law, A-law) codes that are decoded here. Contiguous
audio is gathered per channel (up to ``run_ms``, 100 ms by default), then decoded and placed in the window
as one block: a call writes a 20 ms frame per channel every 20 ms, and one numpy operation per 100 ms costs
far less than five. Every operation that reads or changes the window places the gathered audio first, so
the result is the same as placing each write at once.

Written with ``soundfile`` (libsndfile), which writes straight to the file descriptor: what is committed is
in the OS page cache at once, so it survives the process (not a power loss; nothing here calls fsync).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf

from voice.audio.g711 import alaw_decode, ulaw_decode
from voice.errors import AudioError
from voice.logs import get_logger

__all__ = ["SUPPORTED_RATES", "Recorder"]

SUPPORTED_RATES: Final = frozenset({8000, 16000, 24000, 48000})
_SFC_UPDATE_HEADER_NOW: Final = 0x1060  # libsndfile sndfile.h
_CALLER: Final = 0
_AGENT: Final = 1

Channel = Literal[0, 1]
_log = get_logger(component="recorder")


class Recorder:
    """Writes one call's stereo recording incrementally. Not thread-safe: use it from one task or thread.

    ``sample_rate`` is the call's working rate (resample before writing if a leg differs); ``codec`` the
    format of the audio written: ``"pcm16"`` (little-endian), ``"pcmu"`` or ``"pcma"`` (G.711 codes).
    ``flush_every_ms`` bounds how much committed-ready audio may wait in memory, ``hold_ms`` how far behind
    the caller's latest audio the file stays open for late agent audio and truncation, and ``max_ahead_ms``
    how far past the file's end a write may land (larger ``t_ms`` values are rejected as bogus).
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int = 8000,
        *,
        flush_every_ms: int = 500,
        hold_ms: int = 400,
        max_ahead_ms: int = 600_000,
        run_ms: int = 100,
        overwrite: bool = False,
        codec: Literal["pcm16", "pcmu", "pcma"] = "pcm16",
    ) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise AudioError(
                f"recording sample rate must be one of {sorted(SUPPORTED_RATES)}, got {sample_rate}"
            )
        if flush_every_ms <= 0 or hold_ms < 0 or max_ahead_ms <= 0:
            raise AudioError("flush_every_ms and max_ahead_ms must be > 0 and hold_ms >= 0")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._per_ms = sample_rate // 1000
        self._flush_every = flush_every_ms * self._per_ms
        self._hold = hold_ms * self._per_ms
        self._max_ahead = max_ahead_ms * self._per_ms
        if codec not in _DECODERS:
            raise AudioError(f"recording codec must be one of {sorted(_DECODERS)}, got {codec!r}")
        self.codec = codec
        self._width = 2 if codec == "pcm16" else 1  # bytes per sample
        self._decode = _DECODERS[codec]
        self._run_bytes = max(1, run_ms) * self._per_ms * self._width
        if self.path.exists() and not overwrite:
            raise AudioError(f"recording file already exists: {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: Any = sf.SoundFile(
                self.path, mode="w", samplerate=sample_rate, channels=2, subtype="PCM_16", format="WAV"
            )
        except (OSError, RuntimeError) as exc:  # soundfile.LibsndfileError is a RuntimeError
            raise AudioError(f"cannot create recording {self.path}: {exc}") from exc
        self._committed = 0  # frames in the file
        self._buf: npt.NDArray[np.int16] = np.zeros((sample_rate, 2), dtype=np.int16)  # frames after that
        self._end = [0, 0]  # absolute end frame written per channel
        # Per channel, audio gathered and not placed yet: (start frame, audio in the codec).
        self._runs: list[tuple[int, bytearray] | None] = [None, None]
        self._seen_caller = False
        self._closed = False
        self._dropped = 0
        self._update_header()  # a valid (empty) WAV from the start

    # -- properties -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def committed_ms(self) -> int:
        """How much of the timeline is in the file (valid on disk even if the process dies now)."""
        return self._committed // self._per_ms

    @property
    def duration_ms(self) -> int:
        """The end of the timeline written so far, committed or not."""
        ends = [self._run_end(channel) for channel in (_CALLER, _AGENT)]
        return max(self._committed, *ends) // self._per_ms

    @property
    def dropped_ms(self) -> int:
        """Audio discarded because it arrived for a part of the timeline already committed."""
        if not self._closed:
            self._settle_all()
        return self._dropped // self._per_ms

    # -- writing --------------------------------------------------------------------------------------

    def write_caller(self, audio: bytes | bytearray | memoryview, t_ms: int | None = None) -> None:
        """Place caller audio (mono at the recording rate, in the recorder's codec) at ``t_ms``; None means
        right after the previous caller audio."""
        self._seen_caller = True
        self._write(_CALLER, audio, t_ms)

    def write_agent(self, audio: bytes | bytearray | memoryview, t_ms: int | None = None) -> None:
        """Place agent audio as the caller heard it, starting at ``t_ms`` (None: right after the previous
        agent audio). Audio already in the window at that place is overwritten."""
        self._write(_AGENT, audio, t_ms)

    def truncate_agent(self, t_ms: int) -> None:
        """Silence the agent channel from ``t_ms`` on: audio written ahead of playout that was never heard
        (a barge-in cleared it). Only the uncommitted window can change; earlier audio stays."""
        self._check_open()
        frame = self._frame(t_ms)
        self._settle_all()
        start = max(frame, self._committed)
        end = self._end[_AGENT]
        if frame < self._committed:
            _log.debug(
                "agent truncation before the committed part", t_ms=t_ms, committed_ms=self.committed_ms
            )
        if end > start:
            self._buf[start - self._committed : end - self._committed, _AGENT] = 0
        self._end[_AGENT] = min(end, start)

    def flush(self, upto_ms: int | None = None) -> None:
        """Commit audio to the file and rewrite its header.

        With ``upto_ms`` (the call clock's "now", when the caller knows nothing earlier will arrive) the file
        is filled to exactly that point, with silence where nothing was written. Without it the default
        horizon is used (the caller channel's end minus ``hold_ms``).
        """
        self._check_open()
        upto = None if upto_ms is None else self._frame(upto_ms)
        self._settle_all()
        self._commit(self._horizon() if upto is None else upto)

    def close(self, end_ms: int | None = None) -> None:
        """Commit everything and close the file (final header). ``end_ms`` cuts the recording there (e.g.
        agent audio queued after the caller hung up). Safe to call twice."""
        if self._closed:
            return
        try:
            self._settle_all()
            if end_ms is not None:
                end = self._frame(end_ms)
                for channel in (_CALLER, _AGENT):
                    if self._end[channel] > end:
                        start = max(end, self._committed)
                        self._buf[start - self._committed : self._end[channel] - self._committed, channel] = 0
                        self._end[channel] = start
            else:
                end = max(self._end)
            self._commit(end)
        finally:
            self._closed = True
            try:
                self._file.close()
            except (OSError, RuntimeError) as exc:
                raise AudioError(f"cannot finish recording {self.path}: {exc}") from exc

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AudioError(f"recording {self.path} is closed")

    def _frame(self, t_ms: int) -> int:
        if isinstance(t_ms, bool) or not isinstance(t_ms, int):
            raise AudioError(f"t_ms must be an int (ms since call start), got {type(t_ms).__name__}")
        if t_ms < 0:
            raise AudioError(f"t_ms must be >= 0, got {t_ms}")
        return t_ms * self._per_ms

    def _horizon(self) -> int:
        # Until caller audio arrives there is no clock: keep everything (flush(upto_ms) or close() commit it).
        return self._end[_CALLER] - self._hold if self._seen_caller else self._committed

    def _run_end(self, channel: Channel) -> int:
        """Where the channel's audio ends, gathered audio included (absolute frame)."""
        run = self._runs[channel]
        end = self._end[channel]
        return max(end, run[0] + len(run[1]) // self._width) if run is not None else end

    def _write(self, channel: Channel, audio: bytes | bytearray | memoryview, t_ms: int | None) -> None:
        """Gather ``audio`` into the channel's run when it continues it, else place the run and start anew."""
        run = self._runs[channel]
        width = self._width
        if (  # the usual case, a frame right after the last one: no more than the checks it needs
            run is not None
            and type(t_ms) is int
            and t_ms * self._per_ms == run[0] + len(run[1]) // width
            and (width == 1 or not len(audio) % 2)
            and not self._closed
        ):
            end = t_ms * self._per_ms + len(audio) // width
            if end - self._committed <= self._max_ahead:
                run[1].extend(audio)
                self._settle_if_due(channel, run[1])
                return
        self._write_checked(channel, audio, t_ms)

    def _write_checked(
        self, channel: Channel, audio: bytes | bytearray | memoryview, t_ms: int | None
    ) -> None:
        if self._closed:
            raise AudioError(f"recording {self.path} is closed")
        width = self._width
        if width == 2 and len(audio) % 2:
            raise AudioError(f"PCM16 audio must have an even number of bytes, got {len(audio)}")
        run = self._runs[channel]
        start = self._run_end(channel) if t_ms is None else self._frame(t_ms)
        if start + len(audio) // width - self._committed > self._max_ahead:
            raise AudioError(
                f"audio at {start // self._per_ms} ms is too far ahead of the recording "
                f"(committed to {self.committed_ms} ms, limit {self._max_ahead // self._per_ms} ms ahead)"
            )
        if run is not None and start == run[0] + len(run[1]) // width:
            run[1].extend(audio)
        else:
            if run is not None:
                self._settle(channel)
            run = self._runs[channel] = (start, bytearray(audio))
        self._settle_if_due(channel, run[1])

    def _settle_if_due(self, channel: Channel, gathered: bytearray) -> None:
        """Place the channel's run once it is long enough, or the caller's once the horizon has moved far
        enough to commit (as placing each write at once would)."""
        if len(gathered) >= self._run_bytes:
            self._settle(channel)
        elif channel == _CALLER and self._horizon_if_settled() - self._committed >= self._flush_every:
            self._settle(_CALLER)

    def _horizon_if_settled(self) -> int:
        """The horizon once the caller's gathered audio is placed."""
        return self._run_end(_CALLER) - self._hold

    def _settle_all(self) -> None:
        self._settle(_CALLER)
        self._settle(_AGENT)

    def _settle(self, channel: Channel) -> None:
        """Place the channel's gathered audio in the window (and commit when the horizon allows)."""
        if self._place_run(channel) and self._horizon() - self._committed >= self._flush_every:
            self._commit(self._horizon())

    def _place_run(self, channel: Channel) -> bool:
        """Place the channel's gathered audio, if any, in the window; ``True`` when there was some."""
        run = self._runs[channel]
        if run is None:
            return False
        self._runs[channel] = None
        self._place(channel, run[1], run[0])
        return True

    def _place(self, channel: Channel, audio: bytearray, start: int) -> None:
        samples = self._decode(audio)
        end = start + len(samples)
        if start < self._committed:  # late audio for a committed part: keep only the tail
            cut = min(self._committed - start, len(samples))
            self._dropped += cut
            samples = samples[cut:]
            start += cut
        if len(samples):
            self._ensure(end - self._committed)
            self._buf[start - self._committed : end - self._committed, channel] = samples
            self._end[channel] = max(self._end[channel], end)

    def _ensure(self, frames: int) -> None:
        if frames <= len(self._buf):
            return
        size = max(frames, 2 * len(self._buf))
        grown = np.zeros((size, 2), dtype=np.int16)
        grown[: len(self._buf)] = self._buf
        self._buf = grown

    def _commit(self, upto: int) -> None:
        for channel in (_CALLER, _AGENT):  # no gathered audio may miss the commit
            self._place_run(channel)
        count = upto - self._committed
        if count <= 0:
            return
        self._ensure(count)
        try:
            self._file.write(self._buf[:count])
        except (OSError, RuntimeError) as exc:
            raise AudioError(f"cannot write recording {self.path}: {exc}") from exc
        pending = max(max(self._end) - upto, 0)
        self._buf[:pending] = self._buf[count : count + pending]
        self._buf[pending : pending + count] = 0  # beyond that the window is already silence
        self._committed = upto
        self._end = [max(end, upto) for end in self._end]
        self._update_header()

    def _update_header(self) -> None:
        """Make the header describe every frame written so far (RIFF and data chunk sizes)."""
        if not _update_header_native(self._file):
            _patch_wav_sizes(self.path)


def _pcm16(audio: bytearray) -> npt.NDArray[np.int16]:
    return np.frombuffer(audio, dtype="<i2")


def _ulaw(audio: bytearray) -> npt.NDArray[np.int16]:
    return np.frombuffer(ulaw_decode(audio), dtype="<i2")


def _alaw(audio: bytearray) -> npt.NDArray[np.int16]:
    return np.frombuffer(alaw_decode(audio), dtype="<i2")


_DECODERS: Final = {"pcm16": _pcm16, "pcmu": _ulaw, "pcma": _alaw}
"""Codec -> decoder of gathered audio to int16 samples."""


def _update_header_native(handle: Any) -> bool:
    """libsndfile's ``SFC_UPDATE_HEADER_NOW`` through soundfile's cffi binding; False if unavailable."""
    try:
        from soundfile import _ffi, _snd

        _snd.sf_command(handle._file, _SFC_UPDATE_HEADER_NOW, _ffi.NULL, 0)
    except (ImportError, AttributeError):  # pragma: no cover - depends on the soundfile version
        return False
    return True


def _patch_wav_sizes(path: Path) -> None:
    """Fallback header update: set the RIFF size and the ``data`` chunk size (the last chunk while
    libsndfile writes) from the file's current length."""
    with path.open("r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        header = fh.read(4096)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            raise AudioError(f"{path} is not a RIFF/WAVE file")
        pos = 12
        while pos + 8 <= len(header):
            chunk_id = header[pos : pos + 4]
            if chunk_id == b"data":
                data_size = size - (pos + 8)
                data_size -= data_size % 4  # whole stereo 16-bit frames
                fh.seek(pos + 4)
                fh.write(struct.pack("<I", data_size))
                fh.seek(4)
                fh.write(struct.pack("<I", pos + 8 + data_size - 8))
                fh.flush()
                return
            (chunk_size,) = struct.unpack("<I", header[pos + 4 : pos + 8])
            pos += 8 + chunk_size + (chunk_size & 1)
        raise AudioError(f"{path}: no data chunk in the WAV header")
