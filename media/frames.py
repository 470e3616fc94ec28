"""Frames that sockets deliver and accept (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

AUDIO_SAMPLE_RATE_HZ = 16_000
AUDIO_FRAME_MS = 20
AUDIO_FRAME_SAMPLES = AUDIO_SAMPLE_RATE_HZ * AUDIO_FRAME_MS // 1000  # 320 samples = 640 bytes
AUDIO_FRAME_SECONDS = AUDIO_FRAME_MS / 1000

Pcm = npt.NDArray[np.int16]


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

    def __post_init__(self) -> None:
        if self.pcm.dtype != np.int16 or self.pcm.shape != (AUDIO_FRAME_SAMPLES,):
            raise ValueError(
                f"AudioFrame needs {AUDIO_FRAME_SAMPLES} int16 samples, "
                f"got {self.pcm.dtype} {self.pcm.shape}"
            )


def silence() -> Pcm:
    return np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.int16)
