"""The emulated participants' Opus encoder: 16 kHz mono in, CELT packets out.

CELT ("lowdelay") keeps the waveform, so what a participant says can be compared sample by
sample with what the bot heard (SILK, which libopus picks in "voip" mode, does not).
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt

RATE_HZ = 16_000


class ParticipantEncoder:
    def __init__(self, bitrate_bps: int = 40_000) -> None:
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.sample_rate = RATE_HZ
        self._ctx.layout = "mono"
        self._ctx.format = "s16"
        self._ctx.bit_rate = bitrate_bps
        self._ctx.options = {"application": "lowdelay", "frame_duration": "20"}
        self._samples = 0

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes | None:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.pts = self._samples
        self._samples += pcm.shape[0]
        packets = self._ctx.encode(frame)
        return bytes(packets[0]) if packets else None
