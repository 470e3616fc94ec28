"""Recorders (media/pipeline/recorder.py): gating, one timeline for every speaker, rotation,
failures, bounded rings, and WAV/Y4M files that survive a SIGKILL."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, Pcm, UnmixedAudioBuffer, VideoFrame
from media.pipeline import recording_writer, wavfile
from media.pipeline.events import PipelineEvent, RecorderFailed
from media.pipeline.processor import AudioProcessor, ProcessorContext, Recording, VideoProcessor
from media.pipeline.recorder import (
    AudioRecorder,
    RecordingWriter,
    VideoRecorder,
    recorder_factory,
    shared_writer,
    video_recorder_factory,
)
from media.pipeline.wavfile import HEADER_BYTES

REPO = Path(__file__).resolve().parent.parent
FRAME_BYTES = AUDIO_FRAME_SAMPLES * 2
A, B, C = 0x2A11, 0xB, 0xC0FFEE


# -- helpers -------------------------------------------------------------------------------------


def pcm(value: int) -> Pcm:
    return np.full(AUDIO_FRAME_SAMPLES, value, dtype=np.int16)


def frame(i: int, speakers: Sequence[int] = ()) -> AudioFrame:
    """Frame i: the mix is all i, speaker m's buffer is all (m % 1000) * 10 + i % 10."""
    unmixed = tuple(UnmixedAudioBuffer(m, pcm(speaker_value(m, i))) for m in speakers)
    return AudioFrame(pcm(i), timestamp=1_000_000 + i * 200_000, unmixed=unmixed)


def speaker_value(msi: int, i: int) -> int:
    return (msi % 1000) * 10 + i % 10 + 1  # never 0, so padding is told apart


def read_wav(path: Path) -> npt.NDArray[np.int16]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)


def read_wav_av(path: Path) -> npt.NDArray[np.int16]:
    with av.open(str(path)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)


def frames_of(samples: npt.NDArray[np.int16]) -> list[int]:
    """One value per 20 ms frame, checking each frame is constant (the tests' pattern)."""
    assert samples.size % AUDIO_FRAME_SAMPLES == 0
    rows = samples.reshape(-1, AUDIO_FRAME_SAMPLES)
    assert (rows == rows[:, :1]).all()
    return [int(v) for v in rows[:, 0]]


def read_y4m_luma(path: Path) -> list[int]:
    """The first luma byte of each frame, through ffmpeg; checks each frame is uniform."""
    values = []
    with av.open(str(path)) as container:
        for picture in container.decode(video=0):
            assert picture.format.name == "yuv420p"
            planes = picture.to_ndarray()
            height = picture.height
            luma, chroma = planes[:height], planes[height:]
            assert (luma == luma[0, 0]).all()
            assert (chroma == 128).all()
            values.append(int(luma[0, 0]))
    return values


def nv12(
    value: int, width: int = 32, height: int = 16, socket_id: int = 1, ts: int = 0
) -> VideoFrame:
    data = np.full(width * height * 3 // 2, 128, dtype=np.uint8)
    data[: width * height] = value
    return VideoFrame(data, width, height, ts, socket_id=socket_id)


class Events:
    """An EventSink that keeps what it gets (called from the writer's thread)."""

    def __init__(self) -> None:
        self.events: list[PipelineEvent] = []
        self._lock = threading.Lock()

    def __call__(self, batch: Sequence[PipelineEvent]) -> None:
        with self._lock:
            self.events.extend(batch)

    def failures(self) -> list[RecorderFailed]:
        return [e for e in self.events if isinstance(e, RecorderFailed)]


@pytest.fixture
def writer() -> RecordingWriter:
    """A writer whose thread never runs: tests drain it by hand."""
    return RecordingWriter()


# -- gating --------------------------------------------------------------------------------------


def test_idle_until_start_then_nothing_after_stop(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = AudioRecorder(tmp_path / "rec", "s1", writer=writer)
    assert isinstance(rec, AudioProcessor) and isinstance(rec, Recording)
    tap: AudioProcessor = rec  # a tap: it says nothing back into the call
    for i in range(5):
        assert tap.process(frame(i)) is None
    writer.drain()
    assert not (tmp_path / "rec").exists()
    assert rec.first_frame_timestamp is None and not rec.recording

    rec.start()
    assert rec.recording
    for i in range(5, 15):
        rec.process(frame(i))
    writer.drain()
    path = tmp_path / "rec" / "mixed-0001.wav"
    # Readable before close: the header was patched after the drain.
    assert frames_of(read_wav(path)) == list(range(5, 15))
    assert rec.first_frame_timestamp == frame(5).timestamp

    rec.stop()
    assert not rec.recording
    for i in range(15, 20):
        rec.process(frame(i))
    writer.drain()
    rec.close()
    assert frames_of(read_wav(path)) == list(range(5, 15))
    assert frames_of(read_wav_av(path)) == list(range(5, 15))
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["mixed-0001.wav"]
    stats = rec.track_stats()["mixed"]
    assert (stats.frames, stats.dropped, stats.failed) == (10, 0, None)
    assert stats.bytes == path.stat().st_size == HEADER_BYTES + 10 * FRAME_BYTES
    rec.process(frame(99))  # after close: ignored, never raises
    with pytest.raises(RuntimeError):
        rec.start()


def test_restart_opens_the_next_files(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = AudioRecorder(tmp_path, "s1", writer=writer)
    rec.start()
    rec.process(frame(1))
    rec.stop()
    rec.process(frame(2))
    rec.start()
    rec.process(frame(3))
    rec.close()
    assert frames_of(read_wav(tmp_path / "mixed-0001.wav")) == [1]
    assert frames_of(read_wav(tmp_path / "mixed-0002.wav")) == [3]


# -- one timeline --------------------------------------------------------------------------------


def test_speakers_share_one_timeline(tmp_path: Path, writer: RecordingWriter) -> None:
    """A from the start but intermittent, B late, C only in the last frame: every file is as
    long as the mix and holds each speaker's samples exactly where they were heard."""
    present = {
        A: set(range(0, 5)) | set(range(10, 15)),
        B: set(range(7, 13)),
        C: {19},
    }
    rec = AudioRecorder(tmp_path, "s1", writer=writer)
    rec.start()
    for i in range(20):
        rec.process(frame(i, [m for m in (C, B, A) if i in present[m]]))
        if i in (3, 9, 16):  # drains fall at arbitrary points, some mid-absence
            writer.drain()
    rec.close()

    assert frames_of(read_wav(tmp_path / "mixed-0001.wav")) == list(range(20))
    for msi, heard in present.items():
        path = tmp_path / f"speaker-{msi:x}-0001.wav"
        expected = [speaker_value(msi, i) if i in heard else 0 for i in range(20)]
        assert frames_of(read_wav(path)) == expected
        assert frames_of(read_wav_av(path)) == expected
    stats = rec.track_stats()
    assert stats[f"speaker-{B:x}"].frames == 20 and stats[f"speaker-{B:x}"].silence_frames == 14
    assert stats["mixed"].silence_frames == 0


def test_mixed_mode_writes_only_the_mixed_file(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = AudioRecorder(tmp_path, "s1", writer=writer)
    rec.start()
    for i in range(3):
        rec.process(AudioFrame(pcm(i), timestamp=i, active_speakers=(A,)))
    rec.close()
    assert [p.name for p in tmp_path.iterdir()] == ["mixed-0001.wav"]


def test_per_speaker_only(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = AudioRecorder(tmp_path, "s1", mixed=False, writer=writer)
    rec.start()
    for i in range(4):
        rec.process(frame(i, [A] if i >= 2 else []))
    rec.close()
    assert [p.name for p in tmp_path.iterdir()] == [f"speaker-{A:x}-0001.wav"]
    assert frames_of(read_wav(tmp_path / f"speaker-{A:x}-0001.wav")) == [
        0,
        0,
        speaker_value(A, 2),
        speaker_value(A, 3),
    ]


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_by_size(tmp_path: Path, writer: RecordingWriter) -> None:
    """7 frames a file; B joins in the second span and gets no first file."""
    rec = AudioRecorder(tmp_path, "s1", rotate_bytes=HEADER_BYTES + 7 * FRAME_BYTES, writer=writer)
    rec.start()
    for i in range(20):
        rec.process(frame(i, [B] if i >= 9 else []))
    writer.drain()  # one batch crossing two rotations
    rec.close()

    mixed = [tmp_path / f"mixed-000{n}.wav" for n in (1, 2, 3)]
    assert [len(frames_of(read_wav(p))) for p in mixed] == [7, 7, 6]
    assert [v for p in mixed for v in frames_of(read_wav(p))] == list(range(20))
    assert [v for p in mixed for v in frames_of(read_wav_av(p))] == list(range(20))
    assert all(p.stat().st_size <= HEADER_BYTES + 7 * FRAME_BYTES for p in mixed)
    assert not (tmp_path / f"speaker-{B:x}-0001.wav").exists()
    speaker = [frames_of(read_wav(tmp_path / f"speaker-{B:x}-000{n}.wav")) for n in (2, 3)]
    assert speaker[0] == [0, 0] + [speaker_value(B, i) for i in range(9, 14)]
    assert speaker[1] == [speaker_value(B, i) for i in range(14, 20)]
    assert rec.track_stats()["mixed"].files == mixed


def test_rotation_by_audio_time(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = AudioRecorder(tmp_path, "s1", rotate_seconds=0.1, writer=writer)  # 5 frames
    rec.start()
    for i in range(12):
        rec.process(frame(i, [A]))
        writer.drain()  # a drain per frame: the split does not depend on when drains run
    rec.close()
    for stem, value in (("mixed", lambda i: i), (f"speaker-{A:x}", lambda i: speaker_value(A, i))):
        files = [frames_of(read_wav(tmp_path / f"{stem}-000{n}.wav")) for n in (1, 2, 3)]
        assert [len(f) for f in files] == [5, 5, 2]
        assert [v for f in files for v in f] == [value(i) for i in range(12)]


# -- failures ------------------------------------------------------------------------------------


def test_a_track_that_cannot_open_fails_alone(tmp_path: Path, writer: RecordingWriter) -> None:
    events = Events()
    (tmp_path / f"speaker-{B:x}-0001.wav").mkdir()  # the name is taken: open() fails
    rec = AudioRecorder(tmp_path, "s1", writer=writer, emit=events)
    rec.start()
    for i in range(10):
        rec.process(frame(i, [A, B]))
        if i % 3 == 0:
            writer.drain()
    rec.close()

    [failure] = events.failures()
    assert failure.session_id == "s1" and failure.recorder == "recorder"
    assert f"speaker-{B:x}" in failure.detail
    assert rec.track_stats()[f"speaker-{B:x}"].failed is not None
    assert frames_of(read_wav(tmp_path / "mixed-0001.wav")) == list(range(10))
    assert frames_of(read_wav(tmp_path / f"speaker-{A:x}-0001.wav")) == [
        speaker_value(A, i) for i in range(10)
    ]


def test_disk_full_keeps_the_file_valid(
    tmp_path: Path, writer: RecordingWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the mixed file, after half a batch landed: the header covers what landed,
    one RecorderFailed, the speaker's file goes on."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor is")
    real_writev = os.writev

    real_write = os.write
    full = threading.Event()

    def is_full(fd: int) -> bool:
        return full.is_set() and "mixed" in os.readlink(f"/proc/self/fd/{fd}")

    def writev(fd: int, buffers: Sequence[bytes | memoryview]) -> int:
        if is_full(fd):
            # What a filling disk does: a short write (here mid-sample), then ENOSPC.
            half = [memoryview(b).cast("B") for b in buffers][: len(buffers) // 2]
            return real_write(fd, b"".join(half)[:-3])
        return real_writev(fd, buffers)

    def write(fd: int, data: bytes | memoryview) -> int:
        if is_full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(wavfile.os, "writev", writev)
    monkeypatch.setattr(wavfile.os, "write", write)
    events = Events()
    rec = AudioRecorder(tmp_path, "s1", writer=writer, emit=events)
    rec.start()
    for i in range(4):
        rec.process(frame(i, [A]))
    writer.drain()
    full.set()
    for i in range(4, 8):
        rec.process(frame(i, [A]))
    writer.drain()
    for i in range(8, 10):
        rec.process(frame(i, [A]))
    rec.close()

    assert len(events.failures()) == 1
    assert "No space left" in events.failures()[0].detail
    mixed = read_wav(tmp_path / "mixed-0001.wav")
    # Frames 0-3, then 4 and almost all of 5: whole samples only.
    assert mixed.size == 6 * AUDIO_FRAME_SAMPLES - 2
    assert frames_of(mixed[: 5 * AUDIO_FRAME_SAMPLES]) == [0, 1, 2, 3, 4]
    assert (mixed[5 * AUDIO_FRAME_SAMPLES :] == 5).all()
    assert frames_of(read_wav(tmp_path / f"speaker-{A:x}-0001.wav")) == [
        speaker_value(A, i) for i in range(10)
    ]


def test_unusable_directory_reports_and_never_raises(
    tmp_path: Path, writer: RecordingWriter
) -> None:
    (tmp_path / "file").write_bytes(b"")
    events = Events()
    rec = AudioRecorder(tmp_path / "file" / "rec", "s1", writer=writer, emit=events)
    rec.start()
    for i in range(5):
        rec.process(frame(i, [A]))
        writer.drain()
    rec.close()
    failures = events.failures()
    assert sorted(f.detail.split(":")[0] for f in failures) == ["mixed", f"speaker-{A:x}"]
    assert all(s.failed for s in rec.track_stats().values())


# -- bounded rings -------------------------------------------------------------------------------


def test_stalled_writer_drops_oldest_and_counts(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = AudioRecorder(tmp_path, "s1", ring_seconds=0.1, writer=writer)  # 5 frames
    rec.start()
    for i in range(12):
        rec.process(frame(i, [A]))
    assert rec.dropped == 7
    rec.close()
    # The 7 oldest are gone; silence keeps the rest at their place on the clock.
    assert frames_of(read_wav(tmp_path / "mixed-0001.wav")) == [0] * 7 + list(range(7, 12))
    speaker = frames_of(read_wav(tmp_path / f"speaker-{A:x}-0001.wav"))
    assert speaker == [0] * 7 + [speaker_value(A, i) for i in range(7, 12)]
    stats = rec.track_stats()["mixed"]
    assert (stats.frames, stats.dropped, stats.silence_frames) == (12, 7, 7)
    assert rec.dropped == 7


def test_video_ring_keeps_the_latest(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = VideoRecorder(tmp_path, "s1", ring_frames=3, writer=writer)
    rec.start()
    for j in range(10):
        rec.process_video(nv12(j))
    assert rec.dropped == 7
    rec.close()
    assert read_y4m_luma(tmp_path / "video-1-0001.y4m") == [7, 8, 9]
    assert rec.track_stats()["video-1"].dropped == 7


# -- writer thread -------------------------------------------------------------------------------


class StepClock:
    """A clock the test moves by hand; wait_until() blocks until the test has moved it."""

    def __init__(self) -> None:
        self._now = 0.0
        self._cond = threading.Condition()
        self.waits = 0

    def now(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait_until(self, deadline: float, stop: threading.Event) -> bool:
        with self._cond:
            self.waits += 1
            self._cond.notify_all()
            while self._now < deadline and not stop.is_set():
                self._cond.wait(0.01)
            return stop.is_set()

    def wait_for_waits(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.waits >= n, timeout=5.0)


def test_writer_thread_flushes_on_its_clock(tmp_path: Path) -> None:
    clock = StepClock()
    writer = RecordingWriter(clock, flush_seconds=0.25)
    rec = AudioRecorder(tmp_path, "s1", writer=writer)
    writer.start()
    try:
        clock.wait_for_waits(1)
        rec.start()
        for i in range(3):
            rec.process(frame(i))
        clock.advance(0.125)  # not yet due (binary fractions: the sums are exact)
        clock.advance(0.0625)
        assert not (tmp_path / "mixed-0001.wav").exists()
        clock.advance(0.0625)
        clock.wait_for_waits(2)  # the writer drained and waits for the next deadline
        assert writer.flushes == 1
        assert frames_of(read_wav(tmp_path / "mixed-0001.wav")) == [0, 1, 2]
        rec.close()
    finally:
        writer.stop()
    assert not writer.running


def test_shared_writer_lives_while_recorders_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process of its own, as far as the shared writer goes (another test's may be running).
    monkeypatch.setattr(recording_writer, "_shared_writer", None)
    monkeypatch.setattr(recording_writer, "_shared_users", 0)
    idle = AudioRecorder(tmp_path / "idle", "s0")
    first = AudioRecorder(tmp_path / "one", "s1")
    second = VideoRecorder(tmp_path / "two", "s2")
    idle.close()  # never started: never took the writer
    assert shared_writer() is None
    first.start()
    writer = shared_writer()
    assert writer is not None and writer.running
    second.start()
    assert shared_writer() is writer and writer.recorder_count == 2
    first.process(frame(1))
    second.process_video(nv12(1))
    first.close()
    assert shared_writer() is writer and writer.running
    second.close()
    assert shared_writer() is None and not writer.running
    assert frames_of(read_wav(tmp_path / "one" / "mixed-0001.wav")) == [1]
    assert read_y4m_luma(tmp_path / "two" / "video-1-0001.y4m") == [1]


# -- video ---------------------------------------------------------------------------------------


def test_video_gating_sockets_and_resolution(tmp_path: Path, writer: RecordingWriter) -> None:
    rec = VideoRecorder(tmp_path, "s1", fps=30, writer=writer)
    assert isinstance(rec, VideoProcessor) and isinstance(rec, Recording)
    rec.process_video(nv12(1))
    writer.drain()
    assert rec.first_frame_timestamp is None and not list(tmp_path.iterdir())
    rec.start()
    rec.process_video(nv12(10, ts=5))
    rec.process_video(nv12(20, socket_id=2))
    writer.drain()
    rec.process_video(nv12(11))
    rec.process_video(nv12(12, width=48, height=24))  # a new size: a new file
    rec.process_video(nv12(13, width=48, height=24))
    rec.stop()
    rec.process_video(nv12(14))
    rec.close()
    assert rec.first_frame_timestamp == 5
    assert read_y4m_luma(tmp_path / "video-1-0001.y4m") == [10, 11]
    assert read_y4m_luma(tmp_path / "video-1-0002.y4m") == [12, 13]
    assert read_y4m_luma(tmp_path / "video-2-0001.y4m") == [20]
    header = (tmp_path / "video-1-0002.y4m").read_bytes().split(b"\n", 1)[0]
    assert header == b"YUV4MPEG2 W48 H24 F30:1 Ip A1:1 C420mpeg2"
    with av.open(str(tmp_path / "video-1-0002.y4m")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (48, 24, 30)
    assert rec.track_stats()["video-1"].frames == 4


def test_video_chroma_is_deinterleaved(tmp_path: Path, writer: RecordingWriter) -> None:
    width, height = 8, 4
    data = np.zeros(width * height * 3 // 2, dtype=np.uint8)
    data[: width * height] = np.arange(width * height)
    data[width * height :: 2] = 60  # U
    data[width * height + 1 :: 2] = 200  # V
    rec = VideoRecorder(tmp_path, "s1", writer=writer)
    rec.start()
    rec.process_video(VideoFrame(data, width, height, 0, socket_id=1))
    rec.close()
    body = (tmp_path / "video-1-0001.y4m").read_bytes().split(b"FRAME\n", 1)[1]
    planes = np.frombuffer(body, dtype=np.uint8)
    assert (planes[: width * height] == np.arange(width * height)).all()
    assert (planes[width * height : width * height * 5 // 4] == 60).all()
    assert (planes[width * height * 5 // 4 :] == 200).all()


def test_video_rotation_by_size_and_time(tmp_path: Path, writer: RecordingWriter) -> None:
    one = len(b"FRAME\n") + 32 * 16 * 3 // 2
    header = len(b"YUV4MPEG2 W32 H16 F15:1 Ip A1:1 C420mpeg2\n")
    by_size = VideoRecorder(tmp_path / "size", "s1", rotate_bytes=header + 3 * one, writer=writer)
    by_time = VideoRecorder(tmp_path / "time", "s1", rotate_seconds=0.2, writer=writer)
    for rec in (by_size, by_time):
        rec.start()
        for j in range(7):
            rec.process_video(nv12(j, ts=j * 1_000_000))  # 10 fps of timestamps
        rec.close()
    assert [read_y4m_luma(tmp_path / "size" / f"video-1-000{n}.y4m") for n in (1, 2, 3)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6],
    ]
    assert [read_y4m_luma(tmp_path / "time" / f"video-1-000{n}.y4m") for n in (1, 2, 3, 4)] == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6],
    ]


# -- factories -----------------------------------------------------------------------------------


def test_factories_read_their_options(tmp_path: Path) -> None:
    events = Events()
    ctx = ProcessorContext(
        session_id="0f1e2d3c-aaaa-bbbb-cccc-000000000000",
        out_dir=tmp_path / "default",
        options={
            "mixed": "false",
            "per_speaker": "True",
            "rotate_mb": "0.5",
            "rotate_minutes": "0.25",
            "dir": str(tmp_path / "elsewhere"),
        },
        emit=events,
    )
    audio = recorder_factory(ctx)
    assert audio.out_dir == tmp_path / "elsewhere" / ctx.session_id
    assert (audio.mixed, audio.per_speaker) == (False, True)
    assert audio.span_frames == min((500_000 - HEADER_BYTES) // FRAME_BYTES, 15 * 50)
    video = video_recorder_factory(
        ProcessorContext("a/../b", out_dir=tmp_path, options={"fps": "30"})
    )
    assert video.out_dir == tmp_path / "a_.._b" and video.fps == 30
    assert recorder_factory(ProcessorContext("s", out_dir=tmp_path)).out_dir == tmp_path / "s"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"mixed": "maybe"}, "mixed='maybe'"),
        ({"per_speaker": ""}, "per_speaker=''"),
        ({"rotate_mb": "lots"}, "rotate_mb='lots'"),
        ({"rotate_mb": "-1"}, "rotate_mb='-1'"),
        ({"rotate_mb": "0.0001"}, "rotate_mb='0.0001'"),
        ({"rotate_minutes": "nan"}, "rotate_minutes='nan'"),
        ({"mixed": "false", "per_speaker": "false"}, "per_speaker='false'"),
    ],
)
def test_bad_options_name_option_and_value(options: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        recorder_factory(ProcessorContext("s", options=options))


@pytest.mark.parametrize("fps", ["fast", "0", "1.5"])
def test_bad_video_fps_is_named(fps: str) -> None:
    with pytest.raises(ValueError, match=f"fps='{fps}'"):
        video_recorder_factory(ProcessorContext("s", options={"fps": fps}))


# -- SIGKILL -------------------------------------------------------------------------------------


def _lines(proc: subprocess.Popen[str]) -> Iterator[tuple[str, int]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        kind, number = line.split()
        yield kind, int(number)


def test_sigkill_loses_at_most_a_second(tmp_path: Path) -> None:
    """A child records paced frames through the shared writer and is killed mid-recording:
    the WAV and the Y4M open in `wave` and ffmpeg and hold all but the last second."""
    stderr_path = tmp_path / "stderr.txt"
    out = tmp_path / "out"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.recorder_child", str(out)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    handed = {"a": 0, "v": 0}
    try:
        for kind, number in _lines(proc):
            handed[kind] = number + 1
            if handed["a"] >= 100 and handed["v"] >= 30:
                break
        else:
            pytest.fail(f"child ended early: {stderr_path.read_text()}")
        proc.send_signal(signal.SIGKILL)
        for kind, number in _lines(proc):  # what it printed before it died
            handed[kind] = number + 1
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    wav_path = out / "mixed-0001.wav"
    for samples in (read_wav(wav_path), read_wav_av(wav_path)):
        written = frames_of(samples)
        assert written == list(range(len(written)))
        assert len(written) >= handed["a"] - 50, (len(written), handed)

    y4m_path = out / "video-1-0001.y4m"
    shown = read_y4m_luma(y4m_path)
    assert shown == list(range(len(shown)))
    assert len(shown) >= handed["v"] - 15, (len(shown), handed)
