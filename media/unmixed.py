"""Unmixed meeting audio: up to four speaker streams gathered into one frame per 20 ms.

The media processor puts each of the (at most four) loudest speakers on a stream of its own,
tagged with the speaker's MSI (docs/media-protocol.md, Audio). The Windows library hands the bot
one AudioMediaBuffer per 20 ms whose UnmixedAudioBuffers hold those speakers
(AudioMediaBuffer in the media library reference,
https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html); this
assembler does the same from streams that each arrive at their own moment.

A frame goes out as soon as every stream that is currently live has delivered its next buffer,
or when the oldest waiting buffer has waited HOLD_SECONDS (a stream that just went quiet must
not hold the others). Pure: every call takes `now`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from media.clock import to_ticks
from media.frames import AudioFrame, UnmixedAudioBuffer

MAX_STREAMS = 4
HOLD_SECONDS = 0.015  # under one frame: the streams come from one mixer tick
LIVE_SECONDS = 0.060  # a stream that delivered within this long is expected again
MAX_PENDING = 8  # per stream; more means the consumer side stalled: drop oldest, counted


class UnmixedAssembler:
    def __init__(self, streams: int = MAX_STREAMS) -> None:
        if not 1 <= streams <= MAX_STREAMS:
            raise ValueError(f"unmixed audio has 1 to {MAX_STREAMS} streams")
        self._pending: list[deque[tuple[float, UnmixedAudioBuffer]]] = [
            deque() for _ in range(streams)
        ]
        self._last: list[float | None] = [None] * streams
        self._sequence = 0
        self.dropped = 0

    @property
    def deadline(self) -> float | None:
        """When expire() must run (a buffer is waiting for the other streams), or None."""
        oldest = [q[0][0] for q in self._pending if q]
        return min(oldest) + HOLD_SECONDS if oldest else None

    def add(self, stream: int, buffer: UnmixedAudioBuffer, now: float) -> list[AudioFrame]:
        queue = self._pending[stream]
        if len(queue) >= MAX_PENDING:
            queue.popleft()
            self.dropped += 1
        queue.append((now, buffer))
        self._last[stream] = now
        out: list[AudioFrame] = []
        while self._complete(now):
            out.append(self._take(now))
        return out

    def expire(self, now: float) -> list[AudioFrame]:
        out: list[AudioFrame] = []
        while (deadline := self.deadline) is not None and now >= deadline:
            out.append(self._take(now))
        return out

    def _complete(self, now: float) -> bool:
        live = [
            i
            for i, last in enumerate(self._last)
            if last is not None and now - last <= LIVE_SECONDS
        ]
        return bool(live) and all(self._pending[i] for i in live)

    def _take(self, now: float) -> AudioFrame:
        buffers = [q.popleft()[1] for q in self._pending if q]
        mixed = np.sum([b.pcm.astype(np.int32) for b in buffers], axis=0)
        self._sequence += 1
        return AudioFrame(
            pcm=np.clip(mixed, -32768, 32767).astype(np.int16),
            timestamp=to_ticks(now),
            active_speakers=tuple(b.msi for b in buffers),
            is_silence=False,
            sequence=self._sequence,
            unmixed=tuple(buffers),
            original_sender_timestamp=min(
                (b.original_sender_timestamp for b in buffers if b.original_sender_timestamp),
                default=0,
            ),
        )


class StreamSink:
    """An unmixed stream's receiver output: each frame becomes that speaker's buffer.

    A frame without exactly one CSRC is not a speaker's (the MP sends one MSI per unmixed
    packet); it is dropped and counted rather than attributed to nobody.
    """

    def __init__(self, stream: int, deliver: Callable[[int, UnmixedAudioBuffer], None]) -> None:
        self._stream = stream
        self._deliver = deliver
        self.untagged = 0

    def push(self, item: AudioFrame) -> None:
        if len(item.active_speakers) != 1:
            self.untagged += 1
            return
        self._deliver(
            self._stream,
            UnmixedAudioBuffer(item.active_speakers[0], item.pcm, item.original_sender_timestamp),
        )
