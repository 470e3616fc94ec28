"""The media processor link's value types: the error it raises, one dominantSpeaker change it
sent, and how it vanished (emulator/mediaprocessor.py re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass


class MediaProcessorError(Exception):
    """The bot's media endpoint could not be reached or refused us (Graph's 7112 case)."""


@dataclass(frozen=True, slots=True)
class DominantChange:
    """One dominantSpeaker message the MP sent."""

    time: float  # time.monotonic()
    msi: int  # NO_SPEAKER (4294967295): nobody
    history: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Vanishing:
    """How the MP vanished, for Graph's side (emulator/calls.py): whether and after how many
    seconds of Graph time Graph notices and ends the call."""

    graph_ends_call: bool = True
    detection_seconds: float | None = None  # None: Graph's usual delay (calls.py)
