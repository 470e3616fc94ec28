"""Event handlers for user code: registered by name, run sequentially per call, isolated.

A handler may be a plain function or a coroutine function. It runs on the call's dispatch
worker, never on the webhook's request path; one that raises is logged and the next runs.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

CALL_EVENTS = (
    "state",
    "participants",
    "tone",
    "operation",
    "terminated",
    "content_sharing",
    "lobby",  # call, participant, in_lobby: a participant entered or left the lobby
    "participant_recording",  # call, participant, recordingInfo: its recording status changed
    "screen_sharing",  # call, participant or None: who shares the screen (VBSS) changed
    "large_gallery",  # call, participant or None: the large-gallery participant came or went
    "media_state",  # call, mediaState: the call's callMediaState changed
    "media",  # MediaProcessorError: the media processor sent an `error` message
    "speech",  # bot/pipeline.py: SpeechStarted, SpeechStopped, DominantSpeakerChanged
    "pipeline",  # ProcessorDisabled, PlayerLow, RecorderFailed
)
Handler = Callable[..., Any]


class EventHandlers:
    def __init__(self, names: tuple[str, ...] = CALL_EVENTS) -> None:
        self._handlers: dict[str, list[Handler]] = {name: [] for name in names}
        self.failures = 0

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler; usable as `events.on("tone", fn)` or as `@events.on("tone")`."""
        if name not in self._handlers:
            raise ValueError(f"unknown event {name!r}; one of {', '.join(self._handlers)}")
        if handler is None:
            return lambda fn: self.on(name, fn)
        self._handlers[name].append(handler)
        return handler

    def has(self, name: str) -> bool:
        return bool(self._handlers.get(name))

    async def emit(self, name: str, *args: Any) -> None:
        for handler in list(self._handlers.get(name, ())):
            try:
                result = handler(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.failures += 1
                logger.exception("event handler %r for %s failed", handler, name)
