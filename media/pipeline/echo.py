"""Echo: what the bot hears, it says back."""

from __future__ import annotations

from media.frames import AudioFrame


class EchoProcessor:
    name = "echo"

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        return frame
