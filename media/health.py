"""Platform health from measured load: the Windows library's MediaPlatformHealthStatus, for us.

The Windows media library reports `Normal`, `HeavilyLoaded` ("avoid starting new bot calls on the
machine") and `Overloaded` ("new calls may be rejected"), raises `MediaPlatformHealthChanged` when
that changes, and makes `CreateMediaConfiguration` throw an "overloaded" `SkypeMediaException`
(MediaPlatformHealthStatus in https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html).
It does not say how it decides, so we decide from three inputs:

- CPU share of the machine used by this process, over a sliding window. Community advice for
  media bots is to stay below 70% CPU
  (https://github.com/microsoftgraph/microsoft-graph-comms-samples/issues/653).
- Media loop lag: how late a periodic timer on the media asyncio loop fires. In CPython the GIL
  can be saturated while the machine is mostly idle (four cores, one busy interpreter: 25%), so
  CPU share alone misses the overload that hurts us most; a late loop means late RTP.
- Optionally, the share of hot-loop ticks that ran more than one tick late (HotLoopStats).

`HealthMonitor` is pure (every call takes `now`), `LoopLagProbe` is one timer on the media loop,
and `PlatformHealth` ties them to a Clock and a CPU-time source.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from media.clock import Clock

logger = logging.getLogger(__name__)

LAG_PROBE_INTERVAL_SECONDS = 0.25


class HealthStatus(enum.StrEnum):
    """Values spelled as Graph spells MediaPlatformHealthStatus in JSON
    (MediaPlatformHealthStatus in https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html)."""

    NORMAL = "normal"
    HEAVILY_LOADED = "heavilyLoaded"
    OVERLOADED = "overloaded"


# Index = severity level; comparisons between statuses go through these levels.
_LEVELS = (HealthStatus.NORMAL, HealthStatus.HEAVILY_LOADED, HealthStatus.OVERLOADED)
_LEVEL = {status: level for level, status in enumerate(_LEVELS)}


class HealthError(Exception):
    """Root of the health boundary's errors."""


class PlatformOverloadedError(HealthError):
    """The platform is overloaded and refuses new sessions, like the Windows library's
    CreateMediaConfiguration throwing SkypeMediaException "overloaded".

    A caller with its own exception root can subclass both, aiohttp style
    (`class MediaPlatformOverloadedError(MediaPlatformError, PlatformOverloadedError)`), and pass
    the subclass to PlatformHealth as `overloaded_error`.
    """


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """When the status changes. Each input has a heavily-loaded and an overloaded threshold;
    the status is the worst level any input reaches.

    - CPU share (0..1 of the cores this process may run on): heavily loaded at 0.70, the
      community's "keep CPU below 70%" for media bots (microsoft-graph-comms-samples issue 653),
      because encode and decode run in software and a busy machine turns into late audio before
      it shows as 100%.
      Overloaded at 0.90: little headroom is left for a burst (a call joining, a GC pause).
    - Media loop lag, p95 over the window: heavily loaded at 20 ms, one audio frame, when
      packets start to leave a frame late; overloaded at 60 ms, three
      frames, close to the jitter buffer's 80 ms longest wait (media/jitter.py), beyond which the
      far end and we conceal rather than play.
    - Hot-loop late-tick share (optional input): a late tick is a whole 20 ms tick missed and
      re-anchored, an audible glitch. 1% (one every 2 s) is heavily loaded, 5% is overloaded.
    - Hysteresis, so the status does not flap: a level is entered when an input reaches its
      threshold and that held for `enter_hold_seconds`; it is left only when every input stayed
      below `release_ratio` of its threshold for `leave_hold_seconds`. Entering is quick, since
      refusing calls a second early is cheap; leaving is slow, since a machine that just shed
      load often takes it back.
    - The window (`window_seconds`, at most `max_samples` samples) bounds memory and sets how
      far back the figures look; CPU share over less than `min_cpu_span_seconds` is not judged.
    """

    cpu_heavily_loaded: float = 0.70
    cpu_overloaded: float = 0.90
    loop_lag_heavily_loaded_ms: float = 20.0
    loop_lag_overloaded_ms: float = 60.0
    late_tick_heavily_loaded: float = 0.01
    late_tick_overloaded: float = 0.05
    release_ratio: float = 0.8
    enter_hold_seconds: float = 1.0
    leave_hold_seconds: float = 5.0
    window_seconds: float = 5.0
    max_samples: int = 256
    min_cpu_span_seconds: float = 1.0

    def __post_init__(self) -> None:
        pairs = {
            "cpu": (self.cpu_heavily_loaded, self.cpu_overloaded),
            "loop_lag": (self.loop_lag_heavily_loaded_ms, self.loop_lag_overloaded_ms),
            "late_tick": (self.late_tick_heavily_loaded, self.late_tick_overloaded),
        }
        for name, (heavy, over) in pairs.items():
            if not 0 < heavy < over:
                raise ValueError(
                    f"{name}: need 0 < heavily_loaded < overloaded, got {heavy}, {over}"
                )
        if not 0 < self.release_ratio <= 1:
            raise ValueError(f"release_ratio must be in (0, 1], got {self.release_ratio}")
        if self.enter_hold_seconds < 0 or self.leave_hold_seconds < 0:
            raise ValueError("hold times must not be negative")
        if self.window_seconds <= 0 or self.min_cpu_span_seconds < 0:
            raise ValueError("window_seconds must be positive, min_cpu_span_seconds not negative")
        if self.max_samples < 2:
            raise ValueError(f"max_samples must be at least 2, got {self.max_samples}")


@dataclass(frozen=True, slots=True)
class HealthChange:
    """MediaPlatformHealthChanged: a plain message, safe to hand to another
    thread or process. Figures are over the monitor's window; None means not measured yet."""

    previous: HealthStatus
    current: HealthStatus
    cpu_share: float | None
    loop_lag_p95_ms: float | None
    reason: str
    late_tick_share: float | None = None
    at: float = 0.0  # the `now` of the sample that made the change


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """The latest status and figures, replaced whole on every sample so that another thread
    reading it never sees a torn mix of two samples."""

    status: HealthStatus = HealthStatus.NORMAL
    cpu_share: float | None = None
    loop_lag_p95_ms: float | None = None
    late_tick_share: float | None = None
    samples: int = 0
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class _Sample:
    now: float
    cpu_seconds: float
    loop_lag_seconds: float | None
    late_tick_share: float | None


def _p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile: with 20 samples (5 s at 0.25 s) one stall is ignored and
    two count."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def available_cpus() -> int:
    """Cores this process may run on: its affinity mask where the OS has one, else all cores.
    (A cgroup CPU quota is not seen here; pass cpu_count explicitly in such a container.)"""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class HealthMonitor:
    """Pure health logic: feed it samples with explicit `now`; it returns a HealthChange when the
    status changes. No clock reads, no I/O; memory bounded by thresholds.max_samples."""

    def __init__(self, thresholds: HealthThresholds | None = None, cpu_count: int = 1) -> None:
        if cpu_count < 1:
            raise ValueError(f"cpu_count must be at least 1, got {cpu_count}")
        self.thresholds = thresholds or HealthThresholds()
        self.cpu_count = cpu_count
        self._samples: deque[_Sample] = deque(maxlen=self.thresholds.max_samples)
        self._level = 0
        # Since when each level (1, 2) has been continuously reached (for entering) or
        # continuously released (for leaving); index 0 is unused.
        self._reached_since: list[float | None] = [None, None, None]
        self._released_since: list[float | None] = [None, None, None]
        self.latest = HealthSnapshot()

    @property
    def status(self) -> HealthStatus:
        return self.latest.status

    @property
    def cpu_share(self) -> float | None:
        return self.latest.cpu_share

    @property
    def loop_lag_p95_ms(self) -> float | None:
        return self.latest.loop_lag_p95_ms

    @property
    def late_tick_share(self) -> float | None:
        return self.latest.late_tick_share

    @property
    def sample_count(self) -> int:
        return len(self._samples)

    def sample(
        self,
        now: float,
        cpu_seconds: float,
        loop_lag_seconds: float | None = None,
        late_tick_share: float | None = None,
    ) -> HealthChange | None:
        """Add one sample. `cpu_seconds` is a cumulative CPU-time counter (time.process_time());
        `loop_lag_seconds` how late the last probe timer fired; `late_tick_share` the share of
        hot-loop ticks that were late since the previous sample. Raises ValueError if `now` goes
        backwards."""
        if self._samples and now < self._samples[-1].now:
            raise ValueError(f"now went backwards: {now} < {self._samples[-1].now}")
        self._samples.append(_Sample(now, cpu_seconds, loop_lag_seconds, late_tick_share))
        horizon = now - self.thresholds.window_seconds
        while len(self._samples) > 1 and self._samples[0].now < horizon:
            self._samples.popleft()

        cpu, lag_ms, late = self._figures()
        reached, released = self._levels(cpu, lag_ms, late)
        for level in (1, 2):
            self._reached_since[level] = _track(reached >= level, self._reached_since[level], now)
            self._released_since[level] = _track(released < level, self._released_since[level], now)

        previous = self._level
        self._level = self._next_level(now)
        self.latest = HealthSnapshot(
            _LEVELS[self._level], cpu, lag_ms, late, len(self._samples), now
        )
        if self._level == previous:
            return None
        return HealthChange(
            previous=_LEVELS[previous],
            current=_LEVELS[self._level],
            cpu_share=cpu,
            loop_lag_p95_ms=lag_ms,
            reason=self._reason(self._level > previous, cpu, lag_ms, late),
            late_tick_share=late,
            at=now,
        )

    def _figures(self) -> tuple[float | None, float | None, float | None]:
        first, last = self._samples[0], self._samples[-1]
        span = last.now - first.now
        cpu: float | None = None
        if span > 0 and span >= self.thresholds.min_cpu_span_seconds:
            # max(0): a counter that went backwards is a bug elsewhere, not negative load.
            cpu = max(0.0, last.cpu_seconds - first.cpu_seconds) / span / self.cpu_count
        lags = [s.loop_lag_seconds for s in self._samples if s.loop_lag_seconds is not None]
        lag_ms = _p95(lags) * 1000.0 if lags else None
        shares = [s.late_tick_share for s in self._samples if s.late_tick_share is not None]
        late = sum(shares) / len(shares) if shares else None
        return cpu, lag_ms, late

    def _inputs(
        self, cpu: float | None, lag_ms: float | None, late: float | None
    ) -> list[tuple[str, float, float, float, str]]:
        """(name, value, heavily_loaded, overloaded, unit format) for each measured input."""
        t = self.thresholds
        inputs: list[tuple[str, float, float, float, str]] = []
        if cpu is not None:
            inputs.append(("cpu", cpu, t.cpu_heavily_loaded, t.cpu_overloaded, "{:.2f}"))
        if lag_ms is not None:
            inputs.append(
                (
                    "loop lag p95",
                    lag_ms,
                    t.loop_lag_heavily_loaded_ms,
                    t.loop_lag_overloaded_ms,
                    "{:.0f} ms",
                )
            )
        if late is not None:
            inputs.append(
                ("late ticks", late, t.late_tick_heavily_loaded, t.late_tick_overloaded, "{:.1%}")
            )
        return inputs

    def _levels(
        self, cpu: float | None, lag_ms: float | None, late: float | None
    ) -> tuple[int, int]:
        """(reached, released): the worst level any input reaches at its threshold, and the
        worst level any input still holds above its release point (ratio * threshold)."""
        ratio = self.thresholds.release_ratio
        reached = released = 0
        for _, value, heavy, over, _ in self._inputs(cpu, lag_ms, late):
            reached = max(reached, 2 if value >= over else 1 if value >= heavy else 0)
            released = max(
                released, 2 if value >= over * ratio else 1 if value >= heavy * ratio else 0
            )
        return reached, released

    def _next_level(self, now: float) -> int:
        t = self.thresholds
        for level in (2, 1):  # the worst level whose condition held long enough
            since = self._reached_since[level]
            if level > self._level and since is not None and now - since >= t.enter_hold_seconds:
                return level
        for level in range(self._level):  # the best level every input released long enough
            since = self._released_since[level + 1]
            if since is not None and now - since >= t.leave_hold_seconds:
                return level
        return self._level

    def _reason(
        self, rising: bool, cpu: float | None, lag_ms: float | None, late: float | None
    ) -> str:
        parts: list[str] = []
        for name, value, heavy, over, fmt in self._inputs(cpu, lag_ms, late):
            if rising:
                limit = over if self._level == 2 else heavy
                if value >= limit:
                    parts.append(f"{name} {fmt.format(value)} >= {fmt.format(limit)}")
            else:
                limit = (over if self._level == 1 else heavy) * self.thresholds.release_ratio
                parts.append(f"{name} {fmt.format(value)} < {fmt.format(limit)}")
        if not parts:
            return "no inputs measured"
        return ", ".join(parts)


def _track(condition: bool, since: float | None, now: float) -> float | None:
    """Since when `condition` has held without a break, or None while it does not hold."""
    if not condition:
        return None
    return now if since is None else since


class LoopLagProbe:
    """Measures how late a timer fires on an asyncio loop: one `call_at` per interval, no task,
    no sleep, no thread. Each firing reports its lag (seconds, by loop.time()) to `on_lag`, on
    the loop's own thread.

    The next timer is armed from when the last one actually fired, so a loop blocked for 200 ms
    reports one 200 ms lag rather than a burst of catch-up samples.
    """

    def __init__(
        self,
        on_lag: Callable[[float], object],
        interval: float = LAG_PROBE_INTERVAL_SECONDS,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self._on_lag = on_lag
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._running = False
        self.last_lag_seconds: float | None = None
        self.callback_errors = 0

    @property
    def running(self) -> bool:
        return self._running

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread-safe: arms the first timer on `loop`'s own thread."""
        if self._running:
            raise RuntimeError("LoopLagProbe is already running")
        self._loop = loop
        self._running = True
        loop.call_soon_threadsafe(self._arm)

    def stop(self) -> None:
        """Thread-safe. After this no more lags are reported."""
        self._running = False
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._cancel()
        else:
            try:
                loop.call_soon_threadsafe(self._cancel)
            except RuntimeError:  # closed between the check and the call: the timer died with it
                pass

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        loop = self._loop
        if not self._running or loop is None:
            return
        due = loop.time() + self.interval
        self._handle = loop.call_at(due, self._fire, due)

    def _fire(self, due: float) -> None:
        self._handle = None
        if not self._running or self._loop is None:
            return
        lag = max(0.0, self._loop.time() - due)
        self.last_lag_seconds = lag
        try:
            self._on_lag(lag)
        except Exception:  # a bug in the consumer must not stop the probe or the media loop
            self.callback_errors += 1
            if self.callback_errors == 1:
                logger.exception("LoopLagProbe x callback failed (logged once; counted after)")
        self._arm()


class TickStats(Protocol):
    """What LateTickShare reads: HotLoopStats has both counters."""

    @property
    def ticks(self) -> int: ...

    @property
    def late_ticks(self) -> int: ...


class LateTickShare:
    """Turns the hot loop's cumulative counters into "share of ticks late since the last call",
    the `late_tick_share` input. None when no tick ran in between (nothing to judge)."""

    def __init__(self, stats: TickStats) -> None:
        self._stats = stats
        self._ticks = stats.ticks
        self._late = stats.late_ticks

    def __call__(self) -> float | None:
        # Read late_ticks first: the hot loop bumps it after ticks, so a tick that lands between
        # the two reads can only lower the share, never push it past what happened.
        late, ticks = self._stats.late_ticks, self._stats.ticks
        d_ticks, d_late = ticks - self._ticks, late - self._late
        self._ticks, self._late = ticks, late
        if d_ticks <= 0:
            return None
        return min(1.0, max(0.0, d_late / d_ticks))


class PlatformHealth:
    """Drives a HealthMonitor from a LoopLagProbe on the media loop: each probe firing samples CPU
    time, the loop lag and (optionally) the hot loop's late ticks, on the media thread.

    `status`, `snapshot` and `check_can_create_session()` may be read from any thread: they read
    one immutable snapshot. `on_change` runs on the media loop's thread and must not block.
    """

    def __init__(
        self,
        clock: Clock,
        cpu_time: Callable[[], float] = time.process_time,
        on_change: Callable[[HealthChange], None] | None = None,
        thresholds: HealthThresholds | None = None,
        cpu_count: int | None = None,
        late_tick_share: Callable[[], float | None] | None = None,
        overloaded_error: type[PlatformOverloadedError] = PlatformOverloadedError,
        interval: float = LAG_PROBE_INTERVAL_SECONDS,
    ) -> None:
        self._clock = clock
        self._cpu_time = cpu_time
        self._on_change = on_change or (lambda change: None)
        self._late_tick_share = late_tick_share
        self._overloaded_error = overloaded_error
        self.monitor = HealthMonitor(thresholds, cpu_count or available_cpus())
        self.probe = LoopLagProbe(self.sample, interval)

    @property
    def status(self) -> HealthStatus:
        return self.monitor.latest.status

    @property
    def snapshot(self) -> HealthSnapshot:
        return self.monitor.latest

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start probing `loop` (the media loop). Thread-safe: the CPU baseline and every sample
        after it are taken on the loop's thread, so the monitor has a single writer."""
        loop.call_soon_threadsafe(self.sample)
        self.probe.start(loop)

    def detach(self) -> None:
        self.probe.stop()

    def sample(self, loop_lag_seconds: float | None = None) -> HealthChange | None:
        """One sample now; the probe calls this, tests may call it with a FakeClock."""
        late = self._late_tick_share() if self._late_tick_share is not None else None
        change = self.monitor.sample(self._clock.now(), self._cpu_time(), loop_lag_seconds, late)
        if change is None:
            return None
        level = (
            logging.WARNING if _LEVEL[change.current] > _LEVEL[change.previous] else logging.INFO
        )
        logger.log(
            level, "PlatformHealth %s -> %s (%s)", change.previous, change.current, change.reason
        )
        try:
            self._on_change(change)
        except Exception:  # the consumer's bug must not break the media loop
            logger.exception("PlatformHealth x on_change failed for %s", change)
        return change

    def check_can_create_session(self) -> None:
        """Raise `overloaded_error` when overloaded, as CreateMediaConfiguration throws
        "overloaded". Heavily loaded still admits: Microsoft only advises
        against new calls there, and the control side can prefer another instance."""
        snapshot = self.monitor.latest
        if snapshot.status is HealthStatus.OVERLOADED:
            raise self._overloaded_error(
                f"media platform overloaded (cpu {_fmt(snapshot.cpu_share, '{:.2f}')}, "
                f"loop lag p95 {_fmt(snapshot.loop_lag_p95_ms, '{:.0f} ms')})"
            )


def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)
