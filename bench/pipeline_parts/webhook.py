"""Part 3 of bench/pipeline.py, the webhook under load: the client process
(pipeline_parts/webhook_client.py) driven over a pipe, and a real Bot from
bot.demo.start_local_environment whose own hot loop carries the synthetic sessions while the
client posts signed roster notifications and times the answers."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bot.app import Bot
from bot.demo import start_local_environment
from emulator.login import NOTIFICATION_ISSUER
from emulator.notifier import NOTIFICATION_TOKEN_LIFETIME_SECONDS
from media.clock import MonotonicClock
from media.pipeline.hotloop import percentile
from media.pipeline.recorder import RecordingWriter
from pipeline_parts.load import (
    SPEAKERS,
    TICK,
    Feeder,
    FeederThread,
    FramePool,
    GcWatch,
    add_sessions,
    clear_dir,
    receive_dropped,
    recorder_dropped,
    remove_sessions,
)
from pipeline_parts.plan import Plan, log, ms
from pipeline_parts.webhook_client import client_role

ANSWER_SECONDS = 120.0


class ClientProcess:
    """The webhook client in its own process ("spawn"), over a pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=client_role, args=(child,), name="webhook-client", daemon=True
        )
        self.process.start()
        child.close()
        self._reply("start")

    def _reply(self, what: str) -> Any:
        conn: Connection = self.conn
        if not conn.poll(ANSWER_SECONDS):
            raise RuntimeError(f"webhook client: no answer to {what}")
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"webhook client: {what}: {value}")
        return value

    def run(self, options: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(("run", options))
        result: dict[str, Any] = self._reply("run")
        return result

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
                self._reply("stop")
            except (OSError, EOFError, RuntimeError):
                pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


def latency_summary(result: dict[str, Any]) -> dict[str, Any]:
    latencies = [float(x) for x in result["latencies"]]
    return {
        "count": len(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies, default=0.0)),
        "statuses": result["statuses"],
        "late_sends": result["late_sends"],
        "connects": result["connects"],
    }


async def webhook(
    pool: FramePool, plan: Plan, loads: list[int], out: Path, gcw: GcWatch, gc_freeze: bool
) -> dict[str, Any]:
    client = await asyncio.to_thread(ClientProcess)
    env = await start_local_environment(out / "env")
    bot = Bot(env.settings.replace(gc_freeze=gc_freeze))
    phases: dict[str, dict[str, Any]] = {}
    sequence = 0
    try:
        await bot.start()  # freezes the heap itself when gc_freeze (BOT_GC_FREEZE)
        key = env.emulator.notification_keys[0]
        claims = {
            "iss": NOTIFICATION_ISSUER,
            "aud": env.settings.app_id,
            "tid": env.settings.tenant_id,
        }
        hot_loop = bot.media.hot_loop

        async def post(label: str) -> dict[str, Any]:
            nonlocal sequence
            options = {
                "url": bot.callback_url,
                "ca_file": str(env.settings.ca_file),
                "token": key.sign(claims, NOTIFICATION_TOKEN_LIFETIME_SECONDS),
                "rate": plan.webhook_rate,
                "count": plan.webhook_count,
                "warmup": plan.webhook_warmup,
                "first": sequence,
            }
            stats = hot_loop.stats
            late0, ticks0, disabled0 = stats.late_ticks, stats.ticks, len(stats.disabled)
            gcw.take(1.0)
            t0 = time.monotonic()
            result = await asyncio.to_thread(client.run, options)
            collections = gcw.take(time.monotonic() - t0)
            sequence = int(result["next"])
            summary = latency_summary(result)
            ticks = max(1, stats.ticks - ticks0)
            summary["hot_loop_late_share"] = round((stats.late_ticks - late0) / ticks, 4)
            summary["processors_disabled"] = len(stats.disabled) - disabled0
            summary["gc"] = collections
            log(
                f"webhook {label}: p50 {summary['p50_ms']} p99 {summary['p99_ms']} max "
                f"{summary['max_ms']} ms over {summary['count']} posts, statuses "
                f"{summary['statuses']}, hot-loop late {summary['hot_loop_late_share']:.2%}, "
                f"full GCs {collections['gen2']} (max {collections['gen2_max_ms']} ms)"
            )
            return summary

        phases["idle"] = await post("idle")
        for streams in loads:
            writer = RecordingWriter()
            writer.start()
            made = add_sessions(
                hot_loop, pool, streams // SPEAKERS, "full", out / "rec", writer, prefix="load"
            )
            feeder = FeederThread(Feeder(pool, made), MonotonicClock(), time.monotonic() + TICK)
            feeder.start()
            try:
                await asyncio.sleep(plan.webhook_load_warmup)
                dropped0, rec_dropped0 = receive_dropped(made), recorder_dropped(made)
                phase = await post(f"{streams} streams")
                phase["receive_dropped"] = receive_dropped(made) - dropped0
                phase["recorder_dropped"] = recorder_dropped(made) - rec_dropped0
                phase["streams"] = streams
            finally:
                feeder.stop()
                await asyncio.to_thread(remove_sessions, hot_loop, made)
                writer.stop()
                clear_dir(out / "rec")
            phases[f"loaded_{streams}"] = phase
        stats = bot.webhook_stats
        accepted = stats.accepted if stats is not None else 0
        unauthorized = stats.unauthorized if stats is not None else 0
    finally:
        await bot.stop()
        await asyncio.to_thread(env.thread.stop)
        await asyncio.to_thread(client.close)
    return {"phases": phases, "accepted": accepted, "unauthorized": unauthorized}
