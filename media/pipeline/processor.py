"""The processor contract: small, typed, sync (DESIGN.md section 5)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from media.frames import AudioFrame


@runtime_checkable
class AudioProcessor(Protocol):
    """Runs on the hot loop once per received frame, in order.

    process() returns the frame to send back into the call, or None to send nothing. It must not
    block, await or do I/O: it has a share of a 20 ms tick. A processor that raises is counted
    and, after repeated failures, disabled (the loop carries on).
    """

    name: str

    def process(self, frame: AudioFrame) -> AudioFrame | None: ...
