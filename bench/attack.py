"""Attack: the security findings of issue 14 at their measured sizes, against a live bot.

Processes (multiprocessing "spawn"; attack_parts/): the emulator (Graph and Teams, full media:
the participant talks and hears the bot's echo), the bot (a real bot.app.Bot with the `echo`
processor, its own process, so its memory, file limit and loops are its own), and this one,
which is the attacker and reads the bot's memory and sockets from /proc. Everything is on
loopback; the attacker sends from 127.0.0.2 (--attacker-address), Graph and the media processor
from 127.0.0.1, so per-address limits can tell them apart. The bot's media is on 127.0.0.1, UDP
ports from a 20-port range (BOT_MEDIA_PORT_MIN/MAX). The bot keeps the file limit this
process started with (--bot-nofile lowers it, e.g. 1024 as a systemd service has); this process
raises its own soft limit to the hard limit for the flood.

Phases, in order (the flood last: it may leave the bot unusable):
1. baseline: one call; echo correlation over --echo-seconds (emulator/analysis.py, as
   bot/demo.py and bench/echo_latency.py report it, over a window); then genuine notification
   posts (signed with the emulator's notification key, as Graph's are; a new TLS connection
   each, from 127.0.0.1, at 20/s), timed: webhook_p99_ms_baseline;
2. control brute force: the same call while wrong-token hellos (a TLS WebSocket connection
   each, the live call's session id, a random token) hit the media-control endpoint at
   --bruteforce-rate per second: control_bruteforce_echo_corr over the same window length;
3. empty datagrams: 3 new calls; once their media flows, one zero-length UDP datagram to each
   UDP port the bot holds in its range (from /proc/PID/fd and /proc/PID/net/udp); a live call
   survives when the participant still hears at least 80 % of 50 frames/s over the 3 s that
   follow the first second after: empty_datagram_calls_survived;
4. DTLS spray: DTLS 1.2 fatal alert records (content type 21) to every port of the range,
   --spray-rate times a second each, while 5 calls join; a join is ok when the call is
   established and the participant hears it as above: dtls_spray_joins_ok (the joins of phases
   1 and 3, without the spray, give joins_ok_without_attack);
5. idle flood: 2,000 idle TLS connections (handshake, then nothing) and 500 slowloris ones
   (request headers trickled, never finished) to the webhook, opened at --flood-open-rate per
   second; while they are held, the genuine posts again: webhook_p99_ms_under_idle_flood (a
   post that fails counts as its 5 s timeout); then, at the idle timeout plus a grace after the
   last one was opened: idle_conns_closed_ratio (those the bot closed, or refused, by itself),
   and the bot's RSS growth since before the flood: rss_mb_growth_after_idle_closed. The
   timeouts set are those the tree has: every `listener_*` setting with `idle` or `header` in
   its name (bot.settings.Settings.model_fields) gets --idle-timeout; none: the bot's own
   behaviour, measured at the same time.

The brute force's effect on the call depends on the CPU left over: on a tree without a rate
limit the bot spends about 40 % of a core on the hellos, and the call's echo holds on an idle
machine but collapsed (r 0.19-0.43) when other work kept the machine busy. Each figure comes
with the bot's and the machine's CPU over its window (bot_cpu_percent, machine_busy_percent).

Also: --only PHASES runs some phases; --bot-nofile 1024 gives the bot a service's usual file
limit (asyncio's accept error then spins at the limit); --flood-sources N spreads the flood
over N attacker addresses (per-address caps do not stop a distributed attacker).

Prints progress on stderr and one JSON object as the last line of stdout, with the six figures,
their goals (goal, meets_goals), the baselines and ratios, and each phase's detail. --quick
(under a minute): 200 idle, 50 slowloris, 3 spray joins, 4 s echo windows, 5 s idle timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attack_parts import procinfo  # noqa: E402
from attack_parts.floods import (  # noqa: E402
    Attacker,
    Bruteforce,
    DtlsSpray,
    TlsFlood,
    udp_empty,
)
from attack_parts.rig import (  # noqa: E402
    GOAL,
    MEDIA_HOST,
    QUICK,
    Plan,
    Rig,
    delta,
    log,
)
from common_parts.worker_pipe import WorkerError  # noqa: E402


async def phase_baseline_and_bruteforce(rig: Rig, plan: Plan) -> dict[str, Any]:
    rows = await rig.join(1)
    call_ids = [r["call_id"] for r in rows if r["ok"]]
    out: dict[str, Any] = {"joins": rows}
    if not call_ids:
        raise RuntimeError(f"the baseline call did not join: {rows}")
    call_id, session_id = call_ids[0], rows[0]["session_id"]
    try:
        live = await rig.wait_media(call_ids)
        out["baseline_live"] = bool(live)
        before = (await rig.media_stats(call_ids))[call_id]
        cpu = procinfo.CpuWindow(rig.bot_pid)
        cpu.start()
        t0 = time.monotonic()
        await asyncio.sleep(plan.echo_seconds)  # the measured window of a live call
        t1 = time.monotonic()
        out["baseline_cpu"] = cpu.stop()
        after = (await rig.media_stats(call_ids))[call_id]
        out["baseline_echo"] = await rig.echo(call_id, t0, t1)
        out["baseline_concealed"] = delta(after, before, "concealed")
        log(
            f"baseline: echo r={out['baseline_echo']['correlation']} "
            f"(delay {out['baseline_echo']['delay_ms']} ms), "
            f"{out['baseline_concealed']} frames concealed in {plan.echo_seconds:g} s"
        )
        out["baseline_webhook"] = await rig.posts(call_id, plan.post_seconds)
        log(f"baseline: webhook {_posts_line(out['baseline_webhook'])}")

        counters0 = await rig.the_bot.aask("counters")
        attack = Bruteforce(MEDIA_HOST, rig.control_port, plan.attacker, session_id)
        before = (await rig.media_stats(call_ids))[call_id]
        cpu.start()
        t0 = time.monotonic()
        try:
            await attack.run(plan.bruteforce_rate, plan.echo_seconds)
            t1 = time.monotonic()
            out["bruteforce_cpu"] = cpu.stop()
        finally:
            await attack.close()
        after = (await rig.media_stats(call_ids))[call_id]
        out["bruteforce_echo"] = await rig.echo(call_id, t0, t1)
        out["bruteforce_concealed"] = delta(after, before, "concealed")
        out["bruteforce"] = attack.report()
        counters1 = await rig.the_bot.aask("counters")
        out["bruteforce_control_counters"] = {
            k: v - counters0["control"].get(k, 0)
            for k, v in counters1["control"].items()
            if isinstance(v, int)
        }
        out["call_state_after_bruteforce"] = after.get("state")
        brute = out["bruteforce"]
        log(
            f"brute force: {brute['rate_achieved']}/s wrong-token hellos (offered "
            f"{brute['rate_offered']}/s) {brute['outcomes']}; echo "
            f"r={out['bruteforce_echo']['correlation']}, {out['bruteforce_concealed']} frames "
            f"concealed; bot CPU {out['bruteforce_cpu']['bot_cpu_percent']}% (baseline "
            f"{out['baseline_cpu']['bot_cpu_percent']}%), machine "
            f"{out['bruteforce_cpu']['machine_busy_percent']}% busy"
        )
    finally:
        await rig.hang_up(call_ids)
    return out


async def phase_empty_datagram(rig: Rig, plan: Plan) -> dict[str, Any]:
    rows = await rig.join(plan.empty_calls)
    call_ids = [r["call_id"] for r in rows if r["ok"]]
    out: dict[str, Any] = {"joins": rows}
    try:
        live = sorted(await rig.wait_media(call_ids))
        ports = [
            (host, port)
            for host, port in procinfo.udp_sockets(rig.bot_pid)
            if rig.port_min <= port <= rig.port_max
        ]
        sent = udp_empty(Attacker(plan.attacker), ports)
        t = time.monotonic()
        alive = await rig.alive_after(live, t + 1.0)
        stats = await rig.media_stats(call_ids)
        survived = sum(alive.values())
        out.update(
            {
                "live_calls": len(live),
                "ports": [f"{host}:{port}" for host, port in ports],
                "datagrams_sent": sent,
                "survived": survived,
                "survived_ratio": round(survived / len(live), 3) if live else 0.0,
                "after": {
                    c: {k: s.get(k) for k in ("state", "media_state", "media_lost")}
                    for c, s in stats.items()
                },
            }
        )
        log(
            f"empty datagrams: {sent} sent to {len(ports)} ports; {survived} of {len(live)} "
            "live calls still heard"
        )
    finally:
        await rig.hang_up(call_ids)
    return out


async def phase_dtls_spray(rig: Rig, plan: Plan) -> dict[str, Any]:
    spray = DtlsSpray(
        Attacker(plan.attacker), rig.media_addresses, rig.port_min, rig.port_max, plan.spray_rate
    )
    spray.start()
    call_ids: list[str] = []
    out: dict[str, Any] = {}
    try:
        rows = await rig.join(plan.spray_calls)
        call_ids = [r["call_id"] for r in rows if r["call_id"]]
        established = [r["call_id"] for r in rows if r["ok"]]
        alive = await rig.alive_after(established, time.monotonic() + 1.0)
        ok = sum(alive.values())
        out.update(
            {
                "joins": rows,
                "established": len(established),
                "joined_with_media": ok,
                "ratio": round(ok / plan.spray_calls, 3),
                "alerts_sent": spray.sent,
                "send_errors": spray.errors,
            }
        )
        log(
            f"DTLS spray: {ok} of {plan.spray_calls} calls joined with media "
            f"({len(established)} established), {spray.sent} alerts sent"
        )
    finally:
        await spray.stop()
        await rig.hang_up(call_ids)
    return out


async def phase_idle_flood(rig: Rig, plan: Plan) -> dict[str, Any]:
    # A live call, which the posts name (as Graph's notifications do) and whose echo shows
    # what the flood does to media.
    rows = await rig.join(1)
    call_ids = [r["call_id"] for r in rows if r["ok"]]
    if not call_ids:
        raise RuntimeError(f"the flood phase's call did not join: {rows}")
    try:
        await rig.wait_media(call_ids)
        return {"joins": rows, **await _flood(rig, plan, call_ids[0])}
    finally:
        await rig.hang_up(call_ids)


async def _flood(rig: Rig, plan: Plan, call_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rss_before = rig.rss()
    sources = [str(ipaddress.ip_address(plan.attacker) + i) for i in range(plan.flood_sources)]
    flood = TlsFlood(MEDIA_HOST, rig.webhook_port, sources, plan.trickle_seconds)
    samples: list[float] = []
    try:
        await flood.open(plan.idle, plan.slowloris, plan.flood_open_rate)
        opened = flood.last_started - flood.started_at
        await asyncio.sleep(1.0)  # the last handshakes complete (or never do: counted so)
        log(
            f"flood: {plan.idle} idle + {plan.slowloris} slowloris started in {opened:.1f} s, "
            f"{flood.open_count()} open; posting"
        )

        async def sample() -> None:
            while True:
                samples.append(rig.rss())
                await asyncio.sleep(0.5)  # RSS sampling period

        sampler = asyncio.create_task(sample())
        cpu = procinfo.CpuWindow(rig.bot_pid)
        cpu.start()
        t0 = time.monotonic()
        try:
            out["webhook"] = await rig.posts(call_id, plan.post_seconds)
            out["cpu_while_held"] = cpu.stop()
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        out["echo_while_held"] = await rig.echo(call_id, t0, time.monotonic())
        log(
            f"flood: webhook {_posts_line(out['webhook'])}; live call echo "
            f"r={out['echo_while_held']['correlation']}"
        )
        deadline = flood.last_started + plan.idle_timeout + plan.grace
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # the bot's idle timeout
        out["idle"] = flood.report("idle")
        out["slowloris"] = flood.report("slowloris")
        out["bot_tcp_on_webhook_port"] = procinfo.tcp_on_port(rig.bot_pid, rig.webhook_port)
        out["bot_open_files"] = procinfo.open_files(rig.bot_pid)
        rss_deadline = rig.rss()
        log(
            f"flood: {plan.idle_timeout + plan.grace:g} s after the last: idle closed "
            f"{out['idle']['closed_ratio']:.2%}, slowloris closed "
            f"{out['slowloris']['closed_ratio']:.2%}; bot RSS {rss_before} -> {rss_deadline} MB"
        )
    finally:
        await flood.close()
    await asyncio.sleep(2.0)  # the bot sees our closes
    rss_closed = rig.rss()
    out["webhook_after_flood"] = await rig.posts(call_id, 1.0)
    out.update(
        {
            "rss_mb_before": rss_before,
            "rss_mb_peak_while_held": max(samples, default=rss_before),
            "rss_mb_at_deadline": rss_deadline,
            "rss_mb_after_bench_closed": rss_closed,
            "seconds_to_open": round(opened, 2),
        }
    )
    log(
        f"flood: bench closed its connections: bot RSS {rss_closed} MB; webhook after "
        f"{_posts_line(out['webhook_after_flood'])}"
    )
    return out


def _posts_line(summary: dict[str, Any]) -> str:
    return (
        f"p50 {summary['p50_ms']} p99 {summary['p99_ms']} max {summary['max_ms']} ms over "
        f"{summary['posts']} posts, statuses {summary['statuses']}"
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


PHASES = ("baseline_bruteforce", "empty_datagram", "dtls_spray", "idle_flood")


async def run_phases(rig: Rig, plan: Plan) -> dict[str, Any]:
    phases: dict[str, dict[str, Any]] = {}
    runners = {
        "baseline_bruteforce": phase_baseline_and_bruteforce,
        "empty_datagram": phase_empty_datagram,
        "dtls_spray": phase_dtls_spray,
        "idle_flood": phase_idle_flood,
    }
    for name in PHASES:
        if plan.only and name not in plan.only:
            continue
        started = time.monotonic()
        phases[name] = await runners[name](rig, plan)
        phases[name]["seconds"] = round(time.monotonic() - started, 1)

    def get(phase: str, *path: str) -> Any:
        """A figure of a phase; None when the phase did not run (--only)."""
        value: Any = phases.get(phase)
        for key in path:
            if value is None:
                return None
            value = value.get(key)
        return value

    flood = phases.get("idle_flood")
    unattacked = [r for name in PHASES if name != "dtls_spray" for r in get(name, "joins") or []]
    baseline_corr = get("baseline_bruteforce", "baseline_echo", "correlation")
    brute_corr = get("baseline_bruteforce", "bruteforce_echo", "correlation")
    baseline_p99 = get("baseline_bruteforce", "baseline_webhook", "p99_ms")
    flood_p99 = get("idle_flood", "webhook", "p99_ms")
    return {
        "empty_datagram_calls_survived": get("empty_datagram", "survived_ratio"),
        "dtls_spray_joins_ok": get("dtls_spray", "ratio"),
        "idle_conns_closed_ratio": get("idle_flood", "idle", "closed_ratio"),
        "webhook_p99_ms_under_idle_flood": flood_p99,
        "control_bruteforce_echo_corr": brute_corr,
        "rss_mb_growth_after_idle_closed": round(
            flood["rss_mb_at_deadline"] - flood["rss_mb_before"], 1
        )
        if flood
        else None,
        "baseline_echo_corr": baseline_corr,
        "bruteforce_echo_corr_ratio": _ratio(brute_corr, baseline_corr),
        "baseline_webhook_p99_ms": baseline_p99,
        "webhook_p99_ratio_under_idle_flood": _ratio(flood_p99, baseline_p99),
        "webhook_answered_share_under_idle_flood": get("idle_flood", "webhook", "answered_share"),
        "joins_ok_without_attack": round(sum(1 for r in unattacked if r["ok"]) / len(unattacked), 3)
        if unattacked
        else None,
        "slowloris_closed_ratio": get("idle_flood", "slowloris", "closed_ratio"),
        "rss_mb_growth_after_bench_closed": round(
            flood["rss_mb_after_bench_closed"] - flood["rss_mb_before"], 1
        )
        if flood
        else None,
        "bruteforce_rate_achieved": get("baseline_bruteforce", "bruteforce", "rate_achieved"),
        "bot_cpu_percent_under_bruteforce": get(
            "baseline_bruteforce", "bruteforce_cpu", "bot_cpu_percent"
        ),
        "machine_busy_percent_under_bruteforce": get(
            "baseline_bruteforce", "bruteforce_cpu", "machine_busy_percent"
        ),
        "echo_corr_under_idle_flood": get("idle_flood", "echo_while_held", "correlation"),
        "phases": phases,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under a minute")
    parser.add_argument("--idle", type=int, help="idle TLS connections (2000)")
    parser.add_argument("--slowloris", type=int, help="slowloris connections (500)")
    parser.add_argument("--spray-calls", type=int, help="calls joining under the spray (5)")
    parser.add_argument("--bruteforce-rate", type=float, help="wrong-token hellos/s (253)")
    parser.add_argument("--echo-seconds", type=float, help="echo windows (15 s)")
    parser.add_argument("--idle-timeout", type=float, help="listener idle/header timeouts (20)")
    parser.add_argument("--spray-rate", type=float, help="alerts per port per second (50)")
    parser.add_argument("--flood-open-rate", type=float, help="connections opened/s (500)")
    parser.add_argument("--attacker-address", help="the attack's source address (127.0.0.2)")
    parser.add_argument(
        "--flood-sources",
        type=int,
        help="addresses the idle flood comes from, from --attacker-address up (1)",
    )
    parser.add_argument(
        "--bot-nofile",
        type=int,
        help="the bot's soft file limit (default: the one this process started with)",
    )
    parser.add_argument(
        "--only", help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all)"
    )
    args = parser.parse_args()
    only = tuple(args.only.split(",")) if args.only else ()
    if set(only) - set(PHASES):
        parser.error(f"--only: unknown phase(s) {sorted(set(only) - set(PHASES))}")
    plan = QUICK if args.quick else Plan()
    changes = {
        "idle": args.idle,
        "slowloris": args.slowloris,
        "spray_calls": args.spray_calls,
        "bruteforce_rate": args.bruteforce_rate,
        "echo_seconds": args.echo_seconds,
        "idle_timeout": args.idle_timeout,
        "spray_rate": args.spray_rate,
        "flood_open_rate": args.flood_open_rate,
        "attacker": args.attacker_address,
        "flood_sources": args.flood_sources,
        "bot_nofile": args.bot_nofile,
        "only": only or None,
    }
    plan = replace(plan, **{k: v for k, v in changes.items() if v is not None})

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker's own sockets
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as out:
        rig: Rig | None = None
        try:
            rig = Rig(ctx, plan, Path(out), soft)
            log(
                f"bot pid {rig.bot_pid}: webhook :{rig.webhook_port}, media control "
                f":{rig.control_port}, UDP {rig.port_min}-{rig.port_max}, file limit "
                f"{procinfo.nofile_limit(rig.bot_pid)}, listener settings set: "
                f"{rig.overrides or 'none in this tree'}"
            )
            result = asyncio.run(run_phases(rig, plan))
            result["bot_log"] = rig.the_bot.ask("log")
            result["bot_counters"] = rig.the_bot.ask("counters")
            result["bot_pid_nofile"] = procinfo.nofile_limit(rig.bot_pid)
            result["listener_settings_set"] = rig.overrides
            result["settings_missing_in_this_tree"] = rig.missing_settings
            result["media_addresses"] = list(rig.media_addresses)
        except WorkerError as exc:
            log(f"the run stopped: {exc}")
            result = {"error": str(exc)}
        finally:
            if rig is not None:
                rig.close()
    result["goal"] = GOAL
    result["meets_goals"] = _meets(result)
    result["plan"] = asdict(plan)
    result["quick"] = args.quick
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


def _meets(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each figure against its goal; None when its phase did not run."""

    def at_least(key: str, goal: float) -> bool | None:
        value = result.get(key)
        return None if value is None else bool(value >= goal)

    def under(key: str, goal: float) -> bool | None:
        value = result.get(key)
        return None if value is None else bool(value < goal)

    return {
        "empty_datagram_calls_survived": at_least("empty_datagram_calls_survived", 1.0),
        "dtls_spray_joins_ok": at_least("dtls_spray_joins_ok", 1.0),
        "idle_conns_closed_ratio": at_least("idle_conns_closed_ratio", 1.0),
        "webhook_p99_ms_under_idle_flood": under("webhook_p99_ms_under_idle_flood", 50.0),
        "control_bruteforce_echo_corr": at_least("control_bruteforce_echo_corr", 0.9),
        "rss_mb_growth_after_idle_closed": under("rss_mb_growth_after_idle_closed", 50.0),
    }


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: the bot and the emulator were stopped")
        sys.exit(130)
