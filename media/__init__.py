"""Local media platform: the Python counterpart of Microsoft.Skype.Bots.Media (see
docs/architecture.md)."""

from media.clock import Clock, MonotonicClock
from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE_HZ, AudioFrame
from media.platform import MediaPlatform, MediaPlatformSettings
from media.session import LocalMediaSession

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "AUDIO_SAMPLE_RATE_HZ",
    "AudioFrame",
    "Clock",
    "LocalMediaSession",
    "MediaPlatform",
    "MediaPlatformSettings",
    "MonotonicClock",
]
