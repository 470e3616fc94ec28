"""Recording follows Graph's recording status
(https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus): nothing is
persisted before `recording` was acknowledged, the status goes to `notRecording` before the bot
hangs up, and to `failed` when a recorder breaks. Bot and emulator for real, audio flowing."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from bot.app import Bot
from bot.devcerts import DevCerts
from bot.errors import GraphError
from emulator import Emulator
from emulator.faults import FaultRule
from media.clock import to_ticks
from media.frames import AudioFrame
from tests.conftest import emulator_config, settings_for


class Frames:
    """Sets `flowing` once `count` frames reached the hot loop (audio is live)."""

    name = "frames"

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.flowing = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.seen += 1
        if self.seen == self.count:
            self._loop.call_soon_threadsafe(self.flowing.set)
        return None

    async def more(self, count: int, within_seconds: float) -> None:
        """Until `count` more frames have arrived."""
        self.flowing = asyncio.Event()
        self.count = self.seen + count
        await asyncio.wait_for(self.flowing.wait(), within_seconds)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


async def test_recording_starts_only_after_graph_acknowledged_it(
    certs: DevCerts, tmp_path: Path
) -> None:
    emulator = Emulator(emulator_config(certs))
    await emulator.start()
    frames = Frames(25)
    settings = settings_for(emulator, certs).replace(
        processors="recorder", recordings_dir=str(tmp_path), record_on_join=False
    )
    bot = Bot(settings, processors=lambda ctx: [frames])
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        await call.wait_for("established", 15)
        await asyncio.wait_for(frames.flowing.wait(), 10)
        (recorder,) = bot.recorders(call)
        assert not recorder.recording
        assert not await asyncio.to_thread(lambda: list(tmp_path.rglob("*.wav")))
        # Graph answers the first updateRecordingStatus with 503 and Retry-After 1 s: the
        # status, and so the recording, is a second late while audio keeps arriving.
        path = f"/v1.0/communications/calls/{call.id}/updateRecordingStatus"
        emulator.faults.append(FaultRule(503, 1.0, 1, path))
        asked = to_ticks(asyncio.get_running_loop().time())
        await bot.start_recording(call)
        emulated = emulator.calls[call.id]
        acknowledged, status = emulated.recording_history[-1]
        assert status == "recording" and call.speech.recording_status == "recording"
        assert recorder.recording
        await frames.more(25, 10)  # half a second recorded
        await call.hang_up()
        await call.wait_for("terminated", 15)
        history = [s for _, s in emulated.recording_history]
        stopped_at = emulated.recording_history[-1][0]
        assert history == ["recording", "notRecording"]
        assert call.speech.recording_status == "notRecording"
    finally:
        await bot.stop()
        await emulator.stop()
    # The first frame written arrived after Graph's acknowledgement, which the 503 delayed.
    first = getattr(recorder, "first_frame_timestamp", None)
    assert first is not None and first >= to_ticks(acknowledged)
    assert first >= asked + to_ticks(1.0) - to_ticks(0.1)
    # The file holds the recorded span only: from the acknowledgement to the hang-up.
    (mixed,) = await asyncio.to_thread(lambda: list(tmp_path.rglob("mixed-*.wav")))
    assert abs(wav_seconds(mixed) - (stopped_at - acknowledged)) < 0.3


async def test_recorder_starts_on_join_and_a_broken_one_sets_failed(
    certs: DevCerts, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the recordings directory should go")
    emulator = Emulator(emulator_config(certs))
    await emulator.start()
    settings = settings_for(emulator, certs).replace(
        processors="recorder", recordings_dir=str(blocker / "recordings")
    )
    bot = Bot(settings)
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        await call.wait_for("established", 15)
        emulated = emulator.calls[call.id]
        await call.wait_until(lambda c: c.speech.recording_status == "failed", 10)
        assert [s for _, s in emulated.recording_history] == ["recording", "failed"]
        assert call.speech.failures and "recorder" in call.speech.failures[0]
        await call.hang_up()
        await call.wait_for("terminated", 15)
        # Already `failed`: leaving does not pretend it was a clean stop.
        assert [s for _, s in emulated.recording_history] == ["recording", "failed"]
    finally:
        await bot.stop()
        await emulator.stop()


async def test_refused_status_means_no_recording(certs: DevCerts, tmp_path: Path) -> None:
    emulator = Emulator(emulator_config(certs))
    await emulator.start()
    settings = settings_for(emulator, certs).replace(
        processors="recorder", recordings_dir=str(tmp_path), record_on_join=False
    )
    bot = Bot(settings)
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        await call.wait_for("established", 15)
        path = f"/v1.0/communications/calls/{call.id}/updateRecordingStatus"
        emulator.faults.append(FaultRule(503, 0.0, 100, path))
        with pytest.raises(GraphError):
            await bot.start_recording(call)
        assert not any(r.recording for r in bot.recorders(call))
        assert call.speech.recording_status == "notRecording"
        await call.hang_up()
        await call.wait_for("terminated", 15)
    finally:
        await bot.stop()
        await emulator.stop()
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob("*.wav")))
