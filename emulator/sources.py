"""Where a participant's microphone audio comes from: the seeded voice-like signal, silence, a
WAV file, or a live feed (a browser's microphone). Every source yields 20 ms 16 kHz mono int16
frames, one per MP tick; a source never blocks the tick (the live feed is latest-first)."""

from __future__ import annotations

import wave
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from emulator.signal import FRAME_SAMPLES, RATE_HZ, VoiceLikeSignal

SILENT_FRAME = np.zeros(FRAME_SAMPLES, dtype=np.int16)
LIVE_QUEUE_FRAMES = 10  # 200 ms: a feed that gets further ahead loses its oldest frames
SYNTHETIC = "synthetic"
SILENCE = "silence"


class AudioSource(Protocol):
    # A live source (a person) and a silent one are audible when their frame carries sound; a
    # scripted voice follows the script's talk spurts (its breaths do not end a spurt).
    by_energy: bool

    def next_frame(self) -> npt.NDArray[np.int16]: ...


class SyntheticVoice:
    by_energy = False

    def __init__(self, seed: int) -> None:
        self._signal = VoiceLikeSignal(seed)

    def next_frame(self) -> npt.NDArray[np.int16]:
        return self._signal.next_frame()


class Silence:
    by_energy = True  # a silent microphone is never an active speaker

    def next_frame(self) -> npt.NDArray[np.int16]:
        return SILENT_FRAME


class WavVoice:
    """A WAV file (PCM 8/16/32-bit, any rate, mono or multi-channel), mixed down to mono,
    resampled to 16 kHz and looped. Read whole at construction: scenario clips are short."""

    by_energy = False

    def __init__(self, path: str | Path) -> None:
        self.samples = read_wav_16k(path)
        if len(self.samples) == 0:
            raise ValueError(f"{path}: the WAV file has no samples")
        self._pos = 0

    def next_frame(self) -> npt.NDArray[np.int16]:
        n = len(self.samples)
        idx = (self._pos + np.arange(FRAME_SAMPLES)) % n
        self._pos = (self._pos + FRAME_SAMPLES) % n
        return self.samples[idx]


class LiveAudio:
    """A feed pushed from elsewhere (the browser participant's decoded microphone): `push`
    appends 16 kHz samples, each tick takes the next 20 ms, or silence while the feed is late.
    Bounded: a feed further than LIVE_QUEUE_FRAMES ahead drops its oldest audio."""

    by_energy = True

    def __init__(self) -> None:
        self._frames: deque[npt.NDArray[np.int16]] = deque(maxlen=LIVE_QUEUE_FRAMES)
        self._partial = np.zeros(0, dtype=np.int16)
        self.frames_pushed = 0

    def push(self, pcm: npt.NDArray[np.int16]) -> None:
        data = np.concatenate([self._partial, pcm.astype(np.int16, copy=False)])
        whole = len(data) // FRAME_SAMPLES * FRAME_SAMPLES
        for start in range(0, whole, FRAME_SAMPLES):
            self._frames.append(data[start : start + FRAME_SAMPLES])
            self.frames_pushed += 1
        self._partial = data[whole:]

    def next_frame(self) -> npt.NDArray[np.int16]:
        return self._frames.popleft() if self._frames else SILENT_FRAME


class LiveFeed:
    """One live microphone heard by several links (each bot call in the meeting has its own
    MP link): `push` fans the audio out to every subscriber's LiveAudio."""

    def __init__(self) -> None:
        self._subscribers: list[LiveAudio] = []

    def subscribe(self) -> LiveAudio:
        source = LiveAudio()
        self._subscribers.append(source)
        return source

    def unsubscribe(self, source: LiveAudio) -> None:
        if source in self._subscribers:
            self._subscribers.remove(source)

    def push(self, pcm: npt.NDArray[np.int16]) -> None:
        for source in self._subscribers:
            source.push(pcm)


def read_wav_16k(path: str | Path) -> npt.NDArray[np.int16]:
    """A WAV file's samples as 16 kHz mono int16. Raises ValueError for what it cannot read."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise ValueError(f"{path}: not a readable PCM WAV file ({exc})") from None
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32)")
    samples = np.frombuffer(raw, dtype=dtypes[width]).astype(np.float64)
    if width == 1:
        samples = (samples - 128.0) * 256.0  # 8-bit WAV is unsigned
    elif width == 4:
        samples /= 65536.0
    samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != RATE_HZ and len(samples) > 1:
        # Linear interpolation: scenario clips are speech-like test audio, not hi-fi.
        duration = len(samples) / rate
        targets = np.arange(int(duration * RATE_HZ)) / RATE_HZ
        samples = np.interp(targets, np.arange(len(samples)) / rate, samples)
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def write_wav_16k(path: str | Path, pcm: npt.NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE_HZ)
        wav.writeframes(pcm.astype("<i2").tobytes())


def source_for(voice: str | None, seed: int, base: Path | None = None) -> AudioSource:
    """The source a script names: None or "synthetic" (the seeded voice), "silence", or a WAV
    file path (relative to `base`, the scenario file's folder)."""
    if voice is None or voice == SYNTHETIC:
        return SyntheticVoice(seed)
    if voice == SILENCE:
        return Silence()
    path = Path(voice)
    if not path.is_absolute() and base is not None:
        path = base / path
    return WavVoice(path)
