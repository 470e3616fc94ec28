"""AudioSocket: receive and send 20 ms 16 kHz PCM16 frames, like IAudioSocket in
https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html
"""

from __future__ import annotations

from media.frames import AudioFrame
from media.ring import Ring

# 16 frames = 320 ms: deep enough to ride out a hot-loop hiccup, shallow enough that a stalled
# consumer cannot build standing delay beyond it (older frames are dropped and counted).
RING_FRAMES = 16


class AudioSocket:
    """The bot-facing end of a call's audio.

    The media loop pushes received frames into `receive_ring`; the hot loop drains it, and what
    the bot says goes through send() into `send_ring`, which the media loop's send track reads.
    """

    def __init__(self, capacity: int = RING_FRAMES) -> None:
        self.receive_ring: Ring[AudioFrame] = Ring(capacity)
        self.send_ring: Ring[AudioFrame] = Ring(capacity)

    def receive(self) -> list[AudioFrame]:
        """Everything received since the last call, oldest first."""
        return self.receive_ring.drain()

    def send(self, frame: AudioFrame) -> None:
        self.send_ring.push(frame)

    @property
    def stats(self) -> dict[str, int]:
        return {
            "received": self.receive_ring.pushed,
            "receive_dropped": self.receive_ring.dropped,
            "sent": self.send_ring.pushed,
            "send_dropped": self.send_ring.dropped,
        }
