"""Generated participant video: frames that say whose they are and which one they are.

Each frame is a 16 x 9 grid of large black or white luma cells (chroma flat grey), so it
survives VP8 and H.264 at 320x180 and above (a cell is at least 20 x 20 pixels):
- row 0: a fixed sync word (0xA55A), so a decoder can tell a pattern from anything else;
- rows 1-8: 64 data bits, the video MSI (32 bits) then the frame number (32 bits), most
  significant first, each bit followed by its complement (a cell that compression flipped is
  caught, never misread).
decode_pattern() reads a decoded luma plane back at any resolution: cell edges scale with the
plane, and each cell is judged by the mean of its central half.

Frame rate: 15 fps at every resolution (the spec allows 1.875 to 30), for camera and screen share.

A live participant (the browser join page, emulator/browser.py) has a real camera instead: the
socket subscribed to its video MSI sends the camera's newest frame at the same 15 fps, scaled to
the subscribed resolution (stretched, not cropped, when the aspect ratios differ).
"""

from __future__ import annotations

import asyncio
import functools
import time
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from emulator.sources import LiveFeed

# resolution names of the subscribe message (docs/media-protocol.md, Video)
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "hd1080p": (1920, 1080),
    "hd720p": (1280, 720),
    "sd540p": (960, 540),
    "sd360p": (640, 360),
    "sd240p": (424, 240),
    "sd180p": (320, 180),
}
FRAME_RATE = 15
VIDEO_CLOCK_HZ = 90_000  # RTP clock of video (RFC 3551 section 5)
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_HZ)
COLUMNS, ROWS = 16, 9
SYNC = 0xA55A
DARK, LIGHT = 32, 224
THRESHOLD = 128
MARGIN = 32  # a cell's mean must be this far from the threshold to count


def pattern_cells(msi: int, frame: int) -> npt.NDArray[np.bool_]:
    """The grid (ROWS x COLUMNS, True = white) for this MSI and frame number."""
    bits = [(SYNC >> (15 - i)) & 1 for i in range(COLUMNS)]
    value = ((msi & 0xFFFFFFFF) << 32) | (frame & 0xFFFFFFFF)
    for i in range(64):
        bit = (value >> (63 - i)) & 1
        bits += [bit, 1 - bit]
    return np.array(bits, dtype=bool).reshape(ROWS, COLUMNS)


def _edges(size: int, cells: int) -> npt.NDArray[np.int64]:
    return (np.arange(cells + 1, dtype=np.int64) * size + cells - 1) // cells


@functools.cache
def _layout(width: int, height: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    return np.diff(_edges(width, COLUMNS)), np.diff(_edges(height, ROWS))


def render(msi: int, frame: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """An I420 frame (height * 3/2 rows of width bytes) showing the pattern."""
    widths, heights = _layout(width, height)
    levels = np.where(pattern_cells(msi, frame), LIGHT, DARK).astype(np.uint8)
    luma = np.repeat(np.repeat(levels, widths, axis=1), heights, axis=0)
    out = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    out[:height] = luma
    return out


def decode_pattern(y_plane: npt.NDArray[np.uint8]) -> tuple[int, int] | None:
    """(video MSI, frame number) from a decoded luma plane (NV12 or I420 Y, height x width),
    or None when the plane does not hold a readable pattern."""
    if y_plane.ndim != 2 or y_plane.shape[0] < 2 * ROWS or y_plane.shape[1] < 2 * COLUMNS:
        return None
    height, width = y_plane.shape
    xs, ys = _edges(width, COLUMNS), _edges(height, ROWS)
    means = np.empty((ROWS, COLUMNS))
    for r in range(ROWS):
        y0, y1 = int(ys[r]), int(ys[r + 1])
        qy = (y1 - y0) // 4
        band = y_plane[y0 + qy : y1 - qy]
        for c in range(COLUMNS):
            x0, x1 = int(xs[c]), int(xs[c + 1])
            qx = (x1 - x0) // 4
            means[r, c] = band[:, x0 + qx : x1 - qx].mean()
    if np.any(np.abs(means - THRESHOLD) < MARGIN):
        return None
    bits = (means > THRESHOLD).reshape(-1).astype(np.int64)
    sync = int("".join(str(b) for b in bits[:COLUMNS]), 2)
    data, check = bits[COLUMNS::2], bits[COLUMNS + 1 :: 2]
    if sync != SYNC or np.any(data == check):
        return None
    value = int("".join(str(b) for b in data), 2)
    return value >> 32, value & 0xFFFFFFFF


def fit(requested: tuple[int, int], camera: tuple[int, int]) -> tuple[int, int]:
    """The resolution sent: the one asked for, or the camera's largest when that is smaller."""
    if camera[0] < requested[0] or camera[1] < requested[1]:
        return camera[0] & ~1, camera[1] & ~1
    return requested


class LiveCamera:
    """A live participant's camera: its newest decoded frame. Latest wins, so it holds one frame
    however fast the camera runs and however slowly the sockets showing it send."""

    def __init__(self) -> None:
        self.frame: av.VideoFrame | None = None
        self.frames = 0

    def put(self, frame: av.VideoFrame) -> None:
        self.frame = frame
        self.frames += 1


class LivePerson(LiveFeed):
    """A live participant's microphone (the LiveFeed it is, for ParticipantScript.live) and
    camera: the MP's video sockets find the camera through the script's `live`."""

    def __init__(self) -> None:
        super().__init__()
        self.camera = LiveCamera()


def _scaled(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """The camera frame at this size, always a new frame: each socket stamps its own pts."""
    out = frame.reformat(width=width, height=height, format="yuv420p")
    if out is frame:  # reformat hands back the frame itself when nothing changes
        out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
    return out


class PatternVideoTrack(MediaStreamTrack):
    """One sending video m-line's source: the subscribed participant's pattern (or live camera)
    at 15 fps, or nothing (recv() waits) while the socket has no subscription.

    The stock aiortc sender pulls from it, encodes in an executor and answers PLI with a key
    frame. `msi` is the MSI of the frame recv() returned last: the stock sender sends all of a
    frame's packets before it asks for the next frame, so it names the packets being sent.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._source: tuple[int, int, int] | None = None  # msi, width, height
        self._camera: LiveCamera | None = None  # a live participant's camera, else the pattern
        self._wake = asyncio.Event()
        self._start: float | None = None
        self._next_due = 0.0
        self.frame_number = 0
        self.msi: int | None = None
        self.frames = 0

    @property
    def source(self) -> tuple[int, int, int] | None:
        return self._source

    def show(self, msi: int, width: int, height: int, camera: LiveCamera | None = None) -> None:
        self._source = (msi, width, height)
        self._camera = camera
        self._wake.set()

    def blank(self) -> None:
        self._source = None
        self._camera = None

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    async def recv(self) -> av.VideoFrame:
        # Pacing a real-time source by the clock is the one place a sleep belongs.
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._source is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            if self._start is None:
                self._start = self._next_due = now
            if self._next_due > now:
                await asyncio.sleep(self._next_due - now)
                continue  # look at the subscription again: it may have changed meanwhile
            # Late (a slow encode): the next frame is due a period from now, not in a burst.
            self._next_due = max(self._next_due, now) + 1 / FRAME_RATE
            msi, width, height = self._source
            camera = self._camera
            if camera is None:
                frame = av.VideoFrame.from_ndarray(
                    render(msi, self.frame_number, width, height), format="yuv420p"
                )
            elif camera.frame is None:
                continue  # the camera has not delivered yet: look again next period
            else:
                # Scaling takes 0.2-0.5 ms at these sizes (sws_scale), more from a big camera:
                # off the loop, as the encoder that follows.
                frame = await asyncio.get_running_loop().run_in_executor(
                    None, _scaled, camera.frame, width, height
                )
            frame.pts = round((now - self._start) * VIDEO_CLOCK_HZ)
            frame.time_base = VIDEO_TIME_BASE
            self.frame_number += 1
            self.frames += 1
            self.msi = msi
            return frame
