"""The bot's side of the processing pipeline (media/pipeline/): who is speaking in each call,
its speech segments, and the recording-status workflow.

Pipeline events arrive from the hot loop once per tick as a batch, are applied to the call's
CallSpeech on the control loop, and go to user handlers as the call events "speech"
(SpeechStarted, SpeechStopped, DominantSpeakerChanged) and "pipeline" (ProcessorDisabled,
PlayerLow, RecorderFailed), through the call's dispatch worker like every other call event.

Recording (https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus): no media may be
recorded "without first calling the updateRecordingStatus API to indicate that recording has
begun, and receiving a success reply", and the status must stay true. A recording processor is
therefore idle until Graph has acknowledged `recording`; it is stopped, and the status set to
`notRecording`, before the bot hangs up; and if it breaks the status goes to `failed`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from media.pipeline.events import (
    MIXED,
    DominantSpeakerChanged,
    PipelineEvent,
    ProcessorDisabled,
    RecorderFailed,
    SpeechStarted,
    SpeechStopped,
)

logger = logging.getLogger(__name__)

SEGMENT_HISTORY = 2000  # per call: about an hour of turn-taking; older segments are dropped
SPEECH_EVENTS = (SpeechStarted, SpeechStopped, DominantSpeakerChanged)


@dataclass
class CallSpeech:
    """A call's pipeline view, kept on the control loop."""

    speaking: set[int] = field(default_factory=set)  # MSIs in a speech segment now
    dominant: int | None = None
    segments: deque[SpeechStopped] = field(default_factory=lambda: deque(maxlen=SEGMENT_HISTORY))
    disabled: list[ProcessorDisabled] = field(default_factory=list)
    recording_status: str = "notRecording"  # as last acknowledged by Graph
    failures: list[str] = field(default_factory=list)  # recorder failures, for status
    # Every MSI -> display name the roster showed while someone spoke (names outlive leaving).
    names: dict[int, str] = field(default_factory=dict)

    def apply(self, event: PipelineEvent) -> None:
        if isinstance(event, SpeechStarted):
            if event.msi != MIXED:
                self.speaking.add(event.msi)
        elif isinstance(event, SpeechStopped):
            if event.msi != MIXED:
                self.speaking.discard(event.msi)
            self.segments.append(event)
        elif isinstance(event, DominantSpeakerChanged):
            self.dominant = event.msi
        elif isinstance(event, ProcessorDisabled):
            self.disabled.append(event)
        elif isinstance(event, RecorderFailed):
            self.failures.append(f"{event.recorder}: {event.detail}")

    def segments_by_msi(self) -> dict[int, list[SpeechStopped]]:
        out: dict[int, list[SpeechStopped]] = {}
        for segment in self.segments:
            out.setdefault(segment.msi, []).append(segment)
        return out


def log_event(call_id: str, event: PipelineEvent) -> None:
    """A line for the pipeline events an operator acts on: a processor disabled, a recorder
    failed. Speech events and PlayerLow come many a minute and are not logged."""
    if isinstance(event, ProcessorDisabled):
        logger.warning(
            "Call(%s) processor %s disabled (%s): %s",
            call_id,
            event.processor,
            event.reason,
            event.detail,
            extra={"call_id": call_id},
        )
    elif isinstance(event, RecorderFailed):
        logger.warning(
            "Call(%s) recorder %s failed: %s",
            call_id,
            event.recorder,
            event.detail,
            extra={"call_id": call_id},
        )


def event_name(event: PipelineEvent) -> str:
    """The call event a pipeline event is dispatched as."""
    return "speech" if isinstance(event, SPEECH_EVENTS) else "pipeline"


def by_session(events: Sequence[PipelineEvent]) -> dict[str, list[PipelineEvent]]:
    grouped: dict[str, list[PipelineEvent]] = {}
    for event in events:
        grouped.setdefault(event.session_id, []).append(event)
    return grouped
