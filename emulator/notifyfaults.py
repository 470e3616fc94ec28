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
from typing import TYPE_CHECKING, Any, TypeVar

import jwt
from aiohttp import web

from emulator.keys import SigningKey
from emulator.odata import BadRequest, bad_request, read_object

if TYPE_CHECKING:
    from emulator.server import Emulator

logger = logging.getLogger(__name__)

RESOURCES = ("call", "participants", "operations", "contentSharingSessions")
CHANGE_TYPES = ("created", "updated", "deleted")
MAX_DELAY_SECONDS = 60.0
MAX_HOLD_BACK = 100
DEFAULT_MAX_HOLD_SECONDS = 5.0
DEFAULT_SKEW_SECONDS = 3600.0  # an hour: far beyond any receiver's clock-skew leeway (5 min)
MAX_PENDING_PER_CALL = 256  # delayed + held notifications of one call; beyond: posted at once
MAX_PUBLISHED_KEYS = 4  # keys kept in the JWKS across rotations that keep the old one
LOG_SIZE = 1000

Entry = tuple[str, dict[str, Any]]  # (callbackUri, commsNotification item)


# -- policies (what is armed) -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Knob:
    """Which notifications one fault hits."""

    probability: float | None = None
    count: int | None = None
    after: int = 0
    resources: frozenset[str] | None = None
    change_types: frozenset[str] | None = None
    states: frozenset[str] | None = None

    def matches(self, item: Mapping[str, Any]) -> bool:
        if self.resources is not None and resource_kind(item) not in self.resources:
            return False
        if self.change_types is not None and item.get("changeType") not in self.change_types:
            return False
        return self.states is None or call_state(item) in self.states

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"after": self.after}
        if self.probability is not None:
            described["probability"] = self.probability
        if self.count is not None:
            described["count"] = self.count
        for key, values in (
            ("resource", self.resources),
            ("changeType", self.change_types),
            ("state", self.states),
        ):
            if values is not None:
                described[key] = sorted(values)
        return described


@dataclass(frozen=True, kw_only=True)
class DelayKnob(Knob):
    seconds: float  # real seconds, not scaled by time_scale: it is the fault, not a Graph rule


@dataclass(frozen=True, kw_only=True)
class ReorderKnob(Knob):
    hold_back: int = 1  # posted after this many later notifications of the same call
    max_hold_seconds: float = DEFAULT_MAX_HOLD_SECONDS  # ... or after this long, whichever first


@dataclass(frozen=True, kw_only=True)
class SkewKnob(Knob):
    seconds: float = DEFAULT_SKEW_SECONDS  # how far exp lies in the past / nbf in the future


@dataclass(frozen=True, kw_only=True)
class ForgedKnob(Knob):
    same_kid: bool = False  # name the published key's kid (else a fresh unknown kid each time)


@dataclass(frozen=True)
class Rotation:
    after: int = 0  # notifications still signed with the current key before the new one signs
    keep_old: bool = True  # the JWKS keeps publishing the old key (a graceful rollover)


@dataclass(frozen=True)
class NotificationFaults:
    """Delivery faults: JSON/TOML keys seed, drop, duplicate, delay, reorder."""

    seed: int = 0
    drop: Knob | None = None
    duplicate: Knob | None = None
    delay: DelayKnob | None = None
    reorder: ReorderKnob | None = None

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> NotificationFaults:
        """From the admin API's JSON body or a scenario's table. Raises BadRequest."""
        _only(body, ("seed", "drop", "duplicate", "delay", "reorder"), "notification faults")
        delay = _table(body, "delay")
        reorder = _table(body, "reorder")
        faults = cls(
            seed=_seed(body),
            drop=_knob(body, "drop", Knob),
            duplicate=_knob(body, "duplicate", Knob),
            delay=None
            if delay is None
            else _knob(
                body,
                "delay",
                DelayKnob,
                ("seconds",),
                seconds=_number(delay, "delay.seconds", 0.0, MAX_DELAY_SECONDS, positive=True),
            ),
            reorder=None
            if reorder is None
            else _knob(
                body,
                "reorder",
                ReorderKnob,
                ("holdBack", "maxHoldSeconds"),
                hold_back=_integer(reorder, "reorder.holdBack", 1, MAX_HOLD_BACK, default=1),
                max_hold_seconds=_number(
                    reorder,
                    "reorder.maxHoldSeconds",
                    0.0,
                    MAX_DELAY_SECONDS,
                    positive=True,
                    default=DEFAULT_MAX_HOLD_SECONDS,
                ),
            ),
        )
        if not any((faults.drop, faults.duplicate, faults.delay, faults.reorder)):
            raise BadRequest("Arm at least one of drop, duplicate, delay or reorder.")
        return faults

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"seed": self.seed}
        if self.drop is not None:
            described["drop"] = self.drop.describe()
        if self.duplicate is not None:
            described["duplicate"] = self.duplicate.describe()
        if self.delay is not None:
            described["delay"] = {**self.delay.describe(), "seconds": self.delay.seconds}
        if self.reorder is not None:
            described["reorder"] = {
                **self.reorder.describe(),
                "holdBack": self.reorder.hold_back,
                "maxHoldSeconds": self.reorder.max_hold_seconds,
            }
        return described


@dataclass(frozen=True)
class SigningFaults:
    """Signing faults: JSON/TOML keys seed, expired, notYetValid, forged, rotate."""

    seed: int = 0
    expired: SkewKnob | None = None
    not_yet_valid: SkewKnob | None = None
    forged: ForgedKnob | None = None
    rotate: Rotation | None = None

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> SigningFaults:
        """From the admin API's JSON body or a scenario's table. Raises BadRequest."""
        _only(body, ("seed", "expired", "notYetValid", "forged", "rotate"), "signing faults")
        skews: dict[str, SkewKnob | None] = {}
        for key in ("expired", "notYetValid"):
            table = _table(body, key)
            skews[key] = (
                None
                if table is None
                else _knob(
                    body,
                    key,
                    SkewKnob,
                    ("seconds",),
                    seconds=_number(
                        table,
                        f"{key}.seconds",
                        0.0,
                        30 * 86400.0,
                        positive=True,
                        default=DEFAULT_SKEW_SECONDS,
                    ),
                )
            )
        forged = _table(body, "forged")
        rotate = _table(body, "rotate")
        faults = cls(
            seed=_seed(body),
            expired=skews["expired"],
            not_yet_valid=skews["notYetValid"],
            forged=None
            if forged is None
            else _knob(
                body, "forged", ForgedKnob, ("sameKid",), same_kid=_flag(forged, "forged.sameKid")
            ),
            rotate=None if rotate is None else _rotation(rotate),
        )
        if not any((faults.expired, faults.not_yet_valid, faults.forged, faults.rotate)):
            raise BadRequest("Arm at least one of expired, notYetValid, forged or rotate.")
        return faults

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"seed": self.seed}
        for key, knob in (("expired", self.expired), ("notYetValid", self.not_yet_valid)):
            if knob is not None:
                described[key] = {**knob.describe(), "seconds": knob.seconds}
        if self.forged is not None:
            described["forged"] = {**self.forged.describe(), "sameKid": self.forged.same_kid}
        if self.rotate is not None:
            described["rotate"] = {"after": self.rotate.after, "keepOld": self.rotate.keep_old}
        return described


# -- parsing helpers (every message names the key, so a scenario file's typo is found) ----------

KNOB_KEYS = ("probability", "count", "after", "resource", "changeType", "state")


def _only(body: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    if not isinstance(body, Mapping):
        raise BadRequest(f"The {what} must be a JSON object.")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"Unknown key {unknown[0]!r} in {what}; use {', '.join(allowed)}.")


def _table(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadRequest(f"{key} must be an object.")
    return value


def _seed(body: Mapping[str, Any]) -> int:
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise BadRequest("seed must be an integer.")
    return seed


def _number(
    table: Mapping[str, Any],
    name: str,
    low: float,
    high: float,
    *,
    positive: bool = False,
    default: float | None = None,
) -> float:
    value = table.get(name.rsplit(".", 1)[-1], default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name} must be a number.")
    if not low <= value <= high or (positive and value <= 0):
        raise BadRequest(
            f"{name} must be {'over' if positive else 'at least'} {low} and at most {high}."
        )
    return float(value)


def _integer(
    table: Mapping[str, Any], name: str, low: int, high: int, *, default: int | None = None
) -> int:
    value = table.get(name.rsplit(".", 1)[-1], default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}.")
    return value


def _flag(table: Mapping[str, Any], name: str) -> bool:
    value = table.get(name.rsplit(".", 1)[-1], False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false.")
    return value


def _names(
    table: Mapping[str, Any], name: str, allowed: tuple[str, ...] | None
) -> frozenset[str] | None:
    value = table.get(name.rsplit(".", 1)[-1])
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise BadRequest(f"{name} must be a string or a non-empty list of strings.")
    if allowed is not None and not set(values) <= set(allowed):
        raise BadRequest(f"{name} must be among {', '.join(allowed)}.")
    return frozenset(values)


K = TypeVar("K", bound=Knob)


def _knob(
    body: Mapping[str, Any],
    key: str,
    kind: type[K],
    extra_keys: tuple[str, ...] = (),
    **extra: Any,
) -> K | None:
    table = _table(body, key)
    if table is None:
        return None
    _only(table, KNOB_KEYS + extra_keys, key)
    probability = table.get("probability")
    count = table.get("count")
    if probability is None and count is None:
        raise BadRequest(f"{key} needs a probability, a count, or both.")
    if probability is not None:
        probability = _number(table, f"{key}.probability", 0.0, 1.0)
    if count is not None:
        count = _integer(table, f"{key}.count", 1, 1_000_000)
    return kind(
        probability=probability,
        count=count,
        after=_integer(table, f"{key}.after", 0, 1_000_000, default=0),
        resources=_names(table, f"{key}.resource", RESOURCES),
        change_types=_names(table, f"{key}.changeType", CHANGE_TYPES),
        states=_names(table, f"{key}.state", None),
        **extra,
    )


def _rotation(table: Mapping[str, Any]) -> Rotation:
    _only(table, ("after", "keepOld"), "rotate")
    keep_old = table.get("keepOld", True)
    if not isinstance(keep_old, bool):
        raise BadRequest("rotate.keepOld must be true or false.")
    return Rotation(_integer(table, "rotate.after", 0, 1_000_000, default=0), keep_old)


# -- what a notification is about ---------------------------------------------------------------


def _path(item: Mapping[str, Any]) -> list[str]:
    url = item.get("resourceUrl") or item.get("resource") or ""
    return str(url).strip("/").split("/")  # communications, calls, {id}, [kind, [sub]]


def resource_kind(item: Mapping[str, Any]) -> str:
    parts = _path(item)
    return parts[3] if len(parts) > 3 else "call"


def call_id_of(item: Mapping[str, Any]) -> str:
    parts = _path(item)
    return parts[2] if len(parts) > 2 else ""


def call_state(item: Mapping[str, Any]) -> str | None:
    data = item.get("resourceData")
    if resource_kind(item) != "call" or not isinstance(data, dict):
        return None
    state = data.get("state")
    return state if isinstance(state, str) else None


def _sequence(item: Mapping[str, Any]) -> int | None:
    data = item.get("resourceData")
    number = data.get("sequenceNumber") if isinstance(data, dict) else None
    return number if isinstance(number, int) else None


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
