"""Leak checks for fault tests: asyncio tasks, threads and sockets back to a baseline.

Take the baseline after a warm-up (the first call starts thread pools that live on: aiortc's
codec executor, asyncio's default executor for getaddrinfo), run the call, then
`await back_to_baseline(baseline)`. Closing a peer connection or a transport finishes a few loop
iterations later and the kernel frees nothing we can await, so this polls the counts until they
match or the deadline passes, then fails with what is left over.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections import Counter
from dataclasses import dataclass

POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Resources:
    tasks: Counter[str]  # by coroutine name
    threads: Counter[str]  # by name without the pool's counter suffix
    sockets: int
    fds: int

    def excess_over(self, baseline: Resources) -> dict[str, object]:
        """What is here and not in the baseline (empty: nothing leaked)."""
        excess: dict[str, object] = {}
        tasks = self.tasks - baseline.tasks
        threads = self.threads - baseline.threads
        if tasks:
            excess["tasks"] = dict(tasks)
        if threads:
            excess["threads"] = dict(threads)
        if self.sockets > baseline.sockets:
            excess["sockets"] = self.sockets - baseline.sockets
        if self.fds > baseline.fds:
            excess["fds"] = self.fds - baseline.fds
        return excess


def snapshot() -> Resources:
    current = asyncio.current_task()
    tasks = Counter(
        getattr(t.get_coro(), "__qualname__", repr(t.get_coro()))
        for t in asyncio.all_tasks()
        if t is not current and not t.done()
    )
    threads = Counter(t.name.rsplit("_", 1)[0] for t in threading.enumerate())
    sockets = fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd, gone already
        fds += 1
        sockets += target.startswith("socket:")
    return Resources(tasks, threads, sockets, fds)


async def back_to_baseline(baseline: Resources, within_seconds: float = 10.0) -> None:
    """Wait until no task, thread or socket is left over the baseline; AssertionError if some
    still are after `within_seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_seconds
    while True:
        gc.collect()  # sockets of dropped transports close when collected
        excess = snapshot().excess_over(baseline)
        if not excess:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"left over after the call: {excess}")
        await asyncio.sleep(POLL_SECONDS)
