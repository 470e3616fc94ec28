"""The pipeline benchmark's run plans (bench/pipeline.py): the quick and full Plan of runs,
ladders, windows and webhook posts, and the progress log on stderr."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    runs: int
    ticks: int
    warmup_ticks: int
    micro_calls: int
    ladder: tuple[int, ...]
    rt_warmup: float
    rt_window: float
    repeats: int
    bisect: bool
    webhook_rate: float
    webhook_count: int
    webhook_warmup: int
    webhook_load_warmup: float
    webhook_also_400: bool


QUICK = Plan(
    name="quick",
    runs=3,
    ticks=120,
    warmup_ticks=30,
    micro_calls=5000,
    ladder=(400, 600, 800, 1000),
    rt_warmup=0.5,
    rt_window=3.0,
    repeats=1,
    bisect=False,
    webhook_rate=50.0,
    webhook_count=300,
    webhook_warmup=20,
    webhook_load_warmup=0.5,
    webhook_also_400=True,
)
FULL = Plan(
    name="full",
    runs=5,
    ticks=300,
    warmup_ticks=50,
    micro_calls=20000,
    ladder=(100, 200, 400, 600, 800, 1000, 1200, 1600, 2000, 2400, 3200),
    rt_warmup=1.0,
    rt_window=8.0,
    repeats=3,
    bisect=True,
    webhook_rate=50.0,
    webhook_count=1000,
    webhook_warmup=50,
    webhook_load_warmup=2.0,
    webhook_also_400=True,
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
