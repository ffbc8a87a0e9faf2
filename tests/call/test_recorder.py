"""The stereo call recording: channel placement on one timeline, incremental valid WAV, kill -9 survival."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from voice import native
from voice.call.recorder import Recorder, _patch_wav_sizes
from voice.errors import AudioError

REPO = Path(__file__).resolve().parents[2]
RATE = 8000
PER_MS = RATE // 1000

TONE_SRC = """
import numpy as np

def tone(freq, start_ms, end_ms, rate=8000):
    k = np.arange(start_ms * rate // 1000, end_ms * rate // 1000)
    return np.round(8000 * np.sin(2 * np.pi * freq * k / rate)).astype("<i2")
"""
_ns: dict[str, object] = {}
exec(TONE_SRC, _ns)


def tone(freq: float, start_ms: int, end_ms: int, rate: int = RATE) -> npt.NDArray[np.int16]:
    """A sine whose phase follows the absolute sample index, so any misplacement shows."""
    result: npt.NDArray[np.int16] = _ns["tone"](freq, start_ms, end_ms, rate)  # type: ignore[operator]
    return result


def read(path: Path) -> npt.NDArray[np.int16]:
    data, rate = sf.read(path, dtype="int16", always_2d=True)
    assert rate == RATE and data.shape[1] == 2
    result: npt.NDArray[np.int16] = data
    return result


def nonzero_span(channel: npt.NDArray[np.int16]) -> tuple[int, int]:
    idx = np.flatnonzero(channel)
    return int(idx[0]), int(idx[-1]) + 1


def test_channels_land_on_one_timeline(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "call.wav"
    caller = tone(440, 0, 500)
    agent = tone(1000, 1000, 1500)
    with Recorder(path, RATE) as rec:
        rec.write_agent(agent.tobytes(), 1000)  # order of writes does not matter
        rec.write_caller(caller.tobytes(), 0)
    data = read(path)
    assert len(data) == 1500 * PER_MS
    np.testing.assert_array_equal(data[:4000, 0], caller)
    np.testing.assert_array_equal(data[8000:12000, 1], agent)
    assert not data[4000:, 0].any() and not data[:8000, 1].any()
    # sample 0 of the caller tone and sample 8000 of the agent tone are zero crossings
    assert nonzero_span(data[:, 0]) == (1, 4000)
    assert nonzero_span(data[:, 1]) == (8001, 12000)


def test_streamed_frames_gaps_and_contiguous_appends(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    full = tone(300, 0, 3000)
    rec = Recorder(path, RATE)
    rec.write_agent(tone(700, 200, 400).tobytes(), 200)
    rec.write_agent(tone(700, 400, 600).tobytes())  # appended after the previous agent audio
    for i in range(0, 1000, 20):  # explicit positions
        rec.write_caller(full[i * PER_MS : (i + 20) * PER_MS].tobytes(), i)
    for i in range(1000, 2000, 20):  # None: right after the previous caller audio
        rec.write_caller(full[i * PER_MS : (i + 20) * PER_MS].tobytes())
    rec.write_caller(full[2500 * PER_MS :].tobytes(), 2500)  # a 500 ms gap (packet loss)
    rec.close()
    data = read(path)
    assert len(data) == 3000 * PER_MS
    np.testing.assert_array_equal(data[: 2000 * PER_MS, 0], full[: 2000 * PER_MS])
    assert not data[2000 * PER_MS : 2500 * PER_MS, 0].any()
    np.testing.assert_array_equal(data[2500 * PER_MS :, 0], full[2500 * PER_MS :])
    np.testing.assert_array_equal(data[200 * PER_MS : 600 * PER_MS, 1], tone(700, 200, 600))
    assert rec.duration_ms == 3000 and rec.closed


def wav_frames_on_disk(path: Path) -> int:
    """What an independent reader (the stdlib) sees in the file right now."""
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        return w.getnframes()


def test_file_is_a_valid_wav_while_recording(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = Recorder(path, RATE, flush_every_ms=500, hold_ms=400)
    assert wav_frames_on_disk(path) == 0
    full = tone(300, 0, 5000)
    for t in range(0, 5000, 20):
        rec.write_caller(full[t * PER_MS : (t + 20) * PER_MS].tobytes(), t)
        on_disk = wav_frames_on_disk(path)
        assert on_disk == rec.committed_ms * PER_MS
        # never more than hold + flush interval (+ one frame) behind the latest audio
        assert (t + 20) - rec.committed_ms <= 400 + 500 + 20
    data, _ = sf.read(path, dtype="int16")
    np.testing.assert_array_equal(data[:, 0], full[: len(data)])
    rec.flush(upto_ms=5000)
    assert wav_frames_on_disk(path) == 5000 * PER_MS
    rec.close()
    assert wav_frames_on_disk(path) == 5000 * PER_MS


def test_agent_audio_written_ahead_is_truncated_at_barge_in(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = Recorder(path, RATE)
    rec.write_caller(tone(300, 0, 1000).tobytes(), 0)
    rec.write_agent(tone(900, 1000, 4000).tobytes(), 1000)  # queued for playout, 3 s ahead
    for t in range(1000, 2000, 20):
        rec.write_caller(np.zeros(20 * PER_MS, dtype="<i2").tobytes(), t)
    rec.truncate_agent(1700)  # the caller barged in; playout stopped at 1700 ms
    rec.close()
    data = read(path)
    assert len(data) == 2000 * PER_MS  # the unheard tail is gone, the timeline ends with the caller
    np.testing.assert_array_equal(data[8000 : 1700 * PER_MS, 1], tone(900, 1000, 1700))
    assert not data[1700 * PER_MS :, 1].any()


def test_nothing_is_committed_before_the_caller_clock_starts(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = Recorder(path, RATE, flush_every_ms=100)
    rec.write_agent(tone(1000, 0, 3000).tobytes(), 0)  # an outbound greeting before any caller audio
    assert rec.committed_ms == 0
    rec.flush()
    assert rec.committed_ms == 0
    rec.flush(upto_ms=1000)  # the runner's clock says 1 s has passed
    assert wav_frames_on_disk(path) == 1000 * PER_MS
    rec.close()
    np.testing.assert_array_equal(read(path)[:, 1], tone(1000, 0, 3000))


def test_late_agent_audio_within_the_hold_window_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = Recorder(path, RATE, flush_every_ms=200, hold_ms=400)
    silence = np.zeros(20 * PER_MS, dtype="<i2").tobytes()
    for t in range(0, 2000, 20):
        rec.write_caller(silence, t)
    assert 1400 <= rec.committed_ms <= 1600
    late = tone(500, 1600, 1800)
    rec.write_agent(late.tobytes(), 1600)  # reported by the playout clock a few hundred ms late
    too_late = tone(500, 1000, 1100)
    rec.write_agent(too_late.tobytes(), 1000)  # already committed: dropped, counted
    assert rec.dropped_ms == 100
    rec.close()
    data = read(path)
    np.testing.assert_array_equal(data[1600 * PER_MS : 1800 * PER_MS, 1], late)
    assert not data[1000 * PER_MS : 1100 * PER_MS, 1].any()


def test_close_can_cut_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = Recorder(path, 16000)
    rec.write_caller(np.ones(16000, dtype="<i2").tobytes(), 0)
    rec.write_agent(np.ones(32000, dtype="<i2").tobytes(), 500)
    rec.close(end_ms=1200)
    rec.close()  # twice is fine
    data, rate = sf.read(path, dtype="int16")
    assert rate == 16000 and len(data) == 1200 * 16


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.write_caller(b"\x00\x01\x02", 0), "even number of bytes, got 3"),
        (lambda r: r.write_agent(b"\x00\x00", -20), "t_ms must be >= 0"),
        (lambda r: r.write_caller(b"\x00\x00", 10_000_000), "too far ahead"),
        (lambda r: r.truncate_agent(-1), "t_ms must be >= 0"),
        (lambda r: r.flush(upto_ms=-1), "t_ms must be >= 0"),
    ],
)
def test_bad_input_is_an_audio_error(tmp_path: Path, call: object, message: str) -> None:
    rec = Recorder(tmp_path / "x.wav", RATE)
    with pytest.raises(AudioError, match=message):
        call(rec)  # type: ignore[operator]
    rec.close()


def test_a_time_that_is_not_an_int_is_refused(tmp_path: Path) -> None:
    """Interpreted, the recorder's own check refuses it; compiled (``voice.native``), the typed signature
    refuses it first."""
    rec = Recorder(tmp_path / "x.wav", RATE)
    with pytest.raises(TypeError if native.state().compiled else AudioError):
        rec.write_agent(b"\x00\x00", 1.5)  # type: ignore[arg-type]
    rec.close()


def test_bad_construction_and_use_after_close(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="sample rate"):
        Recorder(tmp_path / "a.wav", 44100)
    rec = Recorder(tmp_path / "a.wav")
    rec.close()
    with pytest.raises(AudioError, match="already exists"):
        Recorder(tmp_path / "a.wav")
    Recorder(tmp_path / "a.wav", overwrite=True).close()
    with pytest.raises(AudioError, match="closed"):
        rec.write_caller(b"\x00\x00", 0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AudioError, match="cannot create recording"):
        Recorder(blocker / "sub" / "b.wav")


def test_fallback_header_patch_makes_a_valid_wav(tmp_path: Path) -> None:
    path = tmp_path / "raw.wav"
    f = sf.SoundFile(path, "w", RATE, 2, "PCM_16", format="WAV")
    f.write(np.ones((1234, 2), dtype=np.int16))
    with pytest.raises(wave.Error):  # libsndfile leaves the sizes at 0 until told otherwise
        wav_frames_on_disk(path)
    _patch_wav_sizes(path)
    assert wav_frames_on_disk(path) == 1234
    f.close()


# -- kill -9 ---------------------------------------------------------------------------------------

CHILD = TONE_SRC + textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from voice.call.recorder import Recorder

    rec = Recorder(Path(sys.argv[1]), 8000)
    t = 0
    while True:
        if t < 500:
            frame = tone(440, t, t + 20)
        elif t < 2000:
            frame = np.zeros(160, dtype="<i2")
        else:
            frame = tone(300, t, t + 20)
        rec.write_caller(frame.tobytes(), t)
        if t == 1000:  # the agent's reply, written as it starts being heard
            rec.write_agent(tone(1000, 1000, 1500).tobytes(), 1000)
        t += 20
        print(f"ack {t}", flush=True)
        time.sleep(0.004)
    """
)


def test_kill_9_leaves_a_valid_wav_with_all_but_the_last_second(tmp_path: Path) -> None:
    path = tmp_path / "crash.wav"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    acked_ms = 0
    deadline = time.monotonic() + 60
    try:
        while acked_ms < 4000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child died: {proc.stderr.read().decode() if proc.stderr else ''}")
            acked_ms = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)
        for text in rest.decode().splitlines():
            acked_ms = int(text.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert acked_ms >= 4000

    frames = wav_frames_on_disk(path)  # the stdlib accepts the header as it is on disk
    data = read(path)
    assert len(data) == frames
    assert frames % PER_MS == 0
    assert frames >= (acked_ms - 1000) * PER_MS, f"{frames / PER_MS} ms on disk, {acked_ms} ms acknowledged"
    assert frames <= acked_ms * PER_MS
    expected_caller = np.concatenate(
        [tone(440, 0, 500), np.zeros(1500 * PER_MS, "<i2"), tone(300, 2000, 30_000)]
    )
    np.testing.assert_array_equal(data[:, 0], expected_caller[:frames])
    expected_agent = np.zeros(frames, "<i2")
    expected_agent[8000:12000] = tone(1000, 1000, 1500)
    np.testing.assert_array_equal(data[:, 1], expected_agent)
    # the caller tone ends at 500 ms, the agent tone spans 1000..1500 ms
    assert nonzero_span(data[: 2000 * PER_MS, 0])[1] <= 4000
    assert nonzero_span(data[:, 1]) == (8001, 12000)


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("caller"), st.integers(0, 3000), st.integers(1, 40)),
        st.tuples(st.just("caller_next"), st.just(0), st.integers(1, 40)),
        st.tuples(st.just("agent"), st.integers(0, 3000), st.integers(1, 40)),
        st.tuples(st.just("agent_next"), st.just(0), st.integers(1, 40)),
        st.tuples(st.just("truncate"), st.integers(0, 3000), st.just(0)),
        st.tuples(st.just("flush"), st.integers(0, 3000), st.just(0)),
    ),
    max_size=60,
)


@given(_OPS, st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_gathering_runs_gives_the_same_file_as_placing_each_write(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("runs")
    gathered = Recorder(folder / "gathered.wav", RATE, run_ms=100)
    direct = Recorder(folder / "direct.wav", RATE, run_ms=1)  # every write placed at once
    for kind, t_ms, length_ms in ops:
        audio = rng.integers(-20000, 20000, length_ms * PER_MS, dtype=np.int16).tobytes()
        for rec in (gathered, direct):
            if kind == "caller":
                rec.write_caller(audio, t_ms)
            elif kind == "caller_next":
                rec.write_caller(audio)
            elif kind == "agent":
                rec.write_agent(audio, t_ms)
            elif kind == "agent_next":
                rec.write_agent(audio)
            elif kind == "truncate":
                rec.truncate_agent(t_ms)
            else:
                rec.flush(t_ms if t_ms % 2 else None)
        assert gathered.duration_ms == direct.duration_ms
    assert gathered.dropped_ms == direct.dropped_ms
    gathered.close()
    direct.close()
    a, _ = sf.read(folder / "gathered.wav", dtype="int16")
    b, _ = sf.read(folder / "direct.wav", dtype="int16")
    assert np.array_equal(a, b)


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_g711_codes_are_recorded_as_their_decoded_pcm(tmp_path: Path, codec: str) -> None:
    from voice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

    encode, decode = (ulaw_encode, ulaw_decode) if codec == "pcmu" else (alaw_encode, alaw_decode)
    caller = encode(tone(440, 0, 500).tobytes())
    agent = encode(tone(1000, 100, 300).tobytes())
    rec = Recorder(tmp_path / "g711.wav", RATE, codec=codec)  # type: ignore[arg-type]
    for k in range(0, len(caller), 160):  # 20 ms frames, the agent's with a gap before a late frame
        rec.write_caller(caller[k : k + 160], k // PER_MS)
    for k in range(0, len(agent), 160):
        rec.write_agent(agent[k : k + 160], 100 + k // PER_MS if k < 800 else 260 + (k - 800) // PER_MS)
    rec.close()
    data = read(tmp_path / "g711.wav")
    expected_caller = np.frombuffer(decode(caller), dtype="<i2")
    assert np.array_equal(data[: len(expected_caller), 0], expected_caller)
    decoded_agent = np.frombuffer(decode(agent), dtype="<i2")
    assert np.array_equal(data[100 * PER_MS : 200 * PER_MS, 1], decoded_agent[: 100 * PER_MS])
    assert np.array_equal(data[260 * PER_MS : 360 * PER_MS, 1], decoded_agent[100 * PER_MS :])
    assert not data[200 * PER_MS : 260 * PER_MS, 1].any()  # the gap is silence
    with pytest.raises(AudioError, match="codec"):
        Recorder(tmp_path / "bad.wav", RATE, codec="opus")  # type: ignore[arg-type]
