"""The processing pipeline: processors over numpy frames, run by the hot loop."""

from media.pipeline.echo import EchoProcessor
from media.pipeline.hotloop import HotLoop
from media.pipeline.processor import AudioProcessor

__all__ = ["AudioProcessor", "EchoProcessor", "HotLoop"]
