"""Echo: what the bot hears, it says back."""

from __future__ import annotations

from media.frames import AudioFrame
from media.pipeline.processor import ProcessorContext


class EchoProcessor:
    name = "echo"

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        return frame


def echo_factory(context: ProcessorContext) -> EchoProcessor:
    """Says back what it hears: the participants hear the bot (the demo's round trip)."""
    return EchoProcessor()
