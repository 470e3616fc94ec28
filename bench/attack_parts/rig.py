"""The attack bench's plan, its processes (the emulator and the bot, each its own, see
bench/attack.py) and the small helpers its phases share."""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aioice.ice import get_host_addresses
from common_parts.worker_pipe import Worker

from attack_parts import procinfo
from attack_parts.bot_role import bot_role
from attack_parts.emulator_role import emulator_role
from attack_parts.floods import (
    PostResults,
    post_notifications,
)
from bot.devcerts import make_dev_certs
from bot.settings import Settings, SettingsError
from emulator import EmulatorConfig
from emulator.participant import demo_meeting
from emulator.server import AppRegistration

FRAMES_PER_SECOND = 50
LIVE_SHARE = 0.8  # of 50 frames/s heard back: the call's media is alive
LIVE_WINDOW_SECONDS = 3.0
MEDIA_WAIT_SECONDS = 15.0
HANGUP_SECONDS = 15.0
MEDIA_HOST = "127.0.0.1"
GOAL = {
    "empty_datagram_calls_survived": ">= 1.0",
    "dtls_spray_joins_ok": ">= 1.0",
    "idle_conns_closed_ratio": ">= 1.0",
    "webhook_p99_ms_under_idle_flood": "< 50",
    "control_bruteforce_echo_corr": ">= 0.9",
    "rss_mb_growth_after_idle_closed": "< 50",
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    idle: int = 2000
    slowloris: int = 500
    empty_calls: int = 3
    spray_calls: int = 5
    bruteforce_rate: float = 253.0
    echo_seconds: float = 15.0
    post_rate: float = 20.0
    post_seconds: float = 10.0
    idle_timeout: float = 20.0
    grace: float = 10.0
    flood_open_rate: float = 500.0
    trickle_seconds: float = 2.0
    spray_rate: float = 50.0
    port_count: int = 20
    join_seconds: float = 25.0
    attacker: str = "127.0.0.2"
    flood_sources: int = 1  # addresses the flood comes from: attacker, attacker + 1, ...
    bot_nofile: int | None = None
    only: tuple[str, ...] = ()  # phases to run (empty: all)


QUICK = Plan(
    idle=200,
    slowloris=50,
    spray_calls=3,
    echo_seconds=4.0,
    post_seconds=3.0,
    idle_timeout=5.0,
    grace=3.0,
    join_seconds=15.0,
)


# -- set-up ---------------------------------------------------------------------------------------


def free_udp_range(size: int) -> int:
    """First port of `size` consecutive UDP ports free on MEDIA_HOST, below the kernel's
    ephemeral range when there is room (no kernel-chosen port can land in it)."""
    low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    low, high = (20000, low_ephemeral) if low_ephemeral > 20000 + size else (40000, 59000)
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(low, high - size)
        with ExitStack() as stack:
            try:
                for port in range(start, start + size):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind((MEDIA_HOST, port))
            except OSError:
                continue
        return start
    raise RuntimeError(f"no {size} consecutive free UDP ports on {MEDIA_HOST}")


def settings_fields() -> set[str]:
    """The names Settings takes: pydantic fields, or an older tree's dataclass fields."""
    model_fields = getattr(Settings, "model_fields", None)
    if model_fields is not None:
        return set(model_fields)
    return {f.name for f in fields(Settings)}


def with_setting(settings: Settings, **changes: Any) -> Settings:
    replace_method = getattr(settings, "replace", None)
    if replace_method is not None:
        changed: Settings = replace_method(**changes)
        return changed
    return replace(settings, **changes)


def listener_overrides(timeout: float) -> dict[str, float]:
    """The tree's listener timeouts that an idle or slowloris connection meets: every
    `listener_*` setting with `idle` or `header` in its name, set to `timeout`."""
    return {
        name: timeout
        for name in settings_fields()
        if name.startswith("listener_") and ("idle" in name or "header" in name)
    }


class Rig:
    """The emulator and bot processes, and what they said at start."""

    def __init__(self, ctx: SpawnContext, plan: Plan, out: Path, nofile: int) -> None:
        self.plan = plan
        self.bot: Worker | None = None
        certs = make_dev_certs(out / "certs")
        self.ca_file = certs.ca_file
        self.port_min = free_udp_range(plan.port_count)
        self.port_max = self.port_min + plan.port_count - 1
        wanted_settings: dict[str, Any] = {
            "cert_file": certs.cert_file,
            "key_file": certs.key_file,
            "ca_file": certs.ca_file,
            "webhook_port": 0,
            "instance_internal_port": 0,
            "media_port_min": self.port_min,
            "media_port_max": self.port_max,
            "media_host_addresses": (MEDIA_HOST,),
            "processors": "echo",
        }
        # An older tree lacks some settings (media_host_addresses came with issue 13): its bot
        # gathers on every interface (aioice's discovery), where the UDP attacks then go.
        known = settings_fields()
        self.missing_settings = sorted(set(wanted_settings) - known)
        settings = Settings(**{k: v for k, v in wanted_settings.items() if k in known})
        self.media_addresses: tuple[str, ...] = (
            (MEDIA_HOST,)
            if "media_host_addresses" in known
            else tuple(get_host_addresses(use_ipv4=True, use_ipv6=True))
        )
        self.overrides: dict[str, float] = {}
        wanted = listener_overrides(plan.idle_timeout)
        for name, value in wanted.items():
            try:
                settings = with_setting(settings, **{name: value})
                self.overrides[name] = value
            except SettingsError as exc:
                log(f"setting {name}={value} refused ({exc}); the bot's default stays")
        emulator_extra: dict[str, Any] = {}
        if "media_host_addresses" in {f.name for f in fields(EmulatorConfig)}:
            emulator_extra["media_host_addresses"] = (MEDIA_HOST,)
        config = EmulatorConfig(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            trust_file=certs.ca_file,
            apps={
                settings.app_id: AppRegistration(
                    settings.app_id, settings.app_secret, settings.tenant_id
                )
            },
            meetings=[demo_meeting(settings.tenant_id)],  # one participant, talking
            **emulator_extra,
        )
        claims = {"aud": settings.app_id, "tid": settings.tenant_id}
        self.emulator = Worker(
            ctx, "emulator", emulator_role, config, claims, str(out / "emulator.log")
        )
        started = self.emulator.reply("start", 60.0)
        base = started["base"]
        settings = with_setting(
            settings,
            graph_url=f"{base}/v1.0",
            authority_url=base,
            notification_openid_url=f"{base}/v1/.well-known/OpenIdConfiguration",
        )
        self.bot_nofile = plan.bot_nofile or nofile
        self.bot_log = str(out / "bot.log")
        self.bot = Worker(
            ctx, "bot", bot_role, settings, started["join_url"], self.bot_nofile, self.bot_log
        )
        info = self.bot.reply("start", 60.0)
        self.callback_url: str = info["callback_url"]
        self.webhook_port = urlsplit(self.callback_url).port or 443
        self.webhook_path = urlsplit(self.callback_url).path
        self.control_port: int = info["control_port"]
        self.bot_pid = self.bot.pid

    def close(self) -> None:
        if self.bot is not None:
            self.bot.close()
        self.emulator.close()

    @property
    def the_bot(self) -> Worker:
        assert self.bot is not None
        return self.bot

    async def join(self, n: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.the_bot.aask(
            "join", n, self.plan.join_seconds, within=self.plan.join_seconds * 2 + 30
        )
        return rows

    async def hang_up(self, call_ids: list[str]) -> None:
        if call_ids:
            await self.the_bot.aask("hangup", call_ids, HANGUP_SECONDS, within=HANGUP_SECONDS + 30)

    async def heard(self, call_ids: list[str], t0: float, t1: float) -> dict[str, Any]:
        result: dict[str, Any] = await self.emulator.aask("heard", call_ids, t0, t1)
        return result

    async def wait_media(self, call_ids: list[str]) -> set[str]:
        """The calls whose participant hears the bot (LIVE_SHARE of 50 frames/s over the last
        second), once all do or after MEDIA_WAIT_SECONDS."""
        deadline = time.monotonic() + MEDIA_WAIT_SECONDS
        live: set[str] = set()
        while True:
            now = time.monotonic()
            heard = await self.heard(call_ids, now - 1.0, now)
            live = {c for c, h in heard.items() if h["heard"] >= LIVE_SHARE * FRAMES_PER_SECOND}
            if live == set(call_ids) or time.monotonic() > deadline:
                return live
            await asyncio.sleep(0.25)  # polling the emulator's view of the media

    async def alive_after(self, call_ids: list[str], t0: float) -> dict[str, bool]:
        """Whether each call's media is alive over [t0, t0 + LIVE_WINDOW_SECONDS)."""
        t1 = t0 + LIVE_WINDOW_SECONDS
        await asyncio.sleep(max(0.0, t1 - time.monotonic()))  # the window must have passed
        heard = await self.heard(call_ids, t0, t1)
        needed = LIVE_SHARE * FRAMES_PER_SECOND * LIVE_WINDOW_SECONDS
        return {c: heard[c]["heard"] >= needed for c in call_ids}

    async def echo(self, call_id: str, t0: float, t1: float) -> dict[str, Any]:
        result: dict[str, Any] = await self.emulator.aask("echo", call_id, t0, t1)
        return result

    async def media_stats(self, call_ids: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = await self.the_bot.aask("stats", call_ids)
        return result

    async def posts(self, call_id: str, seconds: float) -> dict[str, Any]:
        token = await self.emulator.aask("token")
        stop = threading.Event()
        try:
            results: PostResults = await asyncio.to_thread(
                post_notifications,
                MEDIA_HOST,
                self.webhook_port,
                self.webhook_path,
                self.ca_file,
                token,
                call_id,
                self.plan.post_rate,
                seconds,
                stop,
            )
        finally:
            stop.set()  # a cancelled run (Ctrl-C) ends the thread after its current post
        return results.summary()

    def rss(self) -> float:
        return round(procinfo.rss_mb(self.bot_pid), 1)


def delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    return int(after.get("media", {}).get(key, 0)) - int(before.get("media", {}).get(key, 0))


# -- phases ---------------------------------------------------------------------------------------
