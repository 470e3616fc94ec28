"""What the hardened listeners (media/listener.py) admit: clock-driven bookkeeping that touches no
socket, so each policy is tested on a fake clock.

- `AuthFailures`: failed authentications per source address, a token bucket each, in a bounded
  map;
- `FileBudget`: the process's files shared by every listener, below RLIMIT_NOFILE;
- `ConnectionTable`: each listener's connections, their state and deadlines, and which one to
  close at the cap;
- `Refusals`: what was refused or closed, reported in at most one warning per interval.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import resource
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from typing import Any

# The listener's own logger: a warning about refused connections reads as the listener's.
logger = logging.getLogger("media.listener")

Clock = Callable[[], float]
AUTH_ADDRESSES = 4096  # addresses whose failures are remembered (bounded map; policy below)


def address_key(host: str) -> str:
    """What the per-address limits count by: the IPv4 address, or the /64 of an IPv6 address
    (one subscriber usually gets a whole /64, RFC 6177)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# -- failed authentication: token buckets by address ----------------------------------------


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class AuthFailures:
    """Failed authentications per source address: a token bucket each (a minute's worth of
    failures as the burst, refilled at the per-minute rate). Bounded: at most `max_addresses`
    buckets; a bucket that has refilled is the same as none and is dropped, and when the map
    is full the least recently failed address is forgotten first (an attacker with more
    addresses than that can get an old address forgiven early; each address is still
    limited while it is remembered)."""

    def __init__(
        self,
        per_minute: float,
        clock: Clock = time.monotonic,
        max_addresses: int = AUTH_ADDRESSES,
    ) -> None:
        self.per_minute = per_minute
        self.capacity = max(1.0, per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max = max_addresses
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.limited = 0  # failures over the budget, and attempts refused for it

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        return min(self.capacity, bucket.tokens + (now - bucket.updated) * self._rate)

    def blocked(self, key: str) -> bool:
        """True while the address has no failure left in its budget."""
        if self.per_minute <= 0:
            return False
        bucket = self._buckets.get(key)
        return bucket is not None and self._refilled(bucket, self._clock()) < 1.0

    def failed(self, key: str) -> bool:
        """Count one failure; True if it was within the budget, False if over it."""
        if self.per_minute <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            self._expire(now)
            bucket = _Bucket(self.capacity, now)
        bucket.tokens = self._refilled(bucket, now)
        bucket.updated = now
        self._buckets[key] = bucket  # most recently failed last
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.limited += 1
        return False

    def _expire(self, now: float) -> None:
        """Before adding an address: drop refilled buckets from the oldest end, then the
        oldest if still full."""
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if self._refilled(bucket, now) < self.capacity and len(self._buckets) < self._max:
                return
            del self._buckets[key]


# -- the process's file budget --------------------------------------------------------------


class FileBudget:
    """Connections all listeners of the process may hold together: RLIMIT_NOFILE (soft) less
    what the process keeps for the rest. Thread-safe (the webhook and the media-control
    endpoint run on different loops)."""

    def __init__(self, total: int) -> None:
        self.total = max(0, total)
        self.used = 0
        self._lock = threading.Lock()

    @classmethod
    def from_rlimit(cls, reserved_files: int) -> FileBudget:
        """RLIMIT_NOFILE's soft limit less reserved_files, which is at most half of it (a
        small limit still leaves the listeners something)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return cls(soft - min(reserved_files, soft // 2))

    def acquire(self) -> bool:
        with self._lock:
            if self.used >= self.total:
                return False
            self.used += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.used = max(0, self.used - 1)


_process_budget: FileBudget | None = None
_process_budget_lock = threading.Lock()


def process_budget(reserved_files: int) -> FileBudget:
    """The one budget of this process, made from RLIMIT_NOFILE by the first listener."""
    global _process_budget
    with _process_budget_lock:
        if _process_budget is None:
            _process_budget = FileBudget.from_rlimit(reserved_files)
        return _process_budget


# -- connections -----------------------------------------------------------------------------


class State(Enum):
    HANDSHAKE = "handshake"  # accepted, TLS handshake running
    IDLE = "idle"  # waiting for a request (a new connection, or keep-alive)
    HEADERS = "headers"  # a request began: waiting for the rest of its header
    BODY = "body"  # the handler runs, its body still arriving
    ACTIVE = "active"  # the handler runs (a WebSocket for as long as it is open)


EVICTABLE = frozenset({State.HANDSHAKE, State.IDLE, State.HEADERS})


class Conn:
    __slots__ = ("id", "key", "state", "close", "timer", "payload")

    def __init__(self, conn_id: int, key: str) -> None:
        self.id = conn_id
        self.key = key
        self.state = State.HANDSHAKE
        self.close: Callable[[], None] = lambda: None
        self.timer: asyncio.TimerHandle | None = None
        self.payload: Any = None  # the current request's body stream (aiohttp StreamReader)


class Refusal(Enum):
    ADDRESS = "per-address cap"
    FULL = "connection cap"
    FILES = "file budget"
    AUTH = "failed authentication"


class ConnectionTable:
    """Which connections a listener holds, by address and by state; decides what a new one
    costs. Bounded by its cap: every connection it holds counts, refused ones are never
    kept."""

    def __init__(self, max_connections: int, max_per_address: int, budget: FileBudget) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.budget = budget
        self.conns: dict[int, Conn] = {}
        self.per_address: dict[str, int] = {}
        # Connections not in the middle of a request, oldest first: what a new one may evict.
        self.evictable: OrderedDict[int, Conn] = OrderedDict()
        self.evicted = 0
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self.conns)

    def admit(self, key: str) -> Conn | Refusal:
        if self.per_address.get(key, 0) >= self.max_per_address:
            return Refusal.ADDRESS
        if len(self.conns) >= self.max_connections and not self._evict_one():
            return Refusal.FULL
        while not self.budget.acquire():
            if not self._evict_one():
                return Refusal.FILES
        conn = Conn(next(self._ids), key)
        self.conns[conn.id] = conn
        self.per_address[key] = self.per_address.get(key, 0) + 1
        self.evictable[conn.id] = conn
        return conn

    def _evict_one(self) -> bool:
        if not self.evictable:
            return False
        _, victim = self.evictable.popitem(last=False)
        self.evicted += 1
        close = victim.close
        self.release(victim)
        close()
        return True

    def set_state(self, conn: Conn, state: State) -> None:
        conn.state = state
        if conn.id not in self.conns:
            return
        self.evictable.pop(conn.id, None)
        if state in EVICTABLE:
            self.evictable[conn.id] = conn  # newest last

    def release(self, conn: Conn) -> None:
        if self.conns.pop(conn.id, None) is None:
            return
        self.evictable.pop(conn.id, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        left = self.per_address[conn.key] - 1
        if left:
            self.per_address[conn.key] = left
        else:
            del self.per_address[conn.key]
        self.budget.release()


class Refusals:
    """What a listener refused or closed, said in at most one WARNING per interval."""

    def __init__(self, name: str, interval: float, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.interval = interval
        self._clock = clock
        self.counts: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self._last = -float("inf")
        self.warnings = 0

    def note(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        self.totals[what] = self.totals.get(what, 0) + 1

    def due(self) -> float | None:
        """Seconds until the next warning may be said (0: now), None if nothing to say."""
        if not self.counts:
            return None
        return max(0.0, self._last + self.interval - self._clock())

    def flush(self) -> str | None:
        if not self.counts or self.due():
            return None
        self._last = self._clock()
        text = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
        self.counts.clear()
        self.warnings += 1
        message = f"Listener {self.name} x refused or closed connections: {text}"
        logger.warning("%s", message)
        return message
