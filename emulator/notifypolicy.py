"""Which notification faults are armed, and which notifications each one hits: the policies
(NotificationFaults, SigningFaults and their knobs), their parsing from the admin API's JSON body
or a scenario's table (every message names the key, so a scenario file's typo is found), and the
reading of a commsNotification item (its call, resource kind and call state) that the knobs'
filters match on. The injector that applies them is emulator/notifyfaults.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from emulator.odata import BadRequest

RESOURCES = ("call", "participants", "operations", "contentSharingSessions")
CHANGE_TYPES = ("created", "updated", "deleted")
MAX_DELAY_SECONDS = 60.0
MAX_HOLD_BACK = 100
DEFAULT_MAX_HOLD_SECONDS = 5.0
DEFAULT_SKEW_SECONDS = 3600.0  # an hour: far beyond any receiver's clock-skew leeway (5 min)


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
