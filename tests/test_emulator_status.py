"""The emulator's status page and `python -m emulator serve --scenario`: what a person watching
a scenario sees (meetings, calls, participants with who is speaking, operations)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import Bot
from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.scenario import Scenario, load
from media.frames import AudioFrame
from tests.conftest import emulator_config, settings_for

ROOT = Path(__file__).resolve().parents[1]


async def scenario_emulator(certs: DevCerts, scenario: Scenario) -> Emulator:
    """A started emulator playing `scenario`, with the tests' app, certificates and CA."""
    base = vars(emulator_config(certs))
    emulator = Emulator(
        scenario.config(**{k: base[k] for k in ("cert_file", "key_file", "trust_file", "apps")})
    )
    await emulator.start()
    return emulator


class HearsMsi:
    name = "hears-msi"

    def __init__(self, msi: int) -> None:
        self.msi = msi
        self.heard = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        if self.msi in frame.active_speakers:
            self._loop.call_soon_threadsafe(self.heard.set)  # the hot loop's own thread
        return None


async def test_status_shows_the_meeting_the_call_and_who_speaks(
    certs: DevCerts, client_ssl: ssl.SSLContext
) -> None:
    scenario = load("standup")
    emulator = await scenario_emulator(certs, scenario)
    alice = scenario.participant("alice")
    hears = HearsMsi(alice.msi)
    bot = Bot(settings_for(emulator, certs), processors=lambda ctx: [hears])
    await bot.start()
    try:
        call = await bot.join(emulator.join_url(scenario.meeting()))
        await call.wait_for("established", 15)
        await asyncio.wait_for(hears.heard.wait(), 10)  # Alice talks from 0.3 s to 1.6 s
        async with aiohttp.ClientSession() as http:
            url = f"{emulator.base_url}/emulator/status"
            async with http.get(url + ".json", ssl=client_ssl) as response:
                assert response.status == 200
                status = await response.json()
            async with http.get(url, ssl=client_ssl) as response:
                page = await response.text()
        await call.hang_up()
        await call.wait_for("terminated", 15)
    finally:
        await bot.stop()
        await emulator.stop()
    assert "status.json" in page
    [meeting] = status["meetings"]
    assert meeting["subject"] == "Daily stand-up"
    assert call.id in meeting["calls"]
    assert (
        meeting["joinPage"].endswith("/join") and "/meetings/19%3Ameeting_" in meeting["joinPage"]
    )
    assert {p["kind"] for p in meeting["participants"]} == {"user", "guest", "phone"}
    [shown] = [c for c in status["calls"] if c["id"] == call.id]
    assert shown["state"] == "established" and shown["media"] == "app"
    people = {p["name"]: p for p in shown["participants"]}
    assert {"Alice Ahn", "Bob Baker", "Pat Phone"} <= set(people)
    assert "Gina Guest" not in people  # she joins at 2.5 s
    assert people["Alice Ahn"]["speaking"] and not people["Bob Baker"]["speaking"]
    assert any(p["me"] for p in shown["participants"])


async def test_serve_runs_a_named_scenario_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        "serve",
        "--scenario",
        "standup",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("status page" in line for line in lines):
                line = (await process.stdout.readline()).decode()
                assert line, f"serve exited early: {lines}"
                lines.append(line)
        ca = re.search(r"throwaway CA at (\S+)", "".join(lines))
        status_url = re.search(r"status page (\S+)", "".join(lines))
        assert ca is not None and status_url is not None
        context = ssl.create_default_context(cafile=ca.group(1))
        async with aiohttp.ClientSession() as http:
            async with http.get(status_url.group(1) + ".json", ssl=context) as response:
                status = await response.json()
        assert [m["subject"] for m in status["meetings"]] == ["Daily stand-up"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_rejects_an_unknown_scenario() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        "serve",
        "--scenario",
        "no-such-thing",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert b"no scenario named" in err and b"standup" in err


async def test_scenario_ring_rings_the_bot_over_the_admin_api(
    certs: DevCerts, client_ssl: ssl.SSLContext
) -> None:
    scenario = load("incoming-p2p")
    emulator = await scenario_emulator(certs, scenario)
    bot = Bot(settings_for(emulator, certs))
    rung: asyncio.Queue[Any] = asyncio.Queue()
    bot.calls.events.on("incoming_call", rung.put_nowait)
    await bot.start()
    try:
        url = f"{emulator.base_url}/emulator/scenario/ring"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"callbackUri": "ftp://x"}, ssl=client_ssl) as bad:
                assert bad.status == 400
            async with http.post(url, json={"callbackUri": bot.callback_url}, ssl=client_ssl) as r:
                assert r.status == 202 and (await r.json()) == {"calls": 1}
        call = await asyncio.wait_for(rung.get(), 10)
        caller = call.resource["source"]["identity"]["user"]["displayName"]
        assert caller == "Casey Caller"
        await call.wait_for("established", 15)  # no handler decided: the fallback answered
        await call.hang_up()
        await call.wait_for("terminated", 15)
    finally:
        await bot.stop()
        await emulator.stop()
