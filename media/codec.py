"""Opus for 20 ms 16 kHz mono frames (RFC 7587: the RTP clock is always 48 kHz).

libopus is called directly where it can be loaded (media/opus.py: no resampler, FEC); these av
classes are the fallback.

The encoder runs libopus in "lowdelay" (CELT-only) mode: in "voip" mode libopus picks SILK for
8 kHz-wide speech, which keeps intelligibility but not the waveform (a round trip correlated
0.79 against 0.999 for CELT here), and CELT's algorithmic delay is 2.5 ms against 6.5 ms.
"""

from __future__ import annotations

from typing import Protocol

import av
import numpy as np

from media import opus
from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE_HZ, Pcm

OPUS_RTP_RATE_HZ = 48_000
RTP_TICKS_PER_FRAME = OPUS_RTP_RATE_HZ * AUDIO_FRAME_SAMPLES // AUDIO_SAMPLE_RATE_HZ  # 960
DEFAULT_BITRATE_BPS = 40_000


class AvOpusEncoder:
    """One stream's encoder through av (where libopus cannot be loaded directly). Stateful:
    one stream's frames, in order, one thread at a time."""

    def __init__(self, bitrate_bps: int = DEFAULT_BITRATE_BPS) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = AUDIO_SAMPLE_RATE_HZ
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate_bps
        ctx.options = {"application": "lowdelay", "frame_duration": "20"}
        self._ctx = ctx
        self._pts = 0

    def encode(self, pcm: Pcm) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE_HZ
        frame.pts = self._pts
        self._pts += AUDIO_FRAME_SAMPLES
        return [bytes(packet) for packet in self._ctx.encode(frame)]


class AvOpusDecoder:
    """Opus packets through av (where libopus cannot be loaded directly) to 16 kHz mono PCM,
    in whatever chunk sizes libopus and the resampler give.

    FFmpeg's libopus decoder always outputs 48 kHz. Decoding to stereo and letting swresample
    downmix keeps the level: a mono decode of a stereo stream costs 3 dB (measured 0.71x).
    """

    def __init__(self) -> None:
        ctx = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = OPUS_RTP_RATE_HZ
        ctx.layout = "stereo"
        ctx.format = "s16"
        self._ctx = ctx
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_SAMPLE_RATE_HZ)

    def conceal(self, last_payload: bytes | None) -> list[Pcm]:
        """20 ms of Opus packet-loss concealment.

        av has no PLC call, but libopus treats a frame of length <= 1 as lost: a TOC-only packet
        (same configuration, code 0) conceals one frame and the decoder carries on
        (measured with av 18.1 and a 10% loss). An empty packet would drain the decoder instead.
        """
        toc = last_payload[0] if last_payload else 0x78  # CELT FB 20 ms if nothing came yet
        return self.decode(bytes([toc & 0xFC]))

    def recover(self, next_payload: bytes) -> list[Pcm]:
        """No FEC through av: conceal instead."""
        return self.conceal(next_payload)

    def decode(self, payload: bytes) -> list[Pcm]:
        """Raises av.FFmpegError or ValueError for a packet libopus cannot take."""
        return [
            out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            for raw in self._ctx.decode(av.Packet(payload))
            for out in self._resampler.resample(raw)
        ]


class Encoder(Protocol):
    def encode(self, pcm: Pcm) -> list[bytes]: ...


class Decoder(Protocol):
    def decode(self, payload: bytes) -> list[Pcm]: ...
    def conceal(self, last_payload: bytes | None) -> list[Pcm]: ...
    def recover(self, next_payload: bytes) -> list[Pcm]: ...


def OpusEncoder(bitrate_bps: int = DEFAULT_BITRATE_BPS) -> Encoder:  # noqa: N802 - a factory
    """CELT ("restricted low delay") at 16 kHz: libopus directly, or av where it cannot load."""
    if opus.load() is not None:
        return opus.NativeOpusEncoder(bitrate_bps)
    return AvOpusEncoder(bitrate_bps)


def OpusDecoder() -> Decoder:  # noqa: N802 - a factory
    """16 kHz mono with PLC and FEC: libopus directly, or av (PLC only) where it cannot load."""
    if opus.load() is not None:
        return opus.NativeOpusDecoder()
    return AvOpusDecoder()
