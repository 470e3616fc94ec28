"""The processing pipeline: VAD, mixing, recorders and processors over numpy frames, run by
the hot loop (docs/processors.md)."""

from media.pipeline.echo import EchoProcessor
from media.pipeline.events import (
    MIXED,
    DominantSpeakerChanged,
    PipelineEvent,
    PlayerLow,
    ProcessorDisabled,
    RecorderFailed,
    SpeechStarted,
    SpeechStopped,
)
from media.pipeline.hotloop import HotLoop
from media.pipeline.processor import (
    AudioProcessor,
    Processor,
    ProcessorContext,
    Recording,
    VideoProcessor,
)
from media.pipeline.vad import VadSettings

__all__ = [
    "MIXED",
    "AudioProcessor",
    "DominantSpeakerChanged",
    "EchoProcessor",
    "HotLoop",
    "PipelineEvent",
    "PlayerLow",
    "Processor",
    "ProcessorContext",
    "ProcessorDisabled",
    "RecorderFailed",
    "Recording",
    "SpeechStarted",
    "SpeechStopped",
    "VadSettings",
    "VideoProcessor",
]
