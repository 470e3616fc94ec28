"""Capacity: the bot process's CPU per concurrent audio call against stock aiortc, and the most
calls one bot process holds in real time.

Every call carries audio both ways at 50 frames/s: the emulated meeting's one participant talks
all the time, and the bot echoes every frame back. Processes (multiprocessing, "spawn"; the
workers' code is in capacity_parts/workers.py and capacity_parts/stock.py):
- emulator: Graph/Teams in light mode (EmulatorConfig.media_light: cached pre-encoded packets
  out, the bot's packets only counted in), on uvloop, so that the load generator is not the
  limit. Its own figures come back with each window: loop lag (a 10 ms probe) and GC pauses.
  Like stock-gen it runs gc.freeze() every second: its full collections stalled it for 35-45 ms;
- bot: a Bot whose processor per call echoes each frame and stores, in preallocated numpy rings
  (on the hot loop), the frame's arrival (AudioFrame.timestamp), its capture at the participant
  (original_sender_timestamp, from abs-capture-time) and when the hot loop saw it. All are
  CLOCK_MONOTONIC in 100 ns ticks, system-wide on Linux, so delays across processes are valid;
- stock and stock-gen, measured in the same run: K_stock plain aiortc RTCPeerConnection
  (iceServers=[]) in the stock process, each receiving Opus through the stock RemoteStreamTrack
  (a task per connection awaits recv(), so the jitter buffer and decode run; frames are dropped)
  and sending 20 ms 16 kHz mono frames, paced to the wall clock, through aiortc's own encoder.
  Stock-gen is their far end: pre-encoded Opus as av.Packet through the stock sender's pack path,
  and a counting no-op as each receiver's _handle_rtp_packet. The stock process runs the default
  asyncio loop, stock as shipped (--stock-loop uvloop to compare);
- this process only coordinates over pipes and reads CPU from /proc/<pid>/stat (utime + stime,
  all threads) over a steady window after a warm-up; per thread for the bot too
  (/proc/<pid>/task/<tid>/stat, named from threading.enumerate()), and the machine's busy and
  steal time from /proc/stat, to tell a noisy machine from a slow bot.

Real time at K calls, over the window: per call, drift = delay - that call's smallest delay in
the window; p99 drift over all frames <= 20 ms; frames more than 60 ms late (drift > 60 ms)
< 0.5 %; frames received >= 99 % of 50/s per call on average and >= 95 % on the worst call; and
what the bot sent, counted at the emulator (heard_arrivals), by the same two rates. K ramps up by
joining more calls into the running bot (each join is its own call and media link). A join
refused (MediaPlatformOverloadedError) or not established fails that K. After the first failure
a full run bisects (hanging calls up or joining more) to --resolution calls.

bot_cpu_ms_per_call_s = bot-process CPU ms per wall second / K at --cpu-k (20: surely holds);
stock_cpu_ms_per_call_s = the same for the stock process at --stock-k (20). The bot's figure
includes its idle cost (bot_idle_cpu_percent, measured before the first join).

What decides max_realtime_calls on the 2-core dev VM is the bot's garbage collector, not its CPU:
from about 30 calls on, full collections of 30-90 ms come every few seconds (gc_* per row), and
two or three in one window push p99 drift past 20 ms, so the result varies between runs.
--bot-gc freeze shows the bot with gc.freeze() every second (a what-if: the bot does not do this).
--profile PATH: at --cpu-k in the first run, cProfile the media loop's thread for one more window,
after the CPU window so that the profiler's cost is not in the figures.

Prints progress on stderr and one JSON object as the last line of stdout. --quick (under a
minute): ramp 10/30/60 with 3 s windows and 3 s warm-ups, CPU at K=10, stock K=10. Full: ramp
10..200 with 10 s windows and 5 s warm-ups, CPU at K=20, stock K=20, bisection after a failure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capacity_parts.stock import stock_role, stockgen_role  # noqa: E402
from capacity_parts.workers import (  # noqa: E402
    ANSWER_SECONDS,
    DRIFT_P99_LIMIT_MS,
    ESTABLISH_SECONDS,
    FRAMES_PER_SECOND,
    LATE_MS,
    LATE_SHARE_LIMIT,
    MAX_WINDOW_SECONDS,
    RATE_SHARE,
    WORST_RATE_SHARE,
    bot_role,
    emulator_role,
    worker_logging,
)
from common_parts.worker_pipe import Worker, WorkerError  # noqa: E402

from bot.devcerts import make_dev_certs  # noqa: E402
from bot.settings import Settings  # noqa: E402
from emulator import EmulatorConfig  # noqa: E402
from emulator.participant import demo_meeting  # noqa: E402
from emulator.server import AppRegistration  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL = {"ratio_at_most": 0.5, "max_realtime_calls_at_least": 60}


def cpu_seconds(path: str) -> float:
    with open(path) as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def machine_times() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of all cores, from /proc/stat's first line."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    idle, steal, total = values[3] + values[4], values[7], sum(values)
    return total - idle - steal, steal, total


@dataclass
class Window:
    t0: float
    t1: float
    cpu_percent: dict[str, float]
    thread_percent: dict[str, float]
    machine_busy_percent: float  # of all cores: 100 = every core busy
    steal_percent: float  # of all cores: time the hypervisor gave to someone else

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


def measure(seconds: float, pids: dict[str, int], threads: dict[str, int] | None = None) -> Window:
    """Process (and optionally per-thread) CPU over a window of wall time; 100 % = one core."""
    paths = {name: f"/proc/{pid}/stat" for name, pid in pids.items()}
    bot_pid = pids.get("bot")
    tasks = {n: f"/proc/{bot_pid}/task/{tid}/stat" for n, tid in (threads or {}).items()}

    def read() -> dict[str, float]:
        values = {}
        for name, path in (paths | tasks).items():
            try:
                values[name] = cpu_seconds(path)
            except (OSError, ValueError, IndexError):
                values[name] = float("nan")  # a thread that ended
        return values

    before, machine_before = read(), machine_times()
    t0 = time.monotonic()
    time.sleep(seconds)  # the measurement window
    t1 = time.monotonic()
    after, machine_after = read(), machine_times()
    span = t1 - t0
    busy, steal, total = (b - a for a, b in zip(machine_before, machine_after, strict=True))

    def percent(name: str) -> float:
        return round(100 * (after[name] - before[name]) / span, 1)

    return Window(
        t0,
        t1,
        {name: percent(name) for name in paths},
        {name: percent(name) for name in tasks if percent(name) == percent(name)},
        round(100 * busy / max(1, total), 1),
        round(100 * steal / max(1, total), 1),
    )


@dataclass(frozen=True)
class Plan:
    ramp: tuple[int, ...]
    window: float
    warmup: float
    cpu_k: int
    stock_k: int
    bisect: bool
    resolution: int
    stock_uvloop: bool
    profile: str | None
    bot_gc_freeze: bool = False


def rate_check(label: str, rates: list[float], why: list[str]) -> tuple[float, float]:
    mean = statistics.fmean(rates) if rates else 0.0
    worst = min(rates) if rates else 0.0
    if mean < RATE_SHARE * FRAMES_PER_SECOND:
        why.append(f"{label} {mean:.1f}/s per call < {RATE_SHARE * FRAMES_PER_SECOND:g}")
    if worst < WORST_RATE_SHARE * FRAMES_PER_SECOND:
        why.append(f"{label} worst call {worst:.1f}/s < {WORST_RATE_SHARE * FRAMES_PER_SECOND:g}")
    return round(mean, 2), round(worst, 2)


def measure_stock(ctx: SpawnContext, plan: Plan) -> dict[str, Any]:
    k = plan.stock_k
    gen = Worker(ctx, "stock-gen", stockgen_role)
    stock = Worker(ctx, "stock", stock_role, plan.stock_uvloop)
    try:
        gen.reply("start", ANSWER_SECONDS)
        stock.reply("start", ANSWER_SECONDS)
        answers = stock.ask("answer", gen.ask("offer", k))
        gen.ask("accept", answers)
        flowing = stock.ask("flowing", 20.0)
        if flowing < k:
            raise WorkerError(f"stock: only {flowing} of {k} connections carry audio")
        time.sleep(plan.warmup)  # warm-up: connections settle, jitter buffers fill
        window = measure(plan.window, {"stock": stock.pid, "gen": gen.pid})
        rx = stock.ask("stats", window.t0, window.t1)
        tx = gen.ask("heard", window.t0, window.t1)
    finally:
        stock.close()
        gen.close()
    why: list[str] = []
    rx_mean, rx_worst = rate_check("rx", rx["rates"], why)
    tx_mean, tx_worst = rate_check("tx", [n / window.seconds for n in tx["heard"]], why)
    cpu = window.cpu_percent["stock"]
    return {
        "calls": k,
        "cpu_percent": cpu,
        "cpu_ms_per_call_s": round(cpu * 10 / k, 2),  # % of a core = 10 ms per second
        "drift_p99_ms": rx["drift_p99_ms"],
        "late_share": rx["late_share"],
        "rx_per_call": rx_mean,
        "rx_worst": rx_worst,
        "tx_per_call": tx_mean,
        "tx_worst": tx_worst,
        "holds": not why and rx["drift_p99_ms"] <= DRIFT_P99_LIMIT_MS,
        "why": why,
        "generator_cpu_percent": window.cpu_percent["gen"],
        "generator_lag_p99_ms": tx["lag_p99_ms"],
        "generator_lag_max_ms": tx["lag_max_ms"],
        "machine_busy_percent": window.machine_busy_percent,
        "steal_percent": window.steal_percent,
        **{k: v for k, v in rx.items() if k.startswith("gc_")},
    }


class BotRig:
    """The emulator and bot processes of one run, and the measurement of one K."""

    def __init__(self, ctx: SpawnContext, plan: Plan, out: Path) -> None:
        self.plan = plan
        self.active = 0
        certs = make_dev_certs(out / "certs")
        settings = Settings(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            ca_file=certs.ca_file,
            webhook_port=0,
            instance_internal_port=0,
        )
        config = EmulatorConfig(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            trust_file=certs.ca_file,
            apps={
                settings.app_id: AppRegistration(
                    settings.app_id, settings.app_secret, settings.tenant_id
                )
            },
            meetings=[demo_meeting(settings.tenant_id)],  # one participant talking all the time
            media_light=True,
        )
        self.bot: Worker | None = None
        self.emulator = Worker(ctx, "emulator", emulator_role, config)
        started = self.emulator.reply("start", ANSWER_SECONDS)
        join_url, base = started["join_url"], started["base"]
        settings = settings.replace(
            graph_url=f"{base}/v1.0",
            authority_url=base,
            notification_openid_url=f"{base}/v1/.well-known/OpenIdConfiguration",
        )
        self.bot = Worker(ctx, "bot", bot_role, settings, join_url, plan.bot_gc_freeze)
        self.bot.reply("start", ANSWER_SECONDS)

    def close(self) -> None:
        if self.bot is not None:
            self.bot.close()
        self.emulator.close()

    def pids(self) -> dict[str, int]:
        assert self.bot is not None
        return {"bot": self.bot.pid, "gen": self.emulator.pid}

    def idle_cpu(self) -> float:
        assert self.bot is not None
        return measure(min(2.0, self.plan.window), self.pids()).cpu_percent["bot"]

    def set_calls(self, k: int) -> dict[str, Any]:
        """Join or hang up calls until k are up; what the join said."""
        assert self.bot is not None
        joined: dict[str, Any] = {"errors": [], "failed": 0, "seconds": 0.0}
        if k > self.active:
            n = k - self.active
            joined = self.bot.ask("join", n, timeout=ESTABLISH_SECONDS * 2 + n)
            self.active = joined["active"]
        elif k < self.active:
            self.active = self.bot.ask("hangup", self.active - k)
            time.sleep(self.plan.warmup)  # let the survivors settle after a failed K
        return joined

    def measure_k(self, k: int, profile: str | None = None) -> dict[str, Any]:
        assert self.bot is not None
        joined = self.set_calls(k)
        why: list[str] = []
        if joined["failed"]:
            why.append(f"{joined['failed']} joins failed: {'; '.join(joined['errors'])}")
        time.sleep(self.plan.warmup)  # warm-up: new links connect, jitter buffers settle
        threads = self.bot.ask("threads")
        window = measure(self.plan.window, self.pids(), threads)
        rx = self.bot.ask("stats", window.t0, window.t1)
        tx = self.emulator.ask("heard", rx["call_ids"], window.t0, window.t1)
        calls = len(rx["call_ids"])
        rx_mean, rx_worst = rate_check("rx", rx.pop("rates"), why)
        tx_mean, tx_worst = rate_check("tx", [n / window.seconds for n in tx["heard"]], why)
        if rx["drift_p99_ms"] > DRIFT_P99_LIMIT_MS:
            why.append(f"p99 drift {rx['drift_p99_ms']} ms > {DRIFT_P99_LIMIT_MS:g}")
        if rx["late_share"] >= LATE_SHARE_LIMIT:
            why.append(f"{rx['late_share']:.2%} of frames > {LATE_MS:g} ms late")
        if calls < k:
            why.append(f"only {calls} of {k} calls up")
        cpu = window.cpu_percent["bot"]
        rx.pop("call_ids")
        row = {
            "calls": calls,
            "holds": not why,
            "why": why,
            "cpu_percent": cpu,
            "cpu_ms_per_call_s": round(cpu * 10 / max(1, calls), 2),
            "threads_cpu_percent": _group_threads(window.thread_percent, cpu),
            "rx_per_call": rx_mean,
            "rx_worst": rx_worst,
            "tx_per_call": tx_mean,
            "tx_worst": tx_worst,
            **rx,
            "join_seconds": joined["seconds"],
            "generator_cpu_percent": window.cpu_percent["gen"],
            "generator_lag_p99_ms": tx["lag_p99_ms"],
            "generator_lag_max_ms": tx["lag_max_ms"],
            "generator_gc": {k: v for k, v in tx.items() if k.startswith("gc_")},
            "machine_busy_percent": window.machine_busy_percent,
            "steal_percent": window.steal_percent,
        }
        print(_row_line(row), file=sys.stderr, flush=True)
        if profile:
            self.bot.ask("profile_start")
            time.sleep(self.plan.window)  # the profiled window
            row["profile_top"] = self.bot.ask("profile_stop", profile)
            print(f"  media-loop profile written to {profile}", file=sys.stderr, flush=True)
        return row


def _group_threads(percent: dict[str, float], total: float) -> dict[str, float]:
    """Per thread name with the numbers folded (codec_0, codec_1 -> codec_N), and what no
    Python thread accounts for (native threads, threads gone in the window)."""
    grouped: dict[str, float] = {}
    for name, value in percent.items():
        key = re.sub(r"\d+", "N", name)
        grouped[key] = round(grouped.get(key, 0.0) + value, 1)
    grouped["unattributed"] = round(total - sum(percent.values()), 1)
    return dict(sorted(grouped.items(), key=lambda item: -item[1]))


def _row_line(row: dict[str, Any]) -> str:
    verdict = "holds" if row["holds"] else "FAILS: " + "; ".join(row["why"])
    return (
        f"  K={row['calls']:3d} bot cpu {row['cpu_percent']:5.1f}% "
        f"({row['cpu_ms_per_call_s']:.2f} ms/s/call), drift p99 {row['drift_p99_ms']:.1f} ms, "
        f"late {row['late_share']:.2%}, rx {row['rx_per_call']:.1f} tx {row['tx_per_call']:.1f}, "
        f"full GCs {row['gc_full_collections']} (max {row['gc_pause_max_ms']:.0f} ms), "
        f"gen cpu {row['generator_cpu_percent']:.0f}% lag max {row['generator_lag_max_ms']:.0f} ms"
        f", machine {row['machine_busy_percent']:.0f}% steal {row['steal_percent']:.0f}%: "
        f"{verdict}"
    )


def ramp_bot(ctx: SpawnContext, plan: Plan, out: Path, profile: str | None) -> dict[str, Any]:
    rig = BotRig(ctx, plan, out)
    rows: dict[int, dict[str, Any]] = {}
    idle: float | None = None
    try:
        idle = rig.idle_cpu()
        passed, failed = 0, None
        for k in plan.ramp:
            row = rows[k] = rig.measure_k(k, profile if k == plan.cpu_k else None)
            if not row["holds"]:
                failed = k
                break
            passed = k
        while plan.bisect and failed is not None and failed - passed > plan.resolution:
            k = (passed + failed) // 2
            k -= k % plan.resolution
            k = k if k > passed else passed + plan.resolution
            row = rows[k] = rig.measure_k(k)
            passed, failed = (k, failed) if row["holds"] else (passed, k)
    except WorkerError as exc:
        print(f"  the bot run stopped: {exc}", file=sys.stderr, flush=True)
        failed_row = {"calls": rig.active, "holds": False, "why": [str(exc)]}
        rows[max(rows, default=0) + 1] = failed_row
    finally:
        rig.close()
    table = [rows[k] for k in sorted(rows)]
    held = [r["calls"] for r in table if r["holds"]]
    cpu_row = rows.get(plan.cpu_k)
    return {
        "max_realtime_calls": max(held, default=0),
        "bot_cpu_ms_per_call_s": cpu_row["cpu_ms_per_call_s"] if cpu_row else None,
        "bot_cpu_k_holds": bool(cpu_row and cpu_row["holds"]),
        "bot_idle_cpu_percent": idle,
        "table": table,
    }


def run_once(ctx: SpawnContext, plan: Plan, index: int) -> dict[str, Any]:
    started = time.monotonic()
    print(f"run {index + 1}: stock, {plan.stock_k} connections", file=sys.stderr, flush=True)
    stock = measure_stock(ctx, plan)
    print(
        f"  stock cpu {stock['cpu_percent']:.1f}% ({stock['cpu_ms_per_call_s']:.2f} ms/s/call), "
        f"rx {stock['rx_per_call']} tx {stock['tx_per_call']}, drift p99 "
        f"{stock['drift_p99_ms']} ms, full GCs {stock['gc_full_collections']} "
        f"(max {stock['gc_pause_max_ms']:.0f} ms), gen cpu {stock['generator_cpu_percent']:.0f}%, "
        f"machine {stock['machine_busy_percent']:.0f}% steal {stock['steal_percent']:.0f}%",
        file=sys.stderr,
        flush=True,
    )
    print(f"run {index + 1}: bot, ramp {list(plan.ramp)}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as out:
        bot = ramp_bot(ctx, plan, Path(out), plan.profile if index == 0 else None)
    bot_cpu = bot["bot_cpu_ms_per_call_s"]
    return {
        "bot_cpu_ms_per_call_s": bot_cpu,
        "stock_cpu_ms_per_call_s": stock["cpu_ms_per_call_s"],
        "max_realtime_calls": bot["max_realtime_calls"],
        "ratio": round(bot_cpu / stock["cpu_ms_per_call_s"], 3) if bot_cpu else None,
        "bot_cpu_k_holds": bot["bot_cpu_k_holds"],
        "bot_idle_cpu_percent": bot["bot_idle_cpu_percent"],
        "stock": stock,
        "table": bot["table"],
        "seconds": round(time.monotonic() - started, 1),
    }


def summarise(plan: Plan, runs: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    def median(key: str) -> Any:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median_low(values) if values else None

    bot_cpu, stock_cpu = median("bot_cpu_ms_per_call_s"), median("stock_cpu_ms_per_call_s")
    max_calls = median("max_realtime_calls")
    ratio = round(bot_cpu / stock_cpu, 3) if bot_cpu and stock_cpu else None
    gen = [r.get("generator_cpu_percent") for run in runs for r in run["table"]]
    gen += [run["stock"]["generator_cpu_percent"] for run in runs]
    result: dict[str, Any] = {
        "bot_cpu_ms_per_call_s": bot_cpu,
        "stock_cpu_ms_per_call_s": stock_cpu,
        "max_realtime_calls": max_calls,
        "ratio": ratio,
        "bot_cpu_k": plan.cpu_k,
        "stock_k": plan.stock_k,
        "goal": GOAL,
        "meets_goal": bool(
            ratio is not None
            and ratio <= GOAL["ratio_at_most"]
            and (max_calls or 0) >= GOAL["max_realtime_calls_at_least"]
        ),
        "generator_cpu_percent_max": max((g for g in gen if g is not None), default=None),
        "window_seconds": plan.window,
        "warmup_seconds": plan.warmup,
        "ramp": list(plan.ramp),
        "stock_loop": "uvloop" if plan.stock_uvloop else "asyncio",
        "bot_gc": "freeze" if plan.bot_gc_freeze else "default",
        "cpu_count": os.cpu_count(),
        "runs": len(runs),
        "bot_cpu_ms_per_call_s_runs": [r["bot_cpu_ms_per_call_s"] for r in runs],
        "stock_cpu_ms_per_call_s_runs": [r["stock_cpu_ms_per_call_s"] for r in runs],
        "max_realtime_calls_runs": [r["max_realtime_calls"] for r in runs],
        "per_run": runs,
        "wall_seconds": round(wall, 1),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ramp 10/30/60, 3 s windows")
    parser.add_argument("--runs", type=int, default=1, help="repeat; medians are reported")
    parser.add_argument("--window", type=float, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds before each window (default 5)")
    parser.add_argument("--ramp", help="comma-separated K values, e.g. 10,20,40")
    parser.add_argument("--cpu-k", type=int, help="K for bot_cpu_ms_per_call_s (default 20)")
    parser.add_argument("--stock-k", type=int, help="connections in the stock process (20)")
    parser.add_argument("--resolution", type=int, default=5, help="bisection step in calls")
    parser.add_argument("--no-bisect", action="store_true")
    parser.add_argument("--stock-loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--profile", help="write a cProfile of the media loop at --cpu-k here")
    parser.add_argument(
        "--bot-gc",
        choices=("default", "freeze"),
        default="default",
        help="freeze: gc.freeze() in the bot process every second (a what-if, not the bot)",
    )
    args = parser.parse_args()
    if args.quick:
        plan = Plan((10, 30, 60), 3.0, 3.0, 10, 10, False, args.resolution, False, None)
    else:
        ramp = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 200)
        plan = Plan(ramp, 10.0, 5.0, 20, 20, not args.no_bisect, args.resolution, False, None)
    plan = replace(
        plan,
        ramp=tuple(int(k) for k in args.ramp.split(",")) if args.ramp else plan.ramp,
        window=min(args.window or plan.window, MAX_WINDOW_SECONDS),
        warmup=args.warmup if args.warmup is not None else plan.warmup,
        cpu_k=args.cpu_k or plan.cpu_k,
        stock_k=args.stock_k or plan.stock_k,
        stock_uvloop=args.stock_loop == "uvloop",
        profile=args.profile,
        bot_gc_freeze=args.bot_gc == "freeze",
    )
    if plan.cpu_k not in plan.ramp:
        plan = replace(plan, ramp=tuple(sorted({*plan.ramp, plan.cpu_k})))
    worker_logging("bench")
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    runs = [run_once(ctx, plan, i) for i in range(max(1, args.runs))]
    result = summarise(plan, runs, time.monotonic() - started)
    if plan.profile and runs[0]["table"]:
        top = next((r.get("profile_top") for r in runs[0]["table"] if "profile_top" in r), None)
        result["profile"] = {"path": plan.profile, "top_tottime": top}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
