"""Recording a call: its recording processors, and Graph's recording status set around them
(https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from bot.call import Call
from bot.errors import GraphError
from media import MediaPlatform
from media.clock import to_ticks
from media.pipeline.processor import Recording

# The Bot's logger: these lines were, and still are, the bot's (BOT_LOG_LEVELS names bot.app).
logger = logging.getLogger("bot.app")

Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class CallRecording:
    """Starts and stops a call's recorders, with the status Graph shows the participants."""

    def __init__(self, media: MediaPlatform, admitting: Callable[[], bool], spawn: Spawn) -> None:
        """`admitting` says whether the bot still takes calls (False once stop() began);
        `spawn` runs a background coroutine the bot awaits at stop."""
        self._media = media
        self._admitting = admitting
        self._spawn = spawn

    def recorders(self, call: Call) -> list[Recording]:
        """The call's recording processors (media/pipeline/processor.py Recording)."""
        if call.media_session_id is None:
            return []
        return [
            p for p in self._media.processors(call.media_session_id) if isinstance(p, Recording)
        ]

    async def start_recording(self, call: Call) -> None:
        """Set the call's recording status to `recording` through Graph, and only once Graph
        has acknowledged it start the call's recorders. Raises GraphError (nothing is
        recorded), ValueError when the call has no recorder."""
        recorders = self.recorders(call)
        if not recorders:
            raise ValueError(f"call {call.id} has no recording processor")
        operation = await call.update_recording_status("recording")
        logger.info(
            "Call(%s) recording status recording requested", call.id, extra={"call_id": call.id}
        )
        await operation.wait()
        if call.state in ("terminating", "terminated") or not self._admitting():
            # The call is ending (hung up, transferred, the bot stopping) while Graph
            # acknowledged: nothing is recorded on a session that is closing.
            logger.info(
                "Call(%s) recording status acknowledged as the call ends: not started",
                call.id,
                extra={"call_id": call.id},
            )
            return
        call.speech.recording_status = "recording"
        # Audio that arrived before the acknowledgement and still waits in a ring is not kept.
        acknowledged = to_ticks(self._media.clock.now())
        for recorder in recorders:
            recorder.start(not_before=acknowledged)
        logger.info(
            "Call(%s) recording status recording acknowledged: %s started",
            call.id,
            ", ".join(r.name for r in recorders),
            extra={"call_id": call.id},
        )
        call.changed()

    async def stop_recording(self, call: Call, status: str = "notRecording") -> None:
        """Stop the call's recorders, then tell Graph (`notRecording`, or `failed` when a
        recorder broke). A call Graph has already ended needs no status."""
        for recorder in self.recorders(call):
            recorder.stop()
        if call.speech.recording_status == status or call.state in ("terminating", "terminated"):
            return
        try:
            operation = await call.update_recording_status(
                "failed" if status == "failed" else "notRecording"
            )
            logger.info(
                "Call(%s) recording status %s requested",
                call.id,
                status,
                extra={"call_id": call.id},
            )
            await operation.wait()
            call.speech.recording_status = status
            logger.info(
                "Call(%s) recording status %s acknowledged",
                call.id,
                status,
                extra={"call_id": call.id},
            )
            call.changed()
        except (GraphError, TimeoutError) as exc:
            logger.warning(
                "Call(%s) recording status %s not set: %s",
                call.id,
                status,
                exc,
                extra={"call_id": call.id},
            )

    def established(self, call: Call, record_on_join: bool) -> None:
        """The call is up: with record_on_join (BOT_RECORD_ON_JOIN), start its recorders."""
        if record_on_join and self.recorders(call):
            self._spawn(self._record_on_join(call), f"record:{call.id}")

    async def _record_on_join(self, call: Call) -> None:
        try:
            await self.start_recording(call)
        except (GraphError, TimeoutError, ValueError) as exc:
            logger.warning(
                "Call(%s) recording not started: %s", call.id, exc, extra={"call_id": call.id}
            )

    async def before_hang_up(self, call: Call) -> None:
        """The bot is leaving: recorders stop and the status says so while Graph still knows
        the call (https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus)."""
        if call.speech.recording_status == "recording":
            await self.stop_recording(call)

    def failed(self, call: Call) -> None:
        """A recorder broke: the rest stop and Graph's status says `failed`."""
        self._spawn(self.stop_recording(call, "failed"), f"record-failed:{call.id}")

    def terminated(self, call: Call) -> None:
        """Graph ended the call: nothing more is recorded."""
        for recorder in self.recorders(call):
            recorder.stop()
