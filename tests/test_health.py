"""Platform health: the pure monitor fed synthetic load with explicit `now`, the driver on a fake
clock, and the loop-lag probe once on a real loop that a callback blocks on purpose."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import pytest

from media.clock import FakeClock
from media.health import (
    HealthChange,
    HealthMonitor,
    HealthStatus,
    HealthThresholds,
    LateTickShare,
    LoopLagProbe,
    PlatformHealth,
    PlatformOverloadedError,
)

NORMAL = HealthStatus.NORMAL
HEAVY = HealthStatus.HEAVILY_LOADED
OVER = HealthStatus.OVERLOADED
STEP = 0.25  # the probe's default interval


class Load:
    """Feeds a monitor one sample per STEP, as the probe would, from a chosen load."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor
        self.now = 0.0
        self.cpu_seconds = 0.0
        monitor.sample(self.now, self.cpu_seconds)

    def run(
        self,
        seconds: float,
        cpu_share: float = 0.1,
        lag_ms: float | None = None,
        late: float | None = None,
    ) -> list[HealthChange]:
        changes: list[HealthChange] = []
        for _ in range(round(seconds / STEP)):
            self.now += STEP
            self.cpu_seconds += cpu_share * STEP * self.monitor.cpu_count
            lag = None if lag_ms is None else lag_ms / 1000
            change = self.monitor.sample(self.now, self.cpu_seconds, lag, late)
            if change is not None:
                changes.append(change)
        return changes


def transitions(changes: list[HealthChange]) -> list[tuple[HealthStatus, HealthStatus]]:
    return [(c.previous, c.current) for c in changes]


def test_cpu_share_is_cpu_time_over_wall_time_over_cores() -> None:
    monitor = HealthMonitor(cpu_count=4)
    assert monitor.sample(10.0, 100.0) is None
    assert monitor.cpu_share is None  # one sample: nothing to divide yet
    monitor.sample(12.0, 104.0)  # 4 CPU-seconds in 2 s on 4 cores
    assert monitor.cpu_share == pytest.approx(0.5)
    assert monitor.status is NORMAL


def test_cpu_drives_normal_heavy_overloaded_and_back() -> None:
    load = Load(HealthMonitor(cpu_count=4))
    assert load.run(10, cpu_share=0.3) == []

    up = load.run(10, cpu_share=0.8)
    assert transitions(up) == [(NORMAL, HEAVY)]
    # The 5 s window reaches 0.70 after 4 s at 0.8, then the status waits the 1 s enter hold.
    assert up[0].at == pytest.approx(15.0, abs=STEP)
    assert up[0].cpu_share is not None and up[0].cpu_share >= 0.70
    assert up[0].reason.startswith("cpu 0.")

    over = load.run(10, cpu_share=0.95)
    assert transitions(over) == [(HEAVY, OVER)]

    down = load.run(20, cpu_share=0.2)
    # Overloaded is released below 0.72 (0.8 * 0.90), heavily loaded below 0.56, each only
    # after 5 s, so it steps down through heavily loaded.
    assert transitions(down) == [(OVER, HEAVY), (HEAVY, NORMAL)]
    assert down[0].at < down[1].at
    assert "<" in down[1].reason
    assert load.monitor.status is NORMAL


def test_between_release_and_enter_the_status_stays() -> None:
    load = Load(HealthMonitor(cpu_count=2))
    assert transitions(load.run(10, cpu_share=0.8)) == [(NORMAL, HEAVY)]
    # 0.62 is below the 0.70 entry but above the 0.56 release: still heavily loaded.
    assert load.run(60, cpu_share=0.62) == []
    assert load.monitor.status is HEAVY


def test_hysteresis_stops_flapping_around_the_threshold() -> None:
    def noisy(monitor: HealthMonitor) -> list[HealthChange]:
        rng = random.Random(7)
        now = cpu = 0.0
        changes: list[HealthChange] = []
        for _ in range(2400):  # 10 minutes at 0.25 s, CPU hovering around 0.70
            now += STEP
            cpu += rng.uniform(0.55, 0.85) * STEP
            change = monitor.sample(now, cpu)
            if change is not None:
                changes.append(change)
        return changes

    without = HealthThresholds(release_ratio=1.0, enter_hold_seconds=0, leave_hold_seconds=0)
    assert len(noisy(HealthMonitor(without))) > 10  # what hysteresis is for
    assert transitions(noisy(HealthMonitor())) == [(NORMAL, HEAVY)]


def test_a_single_late_timer_is_below_the_p95() -> None:
    load = Load(HealthMonitor())
    assert load.run(5, lag_ms=1) + load.run(0.25, lag_ms=100) + load.run(10, lag_ms=1) == []


def test_a_short_dip_does_not_leave_the_level() -> None:
    load = Load(HealthMonitor(HealthThresholds(window_seconds=1.0)))
    assert transitions(load.run(3, lag_ms=30)) == [(NORMAL, HEAVY)]
    # Released for under 2 s once the window has cleared, less than the 5 s leave hold.
    assert load.run(3, lag_ms=1) == []
    assert load.run(2, lag_ms=30) == []
    start = load.now
    changes = load.run(8, lag_ms=1)
    assert transitions(changes) == [(HEAVY, NORMAL)]
    # The window clears 1.25 s in (a sample exactly at the horizon stays), then 5 s of hold.
    assert changes[0].at == pytest.approx(start + 1.25 + 5)


def test_loop_lag_drives_the_status() -> None:
    load = Load(HealthMonitor(cpu_count=8))
    assert load.run(5, lag_ms=5) == []
    assert load.monitor.loop_lag_p95_ms == pytest.approx(5)

    heavy = load.run(6, lag_ms=25)
    assert transitions(heavy) == [(NORMAL, HEAVY)]
    assert heavy[0].reason == "loop lag p95 25 ms >= 20 ms"
    assert heavy[0].loop_lag_p95_ms == pytest.approx(25)

    over = load.run(6, lag_ms=80)
    assert transitions(over) == [(HEAVY, OVER)]
    assert over[0].reason == "loop lag p95 80 ms >= 60 ms"
    assert load.monitor.cpu_share == pytest.approx(0.1)  # CPU alone says all is well


def test_late_ticks_can_jump_straight_to_overloaded() -> None:
    load = Load(HealthMonitor())
    # From the first sample both thresholds are crossed: after the enter hold, the status goes
    # to the worst level reached, without a stop at heavily loaded.
    changes = load.run(5, late=0.2)
    assert transitions(changes) == [(NORMAL, OVER)]
    assert "late ticks" in changes[0].reason
    assert load.monitor.late_tick_share is not None and load.monitor.late_tick_share > 0.05


def test_window_evicts_old_samples_and_memory_is_bounded() -> None:
    load = Load(HealthMonitor())
    load.run(0.5, lag_ms=100)
    load.run(20, lag_ms=2)
    assert load.monitor.sample_count == 21  # 5 s / 0.25 s, plus the sample at the horizon
    assert load.monitor.loop_lag_p95_ms == pytest.approx(2)  # the 100 ms samples aged out

    small = HealthMonitor(HealthThresholds(max_samples=16))
    for i in range(10_000):
        small.sample(i * 0.0001, i * 0.00005, 0.001)
    assert small.sample_count == 16
    assert small.cpu_share is None  # 16 samples span less than min_cpu_span_seconds


def test_bad_input_is_refused() -> None:
    monitor = HealthMonitor()
    monitor.sample(5.0, 1.0)
    with pytest.raises(ValueError, match="backwards"):
        monitor.sample(4.0, 1.0)
    with pytest.raises(ValueError):
        HealthThresholds(cpu_heavily_loaded=0.9, cpu_overloaded=0.7)
    with pytest.raises(ValueError):
        HealthThresholds(release_ratio=1.5)
    with pytest.raises(ValueError):
        HealthMonitor(cpu_count=0)


@dataclass
class Counters:
    ticks: int = 0
    late_ticks: int = 0


def test_late_tick_share_is_per_interval() -> None:
    stats = Counters(ticks=100, late_ticks=3)
    share = LateTickShare(stats)
    assert share() is None  # no tick since it was made
    stats.ticks, stats.late_ticks = 150, 8
    assert share() == pytest.approx(0.1)
    stats.ticks = 200
    assert share() == 0.0


class CpuCounter:
    """A CPU-time source that burns exactly what the test says."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.seconds


class OverloadedForTest(ValueError, PlatformOverloadedError):
    """A caller's own root mixed in, as media/platform.py would do with MediaPlatformError."""


def test_check_can_create_session_raises_only_when_overloaded() -> None:
    clock, cpu = FakeClock(), CpuCounter()
    changes: list[HealthChange] = []
    health = PlatformHealth(
        clock, cpu, changes.append, cpu_count=1, overloaded_error=OverloadedForTest
    )

    def run(seconds: float, share: float) -> None:
        for _ in range(round(seconds / STEP)):
            clock.advance(STEP)
            cpu.seconds += share * STEP
            health.sample(0.001)

    health.sample()
    run(10, 0.3)
    health.check_can_create_session()
    run(10, 0.8)
    assert health.status is HEAVY
    health.check_can_create_session()  # heavily loaded still admits, as the Windows library does
    run(10, 0.99)
    assert health.status is OVER
    with pytest.raises(OverloadedForTest, match="overloaded") as info:
        health.check_can_create_session()
    assert isinstance(info.value, PlatformOverloadedError)
    run(30, 0.1)
    assert health.status is NORMAL
    health.check_can_create_session()
    assert [c.current for c in changes] == [HEAVY, OVER, HEAVY, NORMAL]
    assert health.snapshot.status is NORMAL and health.snapshot.samples > 0


def test_a_failing_on_change_does_not_escape() -> None:
    clock, cpu = FakeClock(), CpuCounter()

    def broken(change: HealthChange) -> None:
        raise RuntimeError("consumer bug")

    health = PlatformHealth(clock, cpu, broken, cpu_count=1)
    health.sample()
    for _ in range(20):
        clock.advance(STEP)
        cpu.seconds += STEP
        health.sample()
    assert health.status is OVER


def _busy_wait(seconds: float) -> None:
    """The load under test: holds the loop without yielding."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_probe_measures_a_loop_blocked_by_a_callback() -> None:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    measured = asyncio.Event()

    def on_lag(lag: float) -> None:
        lags.append(lag)
        if len(lags) == 1:
            # Runs before the timer the probe is about to arm (due in 5 ms) can fire.
            loop.call_soon(_busy_wait, 0.060)
        elif len(lags) == 2:
            measured.set()

    probe = LoopLagProbe(on_lag, interval=0.005)
    probe.start(loop)
    try:
        await asyncio.wait_for(measured.wait(), 2.0)
    finally:
        probe.stop()
    assert lags[1] >= 0.040
    assert probe.last_lag_seconds is not None and not probe.running

    stopped = len(lags)
    later = asyncio.Event()
    loop.call_later(0.03, later.set)  # several intervals: a running probe would fire again
    await asyncio.wait_for(later.wait(), 1.0)
    assert len(lags) == stopped


async def test_platform_health_samples_on_the_loop_it_attaches_to() -> None:
    loop = asyncio.get_running_loop()
    enough = asyncio.Event()

    class Counting(CpuCounter):
        def __call__(self) -> float:
            if self.calls >= 3:
                enough.set()
            return super().__call__()

    cpu = Counting()
    health = PlatformHealth(FakeClock(), cpu, interval=0.005, cpu_count=1)
    health.attach(loop)
    try:
        await asyncio.wait_for(enough.wait(), 2.0)
    finally:
        health.detach()
    assert health.snapshot.samples >= 3
    assert health.snapshot.loop_lag_p95_ms is not None
