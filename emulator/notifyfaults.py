"""Fault injection on the notifications Graph posts to a bot's callbackUri: drop, duplicate, delay
and reorder them (NotificationFaults), and sign them with expired, not-yet-valid, forged or
rotated keys (SigningFaults). Both are armed at start (EmulatorConfig.notification_faults,
.signing_faults), by a scenario file (the same keys, through `parse`), or through the admin API:
POST /emulator/faults/notifications and /emulator/faults/signing arm (JSON body, replacing what
was armed), DELETE disarms, GET shows the armed policy and what it did (`FaultInjector.log`).

Why these faults: Graph gives no ordering or exactly-once promise for callbacks
("establishing"/"established" may arrive out of order; the .NET SDK deduplicates), a webhook can
be unreachable for a while, and the signing keys of api.aps.skype.com roll over. A bot has
to survive all of it; these knobs make each case reproducible, seeded with `random.Random(seed)`.

Every knob fires on the notifications it matches (filters: `resource` call | participants |
operations | contentSharingSessions, `changeType`, `state` of a call resource), skips the first
`after` of them, then fires on the next `count` of them, or on each with `probability`, or both
(each with that probability, at most `count` times).
"""

from __future__ import annotations

import heapq
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web

from emulator.keys import SigningKey
from emulator.notifypolicy import (
    CHANGE_TYPES,
    DEFAULT_MAX_HOLD_SECONDS,
    DEFAULT_SKEW_SECONDS,
    KNOB_KEYS,
    MAX_DELAY_SECONDS,
    MAX_HOLD_BACK,
    RESOURCES,
    DelayKnob,
    ForgedKnob,
    Knob,
    NotificationFaults,
    ReorderKnob,
    Rotation,
    SigningFaults,
    SkewKnob,
    _sequence,
    call_id_of,
    call_state,
    resource_kind,
)
from emulator.odata import BadRequest, bad_request, read_object

if TYPE_CHECKING:
    from emulator.server import Emulator

# The policies and the notification reading moved to emulator/notifypolicy.py; re-exported so
# `from emulator.notifyfaults import NotificationFaults` (scenario.py, server.py) keeps working.
__all__ = [
    "CHANGE_TYPES",
    "DEFAULT_MAX_HOLD_SECONDS",
    "DEFAULT_SKEW_SECONDS",
    "KNOB_KEYS",
    "LOG_SIZE",
    "MAX_DELAY_SECONDS",
    "MAX_HOLD_BACK",
    "MAX_PENDING_PER_CALL",
    "MAX_PUBLISHED_KEYS",
    "RESOURCES",
    "BadRequest",
    "CallSchedule",
    "Decision",
    "DelayKnob",
    "Entry",
    "FaultInjector",
    "FaultRecord",
    "ForgedKnob",
    "Knob",
    "NotificationFaults",
    "ReorderKnob",
    "Rotation",
    "SigningFaults",
    "SkewKnob",
    "call_id_of",
    "call_state",
    "resource_kind",
    "routes",
]

logger = logging.getLogger(__name__)

MAX_PENDING_PER_CALL = 256  # delayed + held notifications of one call; beyond: posted at once
MAX_PUBLISHED_KEYS = 4  # keys kept in the JWKS across rotations that keep the old one
LOG_SIZE = 1000

Entry = tuple[str, dict[str, Any]]  # (callbackUri, commsNotification item)


@dataclass(frozen=True)
class FaultRecord:
    """One thing a fault did, for tests and the status page."""

    fault: str  # dropped | duplicated | delayed | held | expired | notYetValid | forged | rotated
    call_id: str
    change_type: str | None
    resource: str
    state: str | None
    sequence_number: int | None
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "callId": self.call_id,
            "changeType": self.change_type,
            "resource": self.resource,
            "state": self.state,
            "sequenceNumber": self.sequence_number,
            **self.detail,
        }


class _Counted:
    """A knob's progress: how many matches it has seen and fired on."""

    def __init__(self, knob: Knob) -> None:
        self.knob = knob
        self.seen = 0
        self.fired = 0

    def fires(self, item: Mapping[str, Any], rng: random.Random) -> bool:
        knob = self.knob
        if not knob.matches(item):
            return False
        self.seen += 1
        if self.seen <= knob.after or (knob.count is not None and self.fired >= knob.count):
            return False
        if knob.probability is not None and rng.random() >= knob.probability:
            return False
        self.fired += 1
        return True


def _counted(knob: Knob | None) -> _Counted | None:
    return None if knob is None else _Counted(knob)


@dataclass(frozen=True)
class Decision:
    drop: bool = False
    copies: int = 1
    delay_seconds: float = 0.0
    hold: ReorderKnob | None = None


# -- the injector (what is armed, and what it did) ----------------------------------------------


class FaultInjector:
    """The emulator's armed notification and signing faults. `keys` is the emulator's list of
    published notification keys (the JWKS at /v1/keys), which a rotation changes in place."""

    def __init__(
        self,
        keys: list[SigningKey],
        notifications: NotificationFaults | None = None,
        signing: SigningFaults | None = None,
    ) -> None:
        self.keys = keys
        self.log: deque[FaultRecord] = deque(maxlen=LOG_SIZE)
        self.counts: Counter[str] = Counter()
        self.notifications: NotificationFaults | None = None
        self.signing: SigningFaults | None = None
        self._rng = random.Random(0)
        self._drop: _Counted | None = None
        self._duplicate: _Counted | None = None
        self._delay: _Counted | None = None
        self._reorder: _Counted | None = None
        self._signing_rng = random.Random(0)
        self._expired: _Counted | None = None
        self._not_yet_valid: _Counted | None = None
        self._forged: _Counted | None = None
        self._rotate_after: int | None = None
        self._next_key: SigningKey | None = None
        self._forged_key: SigningKey | None = None
        self.arm_notifications(notifications)
        self.arm_signing(signing)

    def arm_notifications(self, policy: NotificationFaults | None) -> None:
        """Arm (replacing what was armed; counts start again) or, with None, disarm."""
        self.notifications = policy
        self._rng = random.Random(policy.seed if policy else 0)
        self._drop = _counted(policy.drop if policy else None)
        self._duplicate = _counted(policy.duplicate if policy else None)
        self._delay = _counted(policy.delay if policy else None)
        self._reorder = _counted(policy.reorder if policy else None)

    def arm_signing(self, policy: SigningFaults | None) -> None:
        self.signing = policy
        self._signing_rng = random.Random(policy.seed if policy else 0)
        self._expired = _counted(policy.expired if policy else None)
        self._not_yet_valid = _counted(policy.not_yet_valid if policy else None)
        self._forged = _counted(policy.forged if policy else None)
        rotate = policy.rotate if policy else None
        self._rotate_after = None if rotate is None else rotate.after
        # Made now, not on the notification's path: an RSA key takes tens of milliseconds.
        self._next_key = SigningKey() if rotate is not None else None
        if policy is not None and policy.forged is not None and self._forged_key is None:
            self._forged_key = SigningKey()

    def schedule(self, call_id: str) -> CallSchedule:
        return CallSchedule(self, call_id)

    def _record(self, fault: str, item: Mapping[str, Any], **detail: Any) -> None:
        self.counts[fault] += 1
        record = FaultRecord(
            fault,
            call_id_of(item),
            item.get("changeType"),
            resource_kind(item),
            call_state(item),
            _sequence(item),
            detail,
        )
        self.log.append(record)
        logger.info(
            "Faults x %s %s %s notification of call %s%s",
            fault,
            record.change_type,
            record.resource,
            record.call_id,
            f" ({record.state})" if record.state else "",
        )

    # -- delivery faults ------------------------------------------------------------------------

    def decide(self, item: Mapping[str, Any]) -> Decision:
        """What happens to one notification. Knobs are asked in order, and one that is not asked
        (the item was dropped, or already delayed) does not count it."""
        if self.notifications is None:
            return Decision()
        if self._drop is not None and self._drop.fires(item, self._rng):
            self._record("dropped", item)
            return Decision(drop=True)
        copies = 1
        if self._duplicate is not None and self._duplicate.fires(item, self._rng):
            self._record("duplicated", item)
            copies = 2
        if self._delay is not None and self._delay.fires(item, self._rng):
            assert isinstance(self._delay.knob, DelayKnob)
            seconds = self._delay.knob.seconds
            self._record("delayed", item, seconds=seconds)
            return Decision(copies=copies, delay_seconds=seconds)
        if self._reorder is not None and self._reorder.fires(item, self._rng):
            assert isinstance(self._reorder.knob, ReorderKnob)
            self._record("held", item, holdBack=self._reorder.knob.hold_back)
            return Decision(copies=copies, hold=self._reorder.knob)
        return Decision(copies=copies)

    # -- signing faults -------------------------------------------------------------------------

    def sign(
        self,
        key: SigningKey,
        claims: dict[str, Any],
        lifetime_seconds: float,
        items: list[dict[str, Any]],
    ) -> str:
        """The bearer token for one notification POST: normally `key`'s, else the fault's."""
        if self.signing is None or not items:
            return key.sign(claims, lifetime_seconds)
        item = items[0]
        if self._rotate_after is not None:
            if self._rotate_after <= 0:
                key = self._rotate(item)
            else:
                self._rotate_after -= 1
        now = int(time.time())
        rng = self._signing_rng
        if self._forged is not None and self._forged.fires(item, rng):
            assert isinstance(self._forged.knob, ForgedKnob) and self._forged_key is not None
            same_kid = self._forged.knob.same_kid
            kid = key.kid if same_kid else uuid.uuid4().hex
            self._record("forged", item, kid=kid)
            forged = self._forged_key
            # A key nobody published, under the published kid (a bad signature) or a new one.
            return _sign_as(forged, kid, claims, now, now + int(lifetime_seconds))
        if self._expired is not None and self._expired.fires(item, rng):
            assert isinstance(self._expired.knob, SkewKnob)
            exp = now - int(self._expired.knob.seconds)
            self._record("expired", item, exp=exp)
            return _sign_as(key, key.kid, claims, exp - int(lifetime_seconds), exp)
        if self._not_yet_valid is not None and self._not_yet_valid.fires(item, rng):
            assert isinstance(self._not_yet_valid.knob, SkewKnob)
            nbf = now + int(self._not_yet_valid.knob.seconds)
            self._record("notYetValid", item, nbf=nbf)
            return _sign_as(key, key.kid, claims, nbf, nbf + int(lifetime_seconds))
        return key.sign(claims, lifetime_seconds)

    def _rotate(self, item: Mapping[str, Any]) -> SigningKey:
        """The new key signs from now on and is published first; the old one stays or goes."""
        assert self.signing is not None and self.signing.rotate is not None
        new = self._next_key or SigningKey()
        old = [k.kid for k in self.keys]
        self.keys.insert(0, new)
        del self.keys[1 if not self.signing.rotate.keep_old else MAX_PUBLISHED_KEYS :]
        self._rotate_after = None
        self._next_key = None
        self._record(
            "rotated", item, kid=new.kid, previous=old, keepOld=self.signing.rotate.keep_old
        )
        return new

    def view(self) -> dict[str, Any]:
        return {
            "notifications": self.notifications.describe() if self.notifications else None,
            "signing": self.signing.describe() if self.signing else None,
            "keys": [k.kid for k in self.keys],
            "counts": dict(self.counts),
            "log": [r.to_json() for r in self.log],
        }


def _sign_as(
    key: SigningKey, kid: str, claims: dict[str, Any], not_before: int, expires: int
) -> str:
    body = {"iat": not_before, "nbf": not_before, "exp": expires, **claims}
    return jwt.encode(body, key.private_key, algorithm="RS256", headers={"kid": kid})


# -- one call's outgoing notifications, with the faults applied ---------------------------------


@dataclass
class _Held:
    entry: Entry
    remaining: int  # later notifications to let pass first
    deadline: float


class CallSchedule:
    """The order one call's notifications are posted in. Without faults it is the order they
    were made; a delayed one goes out when due, a held one after `holdBack` later ones (or its
    deadline), and the rest keep their order. Time is passed in (the sender's loop time)."""

    def __init__(self, injector: FaultInjector, call_id: str) -> None:
        self._injector = injector
        self._call_id = call_id
        self._ready: deque[Entry] = deque()
        self._delayed: list[tuple[float, int, Entry]] = []  # heap by due time, then arrival
        self._held: list[_Held] = []
        self._arrivals = 0
        self.overflowed = 0

    def push(self, entry: Entry, now: float) -> None:
        decision = self._injector.decide(entry[1])
        if decision.drop:
            return
        pending = len(self._delayed) + len(self._held)
        faulty = decision.delay_seconds > 0 or decision.hold is not None
        if faulty and pending + decision.copies > MAX_PENDING_PER_CALL:
            self.overflowed += 1  # bounded: past the limit the fault is not applied
            decision = Decision(copies=decision.copies)
        for _ in range(decision.copies):
            self._arrivals += 1
            if decision.delay_seconds > 0:
                due = now + decision.delay_seconds
                heapq.heappush(self._delayed, (due, self._arrivals, entry))
            elif decision.hold is not None:
                deadline = now + decision.hold.max_hold_seconds
                self._held.append(_Held(entry, decision.hold.hold_back, deadline))
            else:
                self._emit(entry)

    def _emit(self, entry: Entry) -> None:
        self._ready.append(entry)
        released = []
        for held in self._held:
            held.remaining -= 1
            if held.remaining <= 0:
                released.append(held)
        for held in released:
            self._held.remove(held)
            self._ready.append(held.entry)

    def take(self, now: float, closing: bool = False) -> list[Entry]:
        """What is to be posted now, in order. Closing (the call's last notification is out):
        held ones go at once, since nothing will come to pass them; delayed ones still wait."""
        while self._delayed and self._delayed[0][0] <= now:
            self._emit(heapq.heappop(self._delayed)[2])
        for held in [h for h in self._held if closing or h.deadline <= now]:
            self._held.remove(held)
            self._ready.append(held.entry)
        out = list(self._ready)
        self._ready.clear()
        return out

    def next_wakeup(self) -> float | None:
        """When the next delayed or held notification is due, if any."""
        times = [h.deadline for h in self._held]
        if self._delayed:
            times.append(self._delayed[0][0])
        return min(times) if times else None


# -- admin API ----------------------------------------------------------------------------------


def routes(emulator: Emulator) -> list[web.RouteDef]:
    injector = emulator.fault_injector

    async def arm_notifications(request: web.Request) -> web.Response:
        try:
            injector.arm_notifications(NotificationFaults.parse(await read_object(request)))
        except BadRequest as exc:
            return bad_request(str(exc))
        logger.info("Faults x notifications armed: %s", injector.notifications)
        return web.Response(status=204)

    async def disarm_notifications(request: web.Request) -> web.Response:
        injector.arm_notifications(None)
        return web.Response(status=204)

    async def arm_signing(request: web.Request) -> web.Response:
        try:
            injector.arm_signing(SigningFaults.parse(await read_object(request)))
        except BadRequest as exc:
            return bad_request(str(exc))
        logger.info("Faults x signing armed: %s", injector.signing)
        return web.Response(status=204)

    async def disarm_signing(request: web.Request) -> web.Response:
        injector.arm_signing(None)
        return web.Response(status=204)

    async def view(request: web.Request) -> web.Response:
        return web.json_response(injector.view())

    return [
        web.post("/emulator/faults/notifications", arm_notifications),
        web.delete("/emulator/faults/notifications", disarm_notifications),
        web.get("/emulator/faults/notifications", view),
        web.post("/emulator/faults/signing", arm_signing),
        web.delete("/emulator/faults/signing", disarm_signing),
        web.get("/emulator/faults/signing", view),
    ]
