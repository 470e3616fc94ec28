"""Notifications for call ids the bot does not know, and what the bot does about those calls.

Graph's first notifications for a call the bot places can arrive before its answer to the
POST that created it, so every notification for an unknown id is first held: a bounded,
expiring record (at most `HELD_NOTIFICATIONS`, `HELD_BYTES` of JSON in all, `HELD_SECONDS`
each; past that the oldest go first, counted), applied in order when the POST's answer names
the call (`take`). Held notifications start nothing: no worker, no keep-alive, no read back.

Once no POST of the bot's is in flight, an id still unknown is a call the bot never created or
answered, and `BOT_UNKNOWN_CALLS` decides:

- `ignore` (the default): log it once; its notifications stay only in the bounded record and
  expire. After a restart the calls of the previous process are left to Graph: they end when
  their keep-alive lapses (45 minutes) or when the other side hangs up.
- `adopt`: track it as a call (at most `ADOPTED_CALLS` at once), from the held notifications
  on: state, roster and events, keep-alive, hang-up. What a restarted instance behind the same
  callback URL needs to take its calls back; their media does not come back (the media
  session died with the process), so an adopted call has no media until it is rejoined.
- `hangup`: `DELETE /communications/calls/{id}` once (https://learn.microsoft.com/en-us/graph/api/call-delete),
  so a lost pod's calls do not stay up with nobody handling them.

An incoming call (its `created` notification with state `incoming`) is always handled as
incoming, whatever the policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from bot.notifications import Notification

logger = logging.getLogger("bot.calls")

UnknownCallPolicy = Literal["ignore", "adopt", "hangup"]
UNKNOWN_CALL_POLICIES: tuple[UnknownCallPolicy, ...] = ("ignore", "adopt", "hangup")
# Graph's answer to the POST that created a call comes well within this after its first
# notification.
HELD_SECONDS = 30.0
HELD_NOTIFICATIONS = 256
HELD_BYTES = 4 * 1024 * 1024
ADOPTED_CALLS = 256  # adopted calls alive at once; more are ignored (counted)
DECIDED_MEMORY = 4096  # unknown ids already decided on (logged, adopted or hung up)


@dataclass(frozen=True, slots=True)
class Held:
    """A notification for a call id not known (yet), as received."""

    call_id: str
    at: float
    item: dict[str, Any]
    note: Notification
    size: int


class UnknownCalls:
    def __init__(
        self,
        policy: UnknownCallPolicy = "ignore",
        adopt: Callable[[str], bool] | None = None,
        hang_up: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """adopt(call_id): make the call known (False when it cannot); hang_up(call_id): the
        DELETE. clock: what times held notifications (default: the running loop's time)."""
        if policy not in UNKNOWN_CALL_POLICIES:
            raise ValueError(f"unknown-call policy is one of {', '.join(UNKNOWN_CALL_POLICIES)}")
        self.policy = policy
        self._adopt = adopt
        self._hang_up = hang_up
        self.clock: Callable[[], float] | None = None
        self._held: deque[Held] = deque()
        self._held_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._creating = 0
        self._decided: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.held = 0  # notifications held for a call id not known when they came
        self.applied = 0  # ... applied when the bot learned the call
        self.expired = 0  # ... forgotten after HELD_SECONDS
        self.dropped = 0  # ... forgotten to stay within HELD_NOTIFICATIONS / HELD_BYTES
        self.ignored_calls = 0  # unknown calls logged and left alone
        self.adopted = 0
        self.adopt_refused = 0  # adopt wanted, ADOPTED_CALLS reached: ignored
        self.hung_up = 0  # DELETEs sent
        self.hang_up_failed = 0

    @property
    def held_now(self) -> int:
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    # -- the bot's own creates -----------------------------------------------------------------

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Around the bot's POST /communications/calls: while one is in flight, an unknown id
        may be its call, so nothing is decided about it."""
        self._creating += 1
        try:
            yield
        finally:
            self._creating -= 1
            if not self._creating:
                self._decide_held()

    # -- held notifications --------------------------------------------------------------------

    def hold(self, note: Notification, item: dict[str, Any]) -> None:
        now = self.now()
        self.expire(now)
        self.held += 1
        size = len(json.dumps(item))
        logger.debug("Call(%s) not known: notification held", note.call_id)
        self._held.append(Held(note.call_id, now, item, note, size))
        self._held_bytes += size
        while self._held and (
            len(self._held) > HELD_NOTIFICATIONS or self._held_bytes > HELD_BYTES
        ):
            self._held_bytes -= self._held.popleft().size
            self.dropped += 1
        self._arm(now)
        if not self._creating:
            self._decide(note.call_id)

    def take(self, call_id: str) -> list[Held]:
        """The notifications held for a call the bot now knows, oldest first."""
        self.expire()
        mine = [h for h in self._held if h.call_id == call_id]
        if mine:
            self._held = deque(h for h in self._held if h.call_id != call_id)
            self._held_bytes = sum(h.size for h in self._held)
        return mine

    def expire(self, now: float | None = None) -> None:
        """Forget held notifications older than HELD_SECONDS (also done on a timer)."""
        now = self.now() if now is None else now
        expired = 0
        while self._held and now - self._held[0].at >= HELD_SECONDS:
            self._held_bytes -= self._held.popleft().size
            expired += 1
        if expired:
            self.expired += expired
            logger.info(
                "Calls x %d notification(s) for calls the bot never learned expired (%d in all)",
                expired,
                self.expired,
            )

    def _arm(self, now: float) -> None:
        if self._timer is not None or not self._held:
            return
        delay = max(0.0, self._held[0].at + HELD_SECONDS - now)
        self._timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        now = self.now()
        self.expire(now)
        self._arm(now)

    # -- the policy ----------------------------------------------------------------------------

    def _decide_held(self) -> None:
        for call_id in dict.fromkeys(h.call_id for h in list(self._held)):
            self._decide(call_id)

    def _decide(self, call_id: str) -> None:
        """No create is in flight and `call_id` is still unknown: apply the policy, once."""
        if call_id in self._decided:
            return
        if self.policy == "adopt":
            if self._adopt is not None and self._adopt(call_id):
                self.adopted += 1
                logger.info(
                    "Call(%s) adopted: not created or answered here (BOT_UNKNOWN_CALLS=adopt)",
                    call_id,
                    extra={"call_id": call_id},
                )
                return  # now known: later notifications go to it
            self.adopt_refused += 1
        self._remember(call_id)
        if self.policy == "hangup" and self._hang_up is not None:
            self.hung_up += 1
            logger.info(
                "Call(%s) not created or answered here: hanging it up (BOT_UNKNOWN_CALLS=hangup)",
                call_id,
                extra={"call_id": call_id},
            )
            task = asyncio.get_running_loop().create_task(self._delete(call_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self.ignored_calls += 1
        logger.info(
            "Call(%s) not created or answered here: its notifications are ignored "
            "(BOT_UNKNOWN_CALLS=%s)",
            call_id,
            self.policy,
            extra={"call_id": call_id},
        )

    def _remember(self, call_id: str) -> None:
        self._decided[call_id] = None
        while len(self._decided) > DECIDED_MEMORY:
            self._decided.popitem(last=False)

    async def _delete(self, call_id: str) -> None:
        assert self._hang_up is not None
        try:
            await self._hang_up(call_id)
        except Exception as exc:  # a 404 (already gone) or Graph refusing: counted, logged
            self.hang_up_failed += 1
            logger.warning(
                "Call(%s) hang-up of an unknown call failed: %s",
                call_id,
                exc,
                extra={"call_id": call_id},
            )

    async def idle(self) -> None:
        """Until the hang-ups under way have been answered (tests, orderly shutdown)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
