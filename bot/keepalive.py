"""Keep-alive: Graph ends a call that sees no request from the bot for 45 minutes
(https://learn.microsoft.com/en-us/graph/api/call-keepalive). The .NET samples send one every
10 minutes; so do we, per established call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bot.call import Call
from bot.errors import GraphError

logger = logging.getLogger(__name__)

KEEPALIVE_INTERVAL_SECONDS = 600.0
Sleep = Callable[[float], Awaitable[None]]


class KeepAlive:
    def __init__(
        self,
        interval_seconds: float = KEEPALIVE_INTERVAL_SECONDS,
        sleep: Sleep = asyncio.sleep,
        on_gone: Callable[[Call], None] | None = None,
    ) -> None:
        """on_gone: what to do with a call Graph no longer knows (the bot ends it properly)."""
        self.interval_seconds = interval_seconds
        self._sleep = sleep
        self.on_gone = on_gone
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.sent = 0
        self.failed = 0

    def start(self, call: Call) -> None:
        if call.id not in self._tasks:
            task = asyncio.create_task(self._run(call), name=f"keepalive:{call.id}")
            self._tasks[call.id] = task
            task.add_done_callback(lambda _: self._tasks.pop(call.id, None))

    def stop(self, call_id: str) -> None:
        task = self._tasks.pop(call_id, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, call: Call) -> None:
        while call.state != "terminated":
            await self._sleep(self.interval_seconds)
            if call.state == "terminated":
                return
            try:
                await call.keep_alive()
                self.sent += 1
            except GraphError as exc:
                self.failed += 1
                if exc.status == 404:
                    # Graph no longer knows the call: it ended without telling us.
                    logger.warning("Call(%s) keep-alive got 404: treating it as ended", call.id)
                    if self.on_gone is not None:
                        self.on_gone(call)
                    else:
                        call.apply_state("terminated")
                    return
                logger.warning("Call(%s) keep-alive failed: %s", call.id, exc)
