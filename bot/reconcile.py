"""Recovering what lost notifications would have said, by reading it back from Graph.

Graph posts a call's notifications once, with no ordering or delivery promise, and a
notification the webhook refused (401: an expired or unknown-key token) is not sent again. Two
things are read back instead:

- a call's state: after a request that Graph answers with a state notification (a join or an
  answer: `established`; a hang-up: `terminated`), if that state has not arrived within a grace
  period, GET /communications/calls/{id} (https://learn.microsoft.com/en-us/graph/api/call-get);
  404 means the call is gone, and it is ended here as a `deleted` notification would have ended
  it. Retried with backoff while the call stays short of the state, a bounded number of times;
- a delta roster with a gap in its `sequenceNumber`
  (https://learn.microsoft.com/en-us/graph/api/resources/deltaparticipants), or a call that was
  found `established` by a read (its first roster was probably lost too): GET
  /communications/calls/{id}/participants
  (https://learn.microsoft.com/en-us/graph/api/participant-list), merged by Roster.resync.

Timers and reads live here, off the webhook's path and off the call's event worker; at most one
timer, one state read and one roster read per call, all gone when the call ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from bot.call import STATE_ORDER, Call
from bot.errors import GraphError

logger = logging.getLogger(__name__)

MAX_STATE_READS = 5  # grace, then 2x, 4x, 8x, 16x the grace: then give up (and say so)


class Owner(Protocol):
    """What the reconciler hands its findings to (the CallCollection)."""

    def call_read(self, call: Call, resource: dict[str, Any]) -> None: ...

    def call_gone(self, call: Call) -> None: ...

    def roster_read(self, call: Call, entries: list[dict[str, Any]]) -> None: ...


def reached(call: Call, state: str) -> bool:
    return call.state == "terminated" or STATE_ORDER.get(call.state, 0) >= STATE_ORDER[state]


class Reconciler:
    def __init__(self, owner: Owner, grace_seconds: float) -> None:
        """grace_seconds: how long a state may be late before the call is read; 0 turns state
        reads off (roster resyncs after a gap still happen)."""
        self._owner = owner
        self.grace_seconds = grace_seconds
        self._expected: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._state_reads: dict[str, asyncio.Task[None]] = {}
        self._roster_reads: dict[str, asyncio.Task[None]] = {}
        self._roster_again: set[str] = set()
        self.state_reads = 0
        self.roster_reads = 0

    # -- call state -----------------------------------------------------------------------------

    def expect(self, call: Call, state: str) -> None:
        """`state` should be notified soon; read the call if it is not, after the grace."""
        if self.grace_seconds <= 0 or state not in STATE_ORDER or reached(call, state):
            return
        self._expected[call.id] = state
        self._arm(call, 0)

    def _arm(self, call: Call, attempt: int) -> None:
        old = self._timers.pop(call.id, None)
        if old is not None:
            old.cancel()
        delay = self.grace_seconds * (2**attempt)
        self._timers[call.id] = asyncio.get_running_loop().call_later(
            delay, self._due, call, attempt
        )

    def _due(self, call: Call, attempt: int) -> None:
        self._timers.pop(call.id, None)
        state = self._expected.get(call.id)
        if state is None or reached(call, state):
            self._expected.pop(call.id, None)
            return
        if call.id in self._state_reads:
            return
        logger.info(
            "Call(%s) still %s, expected %s: reading the call back (read %d)",
            call.id,
            call.state,
            state,
            attempt + 1,
            extra={"call_id": call.id},
        )
        self._spawn(self._state_reads, call.id, self._read_call(call, state, attempt))

    async def _read_call(self, call: Call, state: str, attempt: int) -> None:
        self.state_reads += 1
        try:
            resource = await call.request("GET")
        except GraphError as exc:
            if exc.status == 404:
                logger.warning(
                    "Call(%s) is gone from Graph (404): ending it",
                    call.id,
                    extra={"call_id": call.id},
                )
                self._owner.call_gone(call)
                return
            logger.warning(
                "Call(%s) could not be read back: %s", call.id, exc, extra={"call_id": call.id}
            )
        else:
            self._owner.call_read(call, resource)
        if reached(call, state):
            self._expected.pop(call.id, None)
            logger.info("Call(%s) reconciled: %s", call.id, call.state, extra={"call_id": call.id})
        elif attempt + 1 < MAX_STATE_READS:
            self._arm(call, attempt + 1)
        else:
            self._expected.pop(call.id, None)
            logger.warning(
                "Call(%s) still %s after %d reads; no longer waiting for %s",
                call.id,
                call.state,
                MAX_STATE_READS,
                state,
                extra={"call_id": call.id},
            )

    # -- roster ---------------------------------------------------------------------------------

    def resync_roster(self, call: Call) -> None:
        """Read the whole roster back; one read at a time per call, and one more if asked again
        while it runs (the read may have been served before the change that asked)."""
        if call.context is None:
            logger.info(
                "Call(%s) roster resync skipped: not attached to a bot",
                call.id,
                extra={"call_id": call.id},
            )
            call.roster.resync_wanted = False
            return
        if call.id in self._roster_reads:
            self._roster_again.add(call.id)
            return
        self._spawn(self._roster_reads, call.id, self._read_roster(call))

    async def _read_roster(self, call: Call) -> None:
        while True:
            self._roster_again.discard(call.id)
            self.roster_reads += 1
            try:
                body = await call.request("GET", "/participants")
            except GraphError as exc:
                logger.warning(
                    "Call(%s) roster could not be read back: %s",
                    call.id,
                    exc,
                    extra={"call_id": call.id},
                )
                return
            entries = body.get("value")
            if not isinstance(entries, list):
                logger.warning(
                    "Call(%s) roster read back without a value array",
                    call.id,
                    extra={"call_id": call.id},
                )
                return
            self._owner.roster_read(call, [e for e in entries if isinstance(e, dict)])
            if call.id not in self._roster_again or call.state == "terminated":
                return

    # -- lifetime -------------------------------------------------------------------------------

    def pending(self, call_id: str | None = None) -> int:
        """Timers and reads outstanding, for one call or all (0 once the calls have ended)."""
        reads = [
            task
            for tasks in (self._state_reads, self._roster_reads)
            for cid, task in tasks.items()
            if call_id is None or cid == call_id
        ]
        timers = sum(call_id is None or cid == call_id for cid in self._timers)
        return timers + sum(not task.done() for task in reads)

    def _spawn(
        self,
        tasks: dict[str, asyncio.Task[None]],
        call_id: str,
        coro: Coroutine[Any, Any, None],
    ) -> None:
        task = asyncio.create_task(coro, name=f"reconcile:{call_id}")
        tasks[call_id] = task
        task.add_done_callback(lambda t: _discard(tasks, call_id, t))

    def forget(self, call_id: str) -> None:
        """The call ended: no more timers or reads for it (a read in flight is cancelled unless
        it is the one ending the call)."""
        self._expected.pop(call_id, None)
        self._roster_again.discard(call_id)
        timer = self._timers.pop(call_id, None)
        if timer is not None:
            timer.cancel()
        current = asyncio.current_task()
        for tasks in (self._state_reads, self._roster_reads):
            task = tasks.get(call_id)
            if task is not None and task is not current:
                task.cancel()

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._expected.clear()
        tasks = [*self._state_reads.values(), *self._roster_reads.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _discard(tasks: dict[str, asyncio.Task[None]], call_id: str, task: asyncio.Task[None]) -> None:
    if tasks.get(call_id) is task:
        del tasks[call_id]
