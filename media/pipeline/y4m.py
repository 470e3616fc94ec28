"""YUV4MPEG2 (Y4M) files for the recording writer thread (media/pipeline/recorder.py).

Y4M (mjpegtools yuv4mpeg(5); wiki.multimedia.cx "YUV4MPEG2") is a text stream header then raw
frames, with no index and no sizes anywhere:

    YUV4MPEG2 W<width> H<height> F<num>:<den> Ip A1:1 C420mpeg2\\n     stream header, once
    FRAME\\n<Y plane><Cb plane><Cr plane>                              per frame

so every frame that reached the file is readable after a crash, and a reader stops at the last
whole frame. ffmpeg reads it natively (`av.open(path)`, format "yuv4mpegpipe").

`C420mpeg2` is planar 4:2:0 with chroma sited like MPEG-2 and H.264 (co-sited horizontally with
the left luma sample, between the rows): the siting of the decoded H.264 video that arrives as
NV12. NV12 interleaves U and V in one plane, so each frame is de-interleaved into I420 order on
the writer thread (one numpy copy), never on the hot loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from media.pipeline.wavfile import AppendOnlyFile

FRAME_MARKER = b"FRAME\n"


def y4m_header(width: int, height: int, fps: int) -> bytes:
    return f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420mpeg2\n".encode("ascii")


def frame_bytes(width: int, height: int) -> int:
    """A frame's size in the file: the marker, then Y, Cb and Cr planes."""
    return len(FRAME_MARKER) + width * height * 3 // 2


def nv12_planes(
    data: npt.NDArray[np.uint8], width: int, height: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """NV12 to I420: the Y plane (a view) and the Cb then Cr planes (one new array)."""
    luma = width * height
    y = data.reshape(-1)[:luma]
    # NV12's chroma plane is height/2 rows of width/2 (U, V) pairs; moving the pair axis first
    # gives U's plane then V's, which is I420's order.
    uv = data.reshape(-1)[luma:].reshape(height // 2, width // 2, 2)
    return y, np.ascontiguousarray(uv.transpose(2, 0, 1))


class Y4mFile(AppendOnlyFile):
    """A Y4M file being written at one resolution; a new size needs a new file."""

    def __init__(self, path: Path, width: int, height: int, fps: int) -> None:
        self.width = width
        self.height = height
        self.frames = 0
        self.first_timestamp: int | None = None
        super().__init__(path, y4m_header(width, height, fps))

    def write_nv12(self, data: npt.NDArray[np.uint8], timestamp: int) -> None:
        y, chroma = nv12_planes(data, self.width, self.height)
        self.append([FRAME_MARKER, y.data, chroma.data], frame_bytes(self.width, self.height))
        self.frames += 1
        if self.first_timestamp is None:
            self.first_timestamp = timestamp
