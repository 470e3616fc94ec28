"""A four-speaker meeting, end to end with real aiortc on both sides: the bot against the
emulator's media processor (two independent implementations of docs/media-protocol.md).

Ground truth is the emulator's script: talk spurts in seconds from the link's media start and
every participant's frames with their capture times. The bot's frames carry the capture time
(abs-capture-time, converted to 100 ns ticks), which puts each one on the script's timeline.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from bot.app import Bot
from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.participant import Meeting, ParticipantScript
from emulator.video import decode_pattern
from media.clock import TICKS_PER_SECOND
from media.events import (
    DominantSpeakerChanged,
    ToneReceived,
    VideoKeyFrameNeeded,
    VideoReceiveStatusChanged,
    VideoSendStatusChanged,
)
from media.frames import AudioFrame, VideoFrame
from media.session import MediaEvent, MediaSessionOptions
from media.video import VideoSocketError, VideoSocketSettings
from tests.conftest import TENANT_ID, emulator_config, settings_for

FRAME = 0.020
MSIS = (0x1001, 0x1002, 0x1003, 0x1004)
VIDEO_MSIS = (0x2001, 0x2002, 0x2003, 0x2004)
# Staggered, overlapping spurts: one to four speakers at once, every start and end in there.
TALK = (((0.2, 2.2),), ((0.7, 2.7),), ((1.2, 3.2),), ((1.7, 2.0), (2.4, 3.7)))
UNTIL = 3.8  # media seconds of audio to collect


def four_speakers() -> Meeting:
    return Meeting(
        thread_id="19:meeting_Zm91cg@thread.v2",
        organizer_id=str(uuid.UUID(int=1)),
        tenant_id=TENANT_ID,
        participants=[
            ParticipantScript(
                f"Speaker {i}",
                str(uuid.UUID(int=100 + i)),
                MSIS[i],
                f"p-{i}",
                seed=11 + i,
                talk=TALK[i],
                video_msi=VIDEO_MSIS[i],
                camera=(640, 360),
            )
            for i in range(4)
        ],
    )


def talking(msi: int, t: float) -> bool:
    return any(start <= t < end for start, end in TALK[MSIS.index(msi)])


class Collect:
    """Keeps every frame the hot loop delivers until the script's end has been reached."""

    name = "collect"

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.done = asyncio.Event()
        self.until_ticks: int | None = None  # set once the media start is known
        self._loop = asyncio.get_running_loop()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.frames.append(frame)
        until = self.until_ticks
        if until is not None and frame.original_sender_timestamp >= until:
            self._loop.call_soon_threadsafe(self.done.set)  # the hot loop's own thread
        return None


@dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    collect: Collect


@pytest.fixture
async def rig(certs: DevCerts) -> AsyncIterator[Rig]:
    emulator = Emulator(emulator_config(certs, meetings=[four_speakers()]))
    await emulator.start()
    collect = Collect()
    bot = Bot(settings_for(emulator, certs), processors=lambda ctx: [collect])
    await bot.start()
    try:
        yield Rig(emulator, bot, collect)
    finally:
        await bot.stop()
        await emulator.stop()


async def join_and_collect(
    rig: Rig, options: MediaSessionOptions, until: float = UNTIL
) -> tuple[float, Any]:
    meeting = rig.emulator.config.meetings[0]
    call = await rig.bot.join(rig.emulator.join_url(meeting), media_options=options)
    await call.wait_for("established", 15)
    link = rig.emulator.calls[call.id].link
    assert link is not None and link.media_start is not None
    start = link.media_start
    rig.collect.until_ticks = round((start + until) * TICKS_PER_SECOND)
    await asyncio.wait_for(rig.collect.done.wait(), 20)
    return start, link


def media_time(ticks: int, start: float) -> float:
    return ticks / TICKS_PER_SECOND - start


def best_correlation(pcm: np.ndarray, reference: np.ndarray) -> float:
    """Normalised correlation of a decoded frame with the sent signal around it (codec delay)."""
    best = 0.0
    x = pcm.astype(np.float64)
    for lag in range(0, reference.shape[0] - 320 + 1, 4):
        y = reference[lag : lag + 320].astype(np.float64)
        denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
        if denominator > 0:
            best = max(best, float(np.dot(x, y) / denominator))
    return best


async def test_unmixed_streams_carry_each_speaker_under_the_right_msi(rig: Rig) -> None:
    # Unmixed streams are silent when nobody speaks: collect until the last spurt's end.
    until = 3.66
    start, link = await join_and_collect(
        rig, MediaSessionOptions(receive_unmixed_meeting_audio=True), until
    )
    sent = {msi: rec for msi, rec in link.sent_by_msi.items()}
    frames_by_time = {
        msi: {round((t - start) / FRAME): pcm for t, pcm in zip(rec.times, rec.frames, strict=True)}
        for msi, rec in sent.items()
    }
    expected = {
        (msi, k) for msi in MSIS for k in range(round(until / FRAME) - 3) if talking(msi, k * FRAME)
    }
    correct: set[tuple[int, int]] = set()
    wrong = []
    frames = [f for f in rig.collect.frames if f.unmixed]
    assert frames, "no unmixed frames arrived"
    assert max(len(f.unmixed) for f in frames) == 4  # four at once at 1.7-2.0 s
    for frame in frames:
        assert frame.active_speakers == tuple(b.msi for b in frame.unmixed)
        for buffer in frame.unmixed:
            t = media_time(buffer.original_sender_timestamp, start)
            k = round(t / FRAME)
            if buffer.msi not in MSIS or not talking(buffer.msi, k * FRAME):
                wrong.append((hex(buffer.msi), round(t, 3), "not speaking then"))
                continue
            ref = frames_by_time[buffer.msi]
            reference = np.concatenate([ref.get(k - 1, np.zeros(320, np.int16)), ref[k]])
            loud = np.abs(ref[k].astype(np.int32)).max() > 500  # int16 abs(-32768) wraps
            if loud and best_correlation(buffer.pcm, reference) < 0.7:
                wrong.append((hex(buffer.msi), round(t, 3), "someone else's audio"))
                continue
            correct.add((buffer.msi, k))
    share = len(correct & expected) / len(expected)
    assert share >= 0.99, (share, wrong[:10])
    assert len(wrong) <= 0.01 * len(expected), wrong[:10]


async def test_mixed_audio_names_who_is_speaking_and_the_dominant_speaker(rig: Rig) -> None:
    changes: list[DominantSpeakerChanged] = []
    start, link = await join_and_collect(rig, MediaSessionOptions())
    for event in rig.bot.media_events:
        if isinstance(event.data, DominantSpeakerChanged):
            changes.append(event.data)
    frames = [f for f in rig.collect.frames if f.original_sender_timestamp]
    scored = [f for f in frames if 0.0 <= media_time(f.original_sender_timestamp, start) < UNTIL]
    assert len(scored) >= (UNTIL / FRAME) * 0.95
    matches = 0
    for frame in scored:
        t = round(media_time(frame.original_sender_timestamp, start) / FRAME) * FRAME
        truth = {msi for msi in MSIS if talking(msi, t)}
        matches += set(frame.active_speakers) == truth
        assert frame.is_silence == (not frame.active_speakers)
    assert matches / len(scored) >= 0.99, matches / len(scored)
    # The bot reports the MP's dominant-speaker messages as they came, with their history.
    told = [(c.msi, tuple(c.history)) for c in link.dominant_changes]
    assert told and [(c.msi, c.history) for c in changes] == told
    assert {c.msi for c in changes} <= set(MSIS)


async def test_dtmf_goes_both_ways(rig: Rig) -> None:
    call = await rig.bot.join(rig.emulator.join_url(rig.emulator.config.meetings[0]))
    await call.wait_for("established", 15)
    link = rig.emulator.calls[call.id].link
    assert link is not None
    session = rig.bot.media_session(call)
    assert session is not None
    if session.state != "connected":  # Graph's side may see ICE complete a moment earlier
        await rig.bot.wait_media_event(lambda e: e.kind == "connected", 10)
    session.send_dtmf("159#")
    for _ in range(4):
        if len(link.dtmf_heard) >= 4:
            break
        link.dtmf_received.clear()
        await asyncio.wait_for(link.dtmf_received.wait(), 10)
    assert [t for t, _ in link.dtmf_heard] == list("159#")

    heard: list[str] = []

    def tone(event: MediaEvent) -> bool:
        if isinstance(event.data, ToneReceived):
            heard.append(event.data.tone)
        return len(heard) == 3

    waiting = asyncio.ensure_future(rig.bot.wait_media_event(tone, 10))
    await link.send_dtmf("*0D")
    await waiting
    assert heard == list("*0D")
    assert session.stats["tones_received"] == 3


async def test_three_video_sockets_get_the_subscribed_participants(rig: Rig) -> None:
    sockets = (VideoSocketSettings("recvonly"),) * 3
    meeting = rig.emulator.config.meetings[0]
    call = await rig.bot.join(
        rig.emulator.join_url(meeting), media_options=MediaSessionOptions(video_sockets=sockets)
    )
    await call.wait_for("established", 15)
    session = rig.bot.media_session(call)
    assert session is not None
    if any(s.receive_status != "active" for s in session.video_sockets):
        await rig.bot.wait_media_event(
            lambda e: (
                isinstance(e.data, VideoReceiveStatusChanged)
                and all(s.receive_status == "active" for s in session.video_sockets)
            ),
            10,
        )
    plan = [
        (0, VIDEO_MSIS[2], "sd180p"),
        (1, VIDEO_MSIS[0], "sd240p"),
        (2, VIDEO_MSIS[3], "sd360p"),
    ]
    loop = asyncio.get_running_loop()
    arrived = [asyncio.Event() for _ in plan]
    for (socket_id, msi, resolution), event in zip(plan, arrived, strict=True):
        socket = session.video_sockets[socket_id]
        socket.receive_ring.on_push = functools.partial(loop.call_soon_threadsafe, event.set)
        socket.subscribe(msi, resolution)
    sizes = {"sd180p": (320, 180), "sd240p": (424, 240), "sd360p": (640, 360)}
    for (socket_id, msi, resolution), event in zip(plan, arrived, strict=True):
        socket = session.video_sockets[socket_id]
        good = 0
        for _ in range(30):  # the first frames after a subscription may predate it
            event.clear()
            frame = socket.receive()
            if frame is None:
                await asyncio.wait_for(event.wait(), 10)
                continue
            assert frame.socket_id == socket_id
            decoded = decode_pattern(frame.data[: frame.height].reshape(frame.height, frame.width))
            if frame.msi == msi and decoded is not None and decoded[0] == msi:
                assert (frame.width, frame.height) == sizes[resolution]
                good += 1
                if good == 3:
                    break
        assert good == 3, (socket_id, hex(msi))
        assert socket.msi == msi  # the MP's videoSource message


async def test_the_bot_sends_nv12_video_and_hears_key_frame_requests(rig: Rig) -> None:
    sockets = (VideoSocketSettings("sendrecv"), VideoSocketSettings("recvonly"))
    meeting = rig.emulator.config.meetings[0]
    call = await rig.bot.join(
        rig.emulator.join_url(meeting), media_options=MediaSessionOptions(video_sockets=sockets)
    )
    await call.wait_for("established", 15)
    session = rig.bot.media_session(call)
    link = rig.emulator.calls[call.id].link
    assert session is not None and link is not None
    if session.video_sockets[0].send_status != "active":
        await rig.bot.wait_media_event(lambda e: isinstance(e.data, VideoSendStatusChanged), 10)
    with pytest.raises(VideoSocketError, match="does not send"):
        session.video_sockets[1].send(nv12_frame(0, 0))
    socket = link.video_sockets[0]
    sender = session.video_sockets[0]
    # A 15 fps source: frames go out at their own pace (the source's rate, not a wait).
    for i in range(8):
        sender.send(nv12_frame(i, round(i / 15 * TICKS_PER_SECOND)))
        await asyncio.sleep(1 / 15)
    if socket.frames_received < 3:
        for _ in range(3):
            socket.received.clear()
            await asyncio.wait_for(socket.received.wait(), 10)
    assert socket.frames_received >= 3
    assert socket.size_received == (320, 180)
    waiting = asyncio.ensure_future(
        rig.bot.wait_media_event(lambda e: isinstance(e.data, VideoKeyFrameNeeded), 10)
    )
    await link.request_key_frame(0)
    event = await waiting
    assert isinstance(event.data, VideoKeyFrameNeeded) and event.data.socket_id == 0


def nv12_frame(index: int, timestamp: int) -> VideoFrame:
    data = np.full(320 * 180 * 3 // 2, 128, np.uint8)
    data[: 320 * 180] = (index * 30) % 256
    return VideoFrame(data, 320, 180, timestamp)
