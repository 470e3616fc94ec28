"""Frames that sockets deliver and accept."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

AUDIO_SAMPLE_RATE_HZ = 16_000
AUDIO_FRAME_MS = 20
AUDIO_FRAME_SAMPLES = AUDIO_SAMPLE_RATE_HZ * AUDIO_FRAME_MS // 1000  # 320 samples = 640 bytes
AUDIO_FRAME_SECONDS = AUDIO_FRAME_MS / 1000

Pcm = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class UnmixedAudioBuffer:
    """One speaker's 20 ms in unmixed mode, like UnmixedAudioBuffer in
    https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html
    """

    msi: int  # ActiveSpeakerId: the speaker's audio media source id
    pcm: Pcm
    original_sender_timestamp: int = 0  # 100 ns ticks at the source; 0 if unknown


@dataclass(slots=True)
class AudioFrame:
    """20 ms of 16 kHz mono PCM16, as the Windows library's AudioMediaBuffer (Pcm16K).

    `timestamp` is in 100 ns ticks on the platform clock; `active_speakers` holds the MSIs of
    who is in this frame (from the RTP CSRC list, RFC 3550 mixer semantics).
    """

    pcm: Pcm
    timestamp: int
    active_speakers: tuple[int, ...] = ()
    is_silence: bool = False
    sequence: int = field(default=0)
    concealed: bool = False  # made up by the decoder's loss concealment (a lost packet)
    # Unmixed mode: one buffer per current speaker (at most 4); `pcm` is then their sum.
    unmixed: tuple[UnmixedAudioBuffer, ...] = ()
    original_sender_timestamp: int = 0  # the sender's capture time (100 ns ticks), 0 if unknown

    def __post_init__(self) -> None:
        if self.pcm.dtype != np.int16 or self.pcm.shape != (AUDIO_FRAME_SAMPLES,):
            raise ValueError(
                f"AudioFrame needs {AUDIO_FRAME_SAMPLES} int16 samples, "
                f"got {self.pcm.dtype} {self.pcm.shape}"
            )


def silence() -> Pcm:
    return np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.int16)


@dataclass(slots=True)
class VideoFrame:
    """One NV12 picture (as VideoMediaBuffer carries it): `data` holds `height` rows of Y
    then `height / 2` rows of interleaved U and V, `width` bytes each (width * height * 1.5)."""

    data: npt.NDArray[np.uint8]
    width: int
    height: int
    timestamp: int  # 100 ns ticks: arrival on receive, capture time on send
    msi: int | None = None  # the participant shown (MediaSourceId); set on receive
    socket_id: int = 0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"NV12 needs an even, positive size, got {self.width}x{self.height}")
        if self.data.size != self.width * self.height * 3 // 2:
            raise ValueError(
                f"NV12 {self.width}x{self.height} needs {self.width * self.height * 3 // 2} "
                f"bytes, got {self.data.size}"
            )
