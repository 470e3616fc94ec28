"""WAV files in and out as 16 kHz mono int16, the pipeline's one audio format.

Control-path and worker-thread code only: these read and write whole files (never call them on
the hot loop).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from media.frames import AUDIO_SAMPLE_RATE_HZ


def read_wav_16k(path: str | Path) -> npt.NDArray[np.int16]:
    """A WAV file's samples as 16 kHz mono int16 (PCM 8/16/32-bit, any rate, any channel count:
    channels are averaged, other rates resampled). Raises ValueError for what it cannot read."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ValueError(f"{path}: not a readable PCM WAV file ({exc})") from None
    dtypes: dict[int, np.dtype[np.generic]] = {
        1: np.dtype("u1"),
        2: np.dtype("<i2"),
        4: np.dtype("<i4"),
    }
    if width not in dtypes:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32)")
    usable = len(raw) // (width * channels) * (width * channels)  # a truncated last frame
    samples = np.frombuffer(raw[:usable], dtype=dtypes[width]).astype(np.float64)
    if width == 1:
        samples = (samples - 128.0) * 256.0  # 8-bit WAV is unsigned
    elif width == 4:
        samples /= 65536.0
    samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != AUDIO_SAMPLE_RATE_HZ and len(samples) > 1:
        # Linear interpolation: good enough for prompts and test clips, not for hi-fi.
        duration = len(samples) / rate
        targets = np.arange(int(duration * AUDIO_SAMPLE_RATE_HZ)) / AUDIO_SAMPLE_RATE_HZ
        samples = np.interp(targets, np.arange(len(samples)) / rate, samples)
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def write_wav_16k(path: str | Path, pcm: npt.NDArray[np.int16]) -> None:
    """Write 16 kHz mono PCM16 (little-endian, whatever the host's byte order)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(AUDIO_SAMPLE_RATE_HZ)
        wav.writeframes(pcm.astype("<i2").tobytes())
