"""What the browser join page receives: the bots' audio, mixed, and one bot's video.

Both are fed from the MP links' taps (MediaProcessorLink.audio_taps / video_taps, called on the
loop with each decoded frame) and pulled by the aiortc sender of the page's peer connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

OUT_RATE_HZ = 48_000  # Opus' rate: the bots' decoded audio is already at it
OUT_FRAME_SAMPLES = OUT_RATE_HZ // 50  # 20 ms
OUT_TIME_BASE = Fraction(1, OUT_RATE_HZ)
OUT_FRAME_SECONDS = 0.020
MAX_LAG_SECONDS = 1.0  # a send loop further behind skips ahead rather than bursting
LANE_FRAMES = 10  # 200 ms of one bot's audio waiting to be played; older frames are dropped
PRIME_FRAMES = 2  # a lane starts (and restarts after running dry) with 40 ms in hand
BOT_AUDIBLE_RMS = 100.0  # int16 RMS; as the MP's floor for a live microphone (mpaudio.py)
SPEAKING_HOLD_SECONDS = 0.6  # "speaking" lingers this long after the last audible frame
VIDEO_OWNER_SECONDS = 1.0  # the page shows one bot's video; another takes over after a pause
VIDEO_CLOCK_HZ = 90_000  # RTP video clock (RFC 3551 section 5)
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_HZ)

Pcm = npt.NDArray[np.int16]


class _Lane:
    """One bot's audio on its way to the page: 20 ms frames of 48 kHz stereo s16."""

    def __init__(self) -> None:
        self.frames: deque[Pcm] = deque(maxlen=LANE_FRAMES)
        self.partial: Pcm = np.zeros(0, dtype=np.int16)
        self.primed = False
        self.resampler = av.AudioResampler(format="s16", layout="stereo", rate=OUT_RATE_HZ)


class BotAudio(MediaStreamTrack):
    """What the bots say, for the page: push() takes each bot's decoded frames (the links' audio
    taps), recv() mixes one 20 ms frame of every bot that has one, paced by the clock. Silence
    while nobody has audio, so the page's stream runs on."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._lanes: dict[str, _Lane] = {}
        self._loud_until: dict[str, float] = {}
        self._start: float | None = None
        self._sent = 0
        self.dropped = 0  # bot frames the resampler refused

    def push(self, key: str, frame: av.AudioFrame) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        try:
            resampled = lane.resampler.resample(frame)
        except (av.FFmpegError, ValueError):
            # Called from the link's recorder: a frame we cannot take is skipped, never raised.
            self.dropped += 1
            return
        pcm = np.concatenate(
            [lane.partial, *(f.to_ndarray().reshape(-1) for f in resampled)]
        ).astype(np.int16, copy=False)
        size = 2 * OUT_FRAME_SAMPLES  # interleaved stereo
        whole = len(pcm) // size * size
        for start in range(0, whole, size):
            chunk = pcm[start : start + size]
            lane.frames.append(chunk)
            if np.sqrt(np.mean(np.square(chunk, dtype=np.float64))) > BOT_AUDIBLE_RMS:
                self._loud_until[key] = time.monotonic() + SPEAKING_HOLD_SECONDS
        lane.partial = pcm[whole:]

    def forget(self, key: str) -> None:
        self._lanes.pop(key, None)
        self._loud_until.pop(key, None)

    def speaking(self, key: str, now: float) -> bool:
        return self._loud_until.get(key, 0.0) > now

    def _mix(self) -> Pcm:
        total = np.zeros(2 * OUT_FRAME_SAMPLES, dtype=np.int32)
        for lane in self._lanes.values():
            if not lane.primed and len(lane.frames) >= PRIME_FRAMES:
                lane.primed = True
            if lane.primed:
                if lane.frames:
                    total += lane.frames.popleft()
                else:
                    lane.primed = False  # ran dry: wait for a cushion again
        return np.clip(total, -32768, 32767).astype(np.int16)

    async def recv(self) -> av.AudioFrame:
        # Pacing a real-time source by the clock is the one place a sleep belongs.
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._sent * OUT_FRAME_SECONDS
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > MAX_LAG_SECONDS:
            self._start = now - self._sent * OUT_FRAME_SECONDS
        frame = av.AudioFrame.from_ndarray(
            self._mix().reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = OUT_RATE_HZ
        frame.pts = self._sent * OUT_FRAME_SAMPLES
        frame.time_base = OUT_TIME_BASE
        self._sent += 1
        return frame


class BotVideo(MediaStreamTrack):
    """One bot's video for the page, newest frame wins.

    The page's sender gets a copy of each frame, timed by its arrival here: the link's frame is
    shared (the link, every page) and aiortc's encoder changes the frame it encodes (PyAV
    rebases pts and time_base in place, CodecContext.encode in av/codec/context.py; aiortc sets
    pict_type for a key frame, aiortc/codecs/vpx.py). The bot's own pts cannot time the page's
    stream either: aiortc's receiver counts them from 0 for each bot (TimestampMapper,
    aiortc/rtcrtpreceiver.py), so a bot taking over would send RTP timestamps back in time and
    the browser's jitter buffer would hold its frames (a frozen tile)."""

    kind = "video"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._frame: av.VideoFrame | None = None
        self._arrived = 0.0  # the clock when _frame arrived
        self._owner: str | None = None
        self._owner_seen = 0.0
        self._start: float | None = None
        self._last_pts = -1
        self._wake = asyncio.Event()
        self.frames = 0

    @property
    def owner(self) -> str | None:
        """The key (call id) of the bot on screen."""
        return self._owner

    def put(self, key: str, frame: av.VideoFrame) -> None:
        now = self._clock()
        if key != self._owner and now - self._owner_seen < VIDEO_OWNER_SECONDS:
            return  # another bot is on screen
        self._owner, self._owner_seen = key, now
        self._frame, self._arrived = frame, now
        self._wake.set()

    def forget(self, key: str) -> None:
        if self._owner == key:
            self._owner = None
            self._owner_seen = 0.0

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            frame, self._frame = self._frame, None
            if frame is not None:
                self.frames += 1
                return self._own(frame, self._arrived)
            self._wake.clear()
            await self._wake.wait()

    def _own(self, frame: av.VideoFrame, arrived: float) -> av.VideoFrame:
        """The page's copy of a frame, with pts on the page's 90 kHz clock, rising."""
        if frame.format.name == "yuv420p":
            out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        else:
            out = frame.reformat(format="yuv420p")  # a new frame
        if self._start is None:
            self._start = arrived
        pts = max(round((arrived - self._start) * VIDEO_CLOCK_HZ), self._last_pts + 1)
        self._last_pts = out.pts = pts
        out.time_base = VIDEO_TIME_BASE
        return out
