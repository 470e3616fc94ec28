"""The call collection: every call's state kept current from notifications, and user events
dispatched sequentially per call, off the webhook's request path, as the .NET Graph
Communications SDK does: one queue per root resource, sequential callbacks, handlers must not
block ("Notification Dispatching" in microsoftgraph/microsoft-graph-comms-samples,
docs/articles/index.html).

State is applied synchronously when a notification arrives (it is cheap and keeps `wait_for`
exact); handlers run on a per-call worker fed by a bounded queue.

Only these make a Call: an incoming call's `created` notification (state incoming), the
bot's own POST /communications/calls (bot/app.py, `_create`), and, with
`BOT_UNKNOWN_CALLS=adopt`, a notification for a call the bot never had. Anything else for an
unknown id is only held, in a bounded, expiring record (bot/unknown_calls.py), and applied if
the bot's POST answer names the call. Call ids are GUIDs compared in any case and with or
without hyphens (`bot.resources.canonical_id`): `calls` takes any form of an id.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from bot.call import Call, CallContext
from bot.call_views import Facets, apply_content_sharing, changes, facets
from bot.events import CALL_EVENTS, EventHandlers
from bot.notifications import (
    CallChanged,
    ContentSharingChanged,
    Notification,
    OperationChanged,
    RosterChanged,
    parse,
)
from bot.participants import describe_identity
from bot.reconcile import Reconciler
from bot.resources import IdMap, canonical_id
from bot.unknown_calls import (
    ADOPTED_CALLS,
    HELD_BYTES,
    HELD_NOTIFICATIONS,
    HELD_SECONDS,
    UnknownCallPolicy,
    UnknownCalls,
)

__all__ = [
    "ANSWER_WINDOW_SECONDS",
    "HELD_BYTES",
    "HELD_NOTIFICATIONS",
    "HELD_SECONDS",
    "CallCollection",
]

logger = logging.getLogger(__name__)

# Answer, reject or redirect within 15 s, within 5 s for policy-based recording
# (https://learn.microsoft.com/en-us/graph/api/call-answer).
ANSWER_WINDOW_SECONDS = 15.0
POLICY_RECORDING_WINDOW_SECONDS = 5.0
DECISION_FRACTION = 0.6  # user code gets this share of the window before the fallback acts
DISPATCH_QUEUE_EVENTS = 256
DEDUPE_MEMORY = 4096  # resources remembered for duplicate detection
ENDED_RETENTION_SECONDS = 60.0  # an ended call stays visible this long, then is forgotten
ENDED_MEMORY = 4096  # forgotten call ids remembered, so late notifications cannot revive them
RECONCILE_SECONDS = 10.0  # a state notification this late is read back (bot/reconcile.py)


class Lifecycle(Protocol):
    """The bot's side of a call's life: what happens beyond state and user events."""

    def established(self, call: Call) -> None: ...

    def terminated(self, call: Call) -> None: ...

    async def incoming_fallback(self, call: Call) -> None: ...


class _Dispatcher:
    """One call's event queue and the worker that drains it in order."""

    def __init__(self, call: Call) -> None:
        self.queue: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue(
            DISPATCH_QUEUE_EVENTS
        )
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0


class CallCollection:
    def __init__(
        self,
        context: CallContext | None = None,
        lifecycle: Lifecycle | None = None,
        window_scale: float = 1.0,
        retention_seconds: float = ENDED_RETENTION_SECONDS,
        reconcile_seconds: float = RECONCILE_SECONDS,
        clock: Callable[[], float] | None = None,
        unknown_calls: UnknownCallPolicy = "ignore",
    ) -> None:
        """clock: what times held notifications (default: the running loop's time);
        unknown_calls: what to do about calls the bot never had (bot/unknown_calls.py)."""
        self.calls: IdMap[Call] = IdMap()
        self.late = 0  # notifications for calls already forgotten
        self.events = EventHandlers((*CALL_EVENTS, "incoming_call"))
        self.ignored = 0
        self.failed = 0  # items that raised while applied (CallCollection.apply)
        self.duplicates = 0
        self._context = context
        self._lifecycle = lifecycle
        self._window_scale = window_scale
        self._retention_seconds = retention_seconds
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[Call]]] = {}
        self._last: OrderedDict[str, bytes] = OrderedDict()
        self.reconciler = Reconciler(self, reconcile_seconds)
        self._dispatchers: dict[str, _Dispatcher] = {}
        self.unknown = UnknownCalls(
            unknown_calls,
            adopt=self._adopt,
            hang_up=self._hang_up_unknown if context is not None else None,
        )
        self.unknown.clock = clock

    # Notifications for unknown ids (bot/unknown_calls.py), under their earlier names.
    @property
    def clock(self) -> Callable[[], float] | None:
        return self.unknown.clock

    @clock.setter
    def clock(self, clock: Callable[[], float] | None) -> None:
        self.unknown.clock = clock

    @property
    def held(self) -> int:
        return self.unknown.held

    @property
    def held_applied(self) -> int:
        return self.unknown.applied

    @property
    def held_expired(self) -> int:
        return self.unknown.expired

    @property
    def held_dropped(self) -> int:
        return self.unknown.dropped

    @property
    def held_now(self) -> int:
        return self.unknown.held_now

    @property
    def held_bytes(self) -> int:
        return self.unknown.held_bytes

    def expire_held(self, now: float | None = None) -> None:
        self.unknown.expire(now)

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Around the bot's own POST /communications/calls (see bot/unknown_calls.py)."""
        with self.unknown.creating():
            yield

    def get_or_add(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            # The bot learns a call: its own POST's answer, or an incoming call's `created`
            # (what arrived for it before is applied by `learned`). Its id keeps the form
            # Graph first gave; lookups take any form.
            call = self.calls[call_id] = Call(call_id, self._context)
            for waiter in self._waiters.pop(canonical_id(call_id), []):
                if not waiter.done():
                    waiter.set_result(call)
        return call

    async def wait_for_call(self, call_id: str, within_seconds: float) -> Call:
        """The call with this id once the bot has heard of it (e.g. an incoming call)."""
        if call_id in self.calls:
            return self.calls[call_id]
        call_id = canonical_id(call_id)
        waiter: asyncio.Future[Call] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(call_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, within_seconds)
        finally:
            waiters = self._waiters.get(call_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(call_id, None)

    # -- notifications ------------------------------------------------------------------------

    def apply(self, item: Any) -> None:
        """Apply one commsNotification item. Malformed ones are counted and skipped, and so is
        one that fails while it is applied (`failed`, logged with its traceback: a bug to fix),
        so one bad item never stops the rest of its batch."""
        try:
            self._apply(item)
        except Exception:
            self.failed += 1
            logger.exception("Calls x notification not applied")

    def _apply(self, item: Any) -> None:
        try:
            note = parse(item)
        except ValueError as exc:
            self.ignored += 1
            logger.info("Calls x ignored notification: %s", exc)
            return
        if note.call_id in self._ended:
            self.late += 1
            return
        known = note.call_id in self.calls
        if not known and not _creates_call(note):
            self._hold(note, item)
            return
        if self._duplicate(item):
            self._count_duplicate(note, item)
            return
        call = self.get_or_add(note.call_id)
        self._apply_note(call, note)
        if not known:
            self.learned(call)

    def _apply_note(self, call: Call, note: Notification) -> None:
        roster = isinstance(note, RosterChanged)
        before = facets(call, roster)
        if isinstance(note, CallChanged):
            self._call_changed(call, note)
        elif isinstance(note, RosterChanged):
            update = call.apply_roster(note)
            if update:
                self._enqueue(call, "participants", call, update)
            if call.roster.resync_wanted:  # a delta was lost: read the whole roster back
                call.roster.resync_wanted = False
                self.reconciler.resync_roster(call)
        elif isinstance(note, OperationChanged):
            operation = call.track_operation(note.resource, note.operation_id)
            self._enqueue(call, "operation", call, operation)
        elif isinstance(note, ContentSharingChanged):
            sharing = apply_content_sharing(call, note)
            if sharing:
                self._enqueue(call, "content_sharing", call, sharing)
        if roster or isinstance(note, CallChanged):
            self._emit_changes(call, before, roster)

    def _emit_changes(self, call: Call, before: Facets, roster: bool) -> None:
        """Lobby, recording status, screen sharing, large gallery and media state events for
        what the notification changed (bot/call_views.py)."""
        for name, args in changes(call, before, facets(call, roster)):
            self._enqueue(call, name, *args)

    def _count_duplicate(self, note: Notification, item: dict[str, Any]) -> None:
        self.duplicates += 1
        logger.info(
            "Call(%s) ignores a duplicate %s notification of %s",
            note.call_id,
            item.get("changeType"),
            item.get("resourceUrl") or item.get("resource"),
            extra={"call_id": note.call_id},
        )

    # -- notifications for calls not known (yet): bot/unknown_calls.py --------------------------

    def _hold(self, note: Notification, item: dict[str, Any]) -> None:
        self.unknown.hold(note, item)

    def _adopt(self, call_id: str) -> bool:
        """BOT_UNKNOWN_CALLS=adopt: track a call the bot never had, within ADOPTED_CALLS."""
        alive = sum(1 for c in self.calls.values() if c.adopted and c.state != "terminated")
        if alive >= ADOPTED_CALLS:
            return False
        call = self.get_or_add(call_id)
        call.adopted = True
        self.learned(call)
        return True

    async def _hang_up_unknown(self, call_id: str) -> None:
        """BOT_UNKNOWN_CALLS=hangup: DELETE a call the bot never had."""
        assert self._context is not None
        await self._context.graph.request("DELETE", f"/communications/calls/{call_id}")

    def learned(self, call: Call) -> None:
        """The bot now knows this call (its POST answer named it): apply, in order, what Graph
        said about it before that answer arrived."""
        for held in self.unknown.take(canonical_id(call.id)):
            try:
                if self._duplicate(held.item):
                    self._count_duplicate(held.note, held.item)
                    continue
                self.unknown.applied += 1
                self._apply_note(call, held.note)
            except Exception:
                self.failed += 1
                logger.exception("Call(%s) held notification not applied", call.id)

    def _duplicate(self, item: dict[str, Any]) -> bool:
        """A re-delivery: identical to the last item applied for the same resource.

        Notifications carry no id, and a resource can legitimately return to an earlier shape
        (mute, unmute, mute), so only a repeat of the latest item per resource is a duplicate.
        """
        resource = str(item.get("resourceUrl") or item.get("resource"))
        digest = hashlib.sha1(json.dumps(item, sort_keys=True).encode()).digest()
        if self._last.get(resource) == digest:
            return True
        self._last[resource] = digest
        self._last.move_to_end(resource)
        if len(self._last) > DEDUPE_MEMORY:
            self._last.popitem(last=False)
        return False

    def _call_changed(self, call: Call, note: CallChanged) -> None:
        # Only a call we have never seen can be incoming: a re-sent `created` after the call
        # moved on must not send it back, nor start a second decision.
        incoming = (
            note.change_type == "created"
            and note.resource.get("state") == "incoming"
            and not call.states_seen
        )
        if incoming:
            call.state = "incoming"
            context = note.resource.get("incomingContext")
            policy = isinstance(context, dict) and bool(context.get("observedParticipantId"))
            window = POLICY_RECORDING_WINDOW_SECONDS if policy else ANSWER_WINDOW_SECONDS
            call.answer_deadline = asyncio.get_running_loop().time() + window * self._window_scale
            source = note.resource.get("source")
            logger.info(
                "Call(%s) incoming from %s%s",
                call.id,
                describe_identity(source.get("identity") if isinstance(source, dict) else None),
                " (policy-based recording)" if policy else "",
                extra={"call_id": call.id},
            )
        new_state = call.apply_resource(note.resource, deleted=note.change_type == "deleted")
        tone = call.apply_tone(note.resource.get("toneInfo"))
        if tone is not None:
            self._enqueue(call, "tone", call, tone)
        if incoming:
            self._enqueue_coro(call, self._decide(call))
        if new_state is not None:
            self.notify_state(call, new_state)

    # -- reading back what notifications did not tell (bot/reconcile.py) ------------------------

    def expect(self, call: Call, state: str) -> None:
        """Graph accepted a request it follows with a notification of `state`."""
        if call.context is not None:
            self.reconciler.expect(call, state)

    def call_read(self, call: Call, resource: dict[str, Any]) -> None:
        new_state = call.apply_resource(resource, deleted=False)
        if new_state is None:
            return
        logger.info(
            "Call(%s) is %s (read back; its notification was lost)",
            call.id,
            new_state,
            extra={"call_id": call.id},
        )
        self.notify_state(call, new_state)
        if new_state == "established":
            self.reconciler.resync_roster(call)  # the first roster was likely lost with it

    def call_gone(self, call: Call) -> None:
        self.end(call)

    def roster_read(self, call: Call, entries: list[dict[str, Any]]) -> None:
        update = call.resync_roster(entries)
        logger.info(
            "Call(%s) roster read back: %d added, %d updated, %d removed",
            call.id,
            len(update.added),
            len(update.updated),
            len(update.removed),
            extra={"call_id": call.id},
        )
        if update:
            self._enqueue(call, "participants", call, update)

    def end(self, call: Call) -> None:
        """A call ended without Graph saying so (keep-alive 404): the same consequences as a
        `deleted` notification."""
        if call.apply_state("terminated") is not None:
            self.notify_state(call, "terminated")

    def notify_state(self, call: Call, new_state: str) -> None:
        """The consequences of a state change: events, keep-alive, release, forgetting."""
        self._enqueue(call, "state", call, new_state)
        if new_state == "established" and self._lifecycle is not None:
            self._lifecycle.established(call)
        if new_state == "terminated":
            info = call.result_info or {}
            logger.info(
                "Call(%s) ended: resultInfo %s/%s %s",
                call.id,
                info.get("code", "-"),
                info.get("subcode", "-"),
                info.get("message") or "(no message)",
                extra={"call_id": call.id},
            )
            self.reconciler.forget(call.id)
            if self._lifecycle is not None:
                self._lifecycle.terminated(call)
            self._enqueue(call, "terminated", call)
            asyncio.get_running_loop().call_later(self._retention_seconds, self.forget, call.id)

    def forget(self, call_id: str) -> None:
        """Drop an ended call; later notifications about it are counted as late and ignored."""
        call = self.calls.get(call_id)
        if call is None or call.state != "terminated":
            return
        dispatcher = self._dispatchers.get(call_id)
        if dispatcher is not None and dispatcher.task is not None and not dispatcher.task.done():
            # Its handlers are still running: look again after another retention period.
            asyncio.get_running_loop().call_later(self._retention_seconds, self.forget, call_id)
            return
        del self.calls[call_id]
        self._ended[canonical_id(call_id)] = None
        if len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    # -- incoming calls -----------------------------------------------------------------------

    async def _decide(self, call: Call) -> None:
        """Give user code its share of Graph's window, then let the fallback decide."""
        window = (
            POLICY_RECORDING_WINDOW_SECONDS if call.is_policy_recording else ANSWER_WINDOW_SECONDS
        )
        budget = window * DECISION_FRACTION * self._window_scale
        if not getattr(self._lifecycle, "admitting", True):
            # The bot is stopping: say busy at once, Graph offers the call elsewhere.
            await call.reject("busy")
            return
        if self.events.has("incoming_call"):
            handler = asyncio.create_task(self.events.emit("incoming_call", call))
            done, _ = await asyncio.wait({handler}, timeout=budget)
            if not done:
                logger.warning(
                    "Call(%s) incoming handler undecided after %.2f s",
                    call.id,
                    budget,
                    extra={"call_id": call.id},
                )
                if call.decision is None:
                    handler.cancel()  # the fallback decides now; a late decision would clash
                    await asyncio.gather(handler, return_exceptions=True)
        if call.decision is None and call.state == "incoming" and self._lifecycle is not None:
            await self._lifecycle.incoming_fallback(call)

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, call: Call, name: str, *args: Any) -> None:
        """Hand an event to the call's handlers and the bot's, on the call's dispatch worker."""
        self._put(call, (name, args))

    _enqueue = dispatch

    def _enqueue_coro(self, call: Call, coro: Coroutine[Any, Any, None]) -> None:
        self._put(call, ("__coro__", (coro,)))

    def _put(self, call: Call, entry: tuple[str, tuple[Any, ...]]) -> None:
        dispatcher = self._dispatchers.get(call.id)
        if dispatcher is None:
            dispatcher = self._dispatchers[call.id] = _Dispatcher(call)
        if dispatcher.task is None or dispatcher.task.done():
            dispatcher.task = asyncio.create_task(self._work(call, dispatcher))
        try:
            dispatcher.queue.put_nowait(entry)
        except asyncio.QueueFull:
            dispatcher.dropped += 1  # a handler is stuck; state is still current
            if entry[0] == "__coro__":
                entry[1][0].close()

    async def _work(self, call: Call, dispatcher: _Dispatcher) -> None:
        while True:
            name, args = await dispatcher.queue.get()
            try:
                if name == "__coro__":
                    await args[0]
                else:
                    await call.events.emit(name, *args)
                    await self.events.emit(name, *args)
            except Exception:
                logger.exception(
                    "Call(%s) dispatch of %s failed", call.id, name, extra={"call_id": call.id}
                )
            finally:
                dispatcher.queue.task_done()
            if call.state == "terminated" and dispatcher.queue.empty():
                self._dispatchers.pop(call.id, None)
                return

    async def idle(self) -> None:
        """Until every queued event has been handled (for tests and orderly shutdown)."""
        while True:
            dispatchers = list(self._dispatchers.values())
            await asyncio.gather(*(d.queue.join() for d in dispatchers))
            if all(d in dispatchers for d in self._dispatchers.values()):
                return

    async def close(self) -> None:
        await self.unknown.close()
        await self.reconciler.close()
        tasks = [d.task for d in self._dispatchers.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatchers.clear()


def _creates_call(note: Notification) -> bool:
    """An incoming call: Graph's `created` notification with state incoming
    (https://learn.microsoft.com/en-us/graph/api/resources/call, "incoming")."""
    return (
        isinstance(note, CallChanged)
        and note.change_type == "created"
        and note.resource.get("state") == "incoming"
    )
