"""libopus called directly (ctypes on the copy that av's wheel bundles): encode and decode at
16 kHz mono with no resampler, loss concealment, and in-band FEC, which av cannot reach.

Why not av: its decoder always outputs 48 kHz (a resampler then costs ~12 us and holds back a
few samples), it has no per-call FEC flag, and PLC needs a trick (a packet of the last TOC byte).
libopus decodes any Opus stream at 16 kHz mono itself (RFC 6716 section 4: the decoder may run
at any of its rates and downmixes stereo). ctypes releases the GIL for each call.

`load()` returns None where no libopus can be found; media/codec.py then uses av.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
from typing import Any

import numpy as np

from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE_HZ, Pcm

# opus_defines.h
OPUS_OK = 0
OPUS_APPLICATION_VOIP = 2048
OPUS_APPLICATION_RESTRICTED_LOWDELAY = 2051
OPUS_SET_BITRATE_REQUEST = 4002
OPUS_SET_INBAND_FEC_REQUEST = 4012
OPUS_SET_PACKET_LOSS_PERC_REQUEST = 4014
MAX_FRAME_SAMPLES = AUDIO_SAMPLE_RATE_HZ * 120 // 1000  # the longest Opus packet: 120 ms
MAX_PACKET_BYTES = 1275 * 3 + 7  # RFC 6716 section 3.4, with code-3 overhead


class OpusError(ValueError):
    """libopus refused a packet or a setting (its negative error code is in the message)."""


def _candidates() -> list[str]:
    import av

    site = os.path.dirname(os.path.dirname(os.path.abspath(av.__file__)))
    found = sorted(glob.glob(os.path.join(site, "av.libs", "libopus*.so*")))
    system = ctypes.util.find_library("opus")
    return found + ([system] if system else [])


@functools.cache
def load() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    # Every signature declared: an undeclared 64-bit pointer argument is truncated and crashes
    # (opus_decoder_ctl is variadic: ctypes passes an undeclared argument as a C int).
    vp, c_int, i32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int32
    bytes_p, pcm_p = ctypes.c_char_p, ctypes.POINTER(ctypes.c_int16)
    lib.opus_decoder_create.argtypes = [i32, c_int, ctypes.POINTER(c_int)]
    lib.opus_decoder_create.restype = vp
    lib.opus_decoder_destroy.argtypes = [vp]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decode.argtypes = [vp, bytes_p, i32, pcm_p, c_int, c_int]
    lib.opus_decode.restype = c_int
    lib.opus_encoder_create.argtypes = [i32, c_int, c_int, ctypes.POINTER(c_int)]
    lib.opus_encoder_create.restype = vp
    lib.opus_encoder_destroy.argtypes = [vp]
    lib.opus_encoder_destroy.restype = None
    lib.opus_encode.argtypes = [vp, pcm_p, c_int, ctypes.c_char_p, i32]
    lib.opus_encode.restype = i32
    lib.opus_encoder_ctl.argtypes = [vp, c_int, i32]  # the setters used here take one int
    lib.opus_encoder_ctl.restype = c_int
    lib.opus_strerror.argtypes = [c_int]
    lib.opus_strerror.restype = ctypes.c_char_p
    if hasattr(lib, "opus_packet_has_lbrr"):  # libopus 1.5+
        lib.opus_packet_has_lbrr.argtypes = [bytes_p, i32]
        lib.opus_packet_has_lbrr.restype = c_int


def _check(lib: ctypes.CDLL, code: int, what: str) -> int:
    if code < 0:
        raise OpusError(f"{what}: {lib.opus_strerror(code).decode()} ({code})")
    return code


def _require() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise ImportError("libopus not found (neither in av.libs nor on the system)")
    return lib


class NativeOpusDecoder:
    """One stream's decoder at 16 kHz mono. Stateful: one stream, in order, one thread."""

    def __init__(self) -> None:
        self._lib = lib = _require()
        error = ctypes.c_int(0)
        self._state: Any = lib.opus_decoder_create(AUDIO_SAMPLE_RATE_HZ, 1, ctypes.byref(error))
        _check(lib, error.value, "opus_decoder_create")
        self._out = np.empty(MAX_FRAME_SAMPLES, dtype=np.int16)
        self._out_p = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_decoder_destroy(state)

    def _run(self, payload: bytes | None, samples: int, fec: int) -> list[Pcm]:
        n = self._lib.opus_decode(
            self._state, payload, len(payload) if payload else 0, self._out_p, samples, fec
        )
        _check(self._lib, n, "opus_decode")
        return [self._out[:n].copy()]

    def decode(self, payload: bytes) -> list[Pcm]:
        """Raises OpusError for a packet libopus cannot take."""
        if not payload:
            raise OpusError("an empty Opus packet")
        return self._run(payload, MAX_FRAME_SAMPLES, 0)

    def conceal(self, last_payload: bytes | None = None) -> list[Pcm]:
        """20 ms of libopus packet-loss concealment (a NULL packet)."""
        return self._run(None, AUDIO_FRAME_SAMPLES, 0)

    def recover(self, next_payload: bytes) -> list[Pcm]:
        """The lost 20 ms before `next_payload`, from its in-band FEC (LBRR) data; libopus
        falls back to concealment when the packet carries none (RFC 6716 section 2.1.7)."""
        return self._run(next_payload, AUDIO_FRAME_SAMPLES, 1)


def has_fec(payload: bytes) -> bool:
    """Whether a packet carries LBRR data for the frame before it (False if unknowable)."""
    lib = load()
    if lib is None or not hasattr(lib, "opus_packet_has_lbrr") or not payload:
        return False
    return bool(lib.opus_packet_has_lbrr(payload, len(payload)) > 0)


class NativeOpusEncoder:
    """20 ms 16 kHz mono frames to Opus packets, one stream, in order, one thread at a time."""

    def __init__(
        self,
        bitrate_bps: int,
        application: int = OPUS_APPLICATION_RESTRICTED_LOWDELAY,
        fec_loss_percent: int = 0,
    ) -> None:
        """fec_loss_percent > 0 turns on in-band FEC tuned for that loss (SILK modes only)."""
        self._lib = lib = _require()
        error = ctypes.c_int(0)
        self._state: Any = lib.opus_encoder_create(
            AUDIO_SAMPLE_RATE_HZ, 1, application, ctypes.byref(error)
        )
        _check(lib, error.value, "opus_encoder_create")
        _check(
            lib, lib.opus_encoder_ctl(self._state, OPUS_SET_BITRATE_REQUEST, bitrate_bps), "bitrate"
        )
        if fec_loss_percent:
            _check(lib, lib.opus_encoder_ctl(self._state, OPUS_SET_INBAND_FEC_REQUEST, 1), "fec")
            _check(
                lib,
                lib.opus_encoder_ctl(
                    self._state, OPUS_SET_PACKET_LOSS_PERC_REQUEST, fec_loss_percent
                ),
                "loss",
            )
        self._packet = ctypes.create_string_buffer(MAX_PACKET_BYTES)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.opus_encoder_destroy(state)

    def encode(self, pcm: Pcm) -> list[bytes]:
        if pcm.dtype != np.int16 or pcm.shape != (AUDIO_FRAME_SAMPLES,):
            raise ValueError(f"Opus frames here are {AUDIO_FRAME_SAMPLES} int16 samples")
        frame = np.ascontiguousarray(pcm)
        n = self._lib.opus_encode(
            self._state,
            frame.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)),
            AUDIO_FRAME_SAMPLES,
            self._packet,
            MAX_PACKET_BYTES,
        )
        _check(self._lib, n, "opus_encode")
        return [self._packet.raw[:n]]
