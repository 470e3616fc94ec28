"""Pipeline events for the control path, batched per tick.

The hot loop collects what happened during a tick and hands the batch to its sink once. Other
pipeline threads (the recording writer, the transcription worker) hand over batches of one. A
sink must be thread-safe and cheap: the bot's sink schedules the batch onto its control loop.

All times are 100 ns ticks (media/clock.py TICKS_PER_SECOND) on the frames' time base: the
sender's capture time where the frame carries one, the platform clock otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIXED = -1  # the "MSI" of the mixed stream's own VAD track (no speaker attribution)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    session_id: str
    msi: int  # the speaker; MIXED for the mixed stream as a whole
    start: int  # first voiced frame's start, back-dated over the start hysteresis


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """One speech segment: [start, end) of a speaker's utterance."""

    session_id: str
    msi: int
    start: int
    end: int  # end of the last voiced frame (the stop hysteresis is not counted)

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / 10_000_000


@dataclass(frozen=True, slots=True)
class DominantSpeakerChanged:
    session_id: str
    msi: int | None  # None: nobody has been speaking for a while
    at: int


@dataclass(frozen=True, slots=True)
class ProcessorDisabled:
    session_id: str
    processor: str
    reason: str  # "raised" or "slow"
    detail: str


@dataclass(frozen=True, slots=True)
class PlayerLow:
    """The outgoing player has less than its low-water mark queued (the frame player's
    LowOnFrames in the Windows library): queue more now to keep talking without a gap."""

    session_id: str
    queued_ms: int


@dataclass(frozen=True, slots=True)
class RecorderFailed:
    """A recorder stopped writing (disk full, permissions...). The bot sets the call's
    recording status to `failed` (https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus)."""

    session_id: str
    recorder: str
    detail: str


PipelineEvent = (
    SpeechStarted
    | SpeechStopped
    | DominantSpeakerChanged
    | ProcessorDisabled
    | PlayerLow
    | RecorderFailed
)

EventSink = Callable[[Sequence[PipelineEvent]], None]


def no_sink(events: Sequence[PipelineEvent]) -> None:
    """The default sink: events are dropped (a pipeline used without a control path)."""


def frame_time(timestamp: int, original_sender_timestamp: int) -> int:
    """The time base of pipeline events: the sender's capture time when the frame carries one
    (it survives jitter and loss), else the platform clock's timestamp."""
    return original_sender_timestamp or timestamp
