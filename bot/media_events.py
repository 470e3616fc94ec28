"""The media platform's session events on the control loop: a bounded history, waiters for the
next matching event, the media processor's `error` messages as the call's `media` event, and the
media-lost watch that ends a call whose media is gone."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from bot.call import Call
from bot.calls import CallCollection
from bot.errors import GraphError
from media.events import MediaProcessorError
from media.session import MediaEvent

# The Bot's logger: these lines were, and still are, the bot's (BOT_LOG_LEVELS names bot.app).
logger = logging.getLogger("bot.app")


class MediaEvents:
    """Media-session events as the bot sees them, on the control loop only."""

    def __init__(
        self,
        calls: CallCollection,
        stopping: Callable[[], bool],
        media_lost_timeout_seconds: float,
        history: int,
    ) -> None:
        """`stopping` says whether the bot is shutting down (sessions closed then are not
        media lost); `history` bounds the recent events kept (a service runs long)."""
        self._calls = calls
        self._stopping = stopping
        self._lost_timeout = media_lost_timeout_seconds
        self.history: deque[MediaEvent] = deque(maxlen=history)
        self._waiters: list[tuple[Callable[[MediaEvent], bool], asyncio.Future[MediaEvent]]] = []
        self._lost: dict[str, asyncio.Task[None]] = {}  # call id -> its media-lost watch

    def on_event(self, event: MediaEvent) -> None:
        self.history.append(event)
        if event.kind in ("failed", "closed"):
            self._media_ended(event)
        elif isinstance(event.data, MediaProcessorError):
            self._mp_error(event.data)
        waiters, self._waiters = self._waiters, []
        for predicate, future in waiters:
            if future.done():
                continue
            try:
                matched = predicate(event)
            except Exception as exc:  # the caller's predicate: its error is the caller's
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(event)
            else:
                self._waiters.append((predicate, future))

    async def wait(
        self, predicate: Callable[[MediaEvent], bool], within_seconds: float
    ) -> MediaEvent:
        """The next media event that matches, from now on. Raises TimeoutError."""
        future: asyncio.Future[MediaEvent] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            return await asyncio.wait_for(future, within_seconds)
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not future]

    def terminated(self, call_id: str) -> None:
        """Graph ended the call: its media-lost watch (unless that is what ended it) stops."""
        watch = self._lost.pop(call_id, None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()

    async def close(self) -> None:
        """Cancel every media-lost watch and wait for them to finish."""
        watches = list(self._lost.values())
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)

    def _mp_error(self, error: MediaProcessorError) -> None:
        """The media processor refused something the bot sent (docs/media-protocol.md, Errors):
        the call's handlers hear it as `media`, as the event alone (like `speech`)."""
        call = self._call_on(error.session_id)
        if call is None:
            return
        logger.warning(
            "Call(%s) media processor error %s: %s",
            call.id,
            error.code,
            error.message,
            extra={"call_id": call.id},
        )
        self._calls.dispatch(call, "media", error)

    def _call_on(self, session_id: str) -> Call | None:
        return next(
            (c for c in self._calls.calls.values() if c.media_session_id == session_id), None
        )

    def _media_ended(self, event: MediaEvent) -> None:
        """A call's media session failed or closed while the call goes on: its media
        processor vanished, or said bye just before Graph's `terminating`. Graph normally ends
        the call (the media-lost watch ends with it); if it does not, the watch hangs up."""
        call = self._call_on(event.session_id)
        if self._stopping() or call is None or call.state in ("terminating", "terminated"):
            return
        if event.kind == "failed":
            call.media_lost = event.detail or "media failed"
            logger.warning(
                "Call(%s) media lost: %s", call.id, call.media_lost, extra={"call_id": call.id}
            )
        if call.id not in self._lost:
            watch = asyncio.create_task(self._watch_media_lost(call), name=f"media-lost:{call.id}")
            self._lost[call.id] = watch
            watch.add_done_callback(lambda _: self._lost.pop(call.id, None))

    async def _watch_media_lost(self, call: Call) -> None:
        """Give Graph media_lost_timeout_seconds to end a call whose media is gone, then hang
        up; if Graph no longer knows the call (404) or never confirms, end it here."""
        timeout = self._lost_timeout
        try:
            await call.wait_for("terminated", timeout)
            return
        except TimeoutError:
            pass
        logger.warning(
            "Call(%s) media gone for %.1f s and Graph has not ended the call: hanging up",
            call.id,
            timeout,
            extra={"call_id": call.id},
        )
        try:
            await call.hang_up()
        except GraphError as exc:
            # 404: Graph ended it and its notification was lost. Anything else: a call with no
            # media is of no use, so it ends here either way (Graph's 45-minute inactivity
            # rule ends its side once keep-alives stop,
            # https://learn.microsoft.com/en-us/graph/api/call-keepalive).
            logger.warning(
                "Call(%s) hang-up after media loss failed: %s",
                call.id,
                exc,
                extra={"call_id": call.id},
            )
            self._calls.end(call)
            return
        try:
            await call.wait_for("terminated", timeout)
        except TimeoutError:
            self._calls.end(call)  # the DELETE was accepted; its notification never came
