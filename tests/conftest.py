"""Shared test fixtures: throwaway TLS material and an emulator on the test's own loop."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.app import Bot
from bot.devcerts import DevCerts, make_dev_certs
from bot.settings import Settings
from emulator import Emulator, EmulatorConfig
from emulator.participant import Meeting, ParticipantScript
from emulator.server import AppRegistration

APP_ID = "11111111-2222-3333-4444-555555555555"
APP_SECRET = "test-secret"
TENANT_ID = "99999999-8888-7777-6666-555555555555"
SPEAKER_MSI = 0x5EED


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A TCP port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def client_ssl(certs: DevCerts) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certs.ca_file)


def meeting() -> Meeting:
    return Meeting(
        thread_id="19:meeting_dGVzdA@thread.v2",
        organizer_id=str(uuid.UUID(int=1)),
        tenant_id=TENANT_ID,
        participants=[
            ParticipantScript("Tess Tester", str(uuid.UUID(int=2)), SPEAKER_MSI, "p-1", seed=3)
        ],
    )


def emulator_config(certs: DevCerts, **overrides: Any) -> EmulatorConfig:
    """The tests' emulator: the test app, the test meeting, trusting the test CA."""
    values: dict[str, Any] = {
        "cert_file": certs.cert_file,
        "key_file": certs.key_file,
        "trust_file": certs.ca_file,
        "apps": {APP_ID: AppRegistration(APP_ID, APP_SECRET, TENANT_ID)},
        "meetings": [meeting()],
        "media_connect_timeout_seconds": 5.0,
        **overrides,
    }
    return EmulatorConfig(**values)


@pytest.fixture
async def emulator(certs: DevCerts) -> AsyncIterator[Emulator]:
    emu = Emulator(emulator_config(certs))
    await emu.start()
    yield emu
    await emu.stop()


def settings_for(emu: Emulator, certs: DevCerts) -> Settings:
    base = emu.base_url
    return Settings(
        app_id=APP_ID,
        app_secret=APP_SECRET,
        tenant_id=TENANT_ID,
        graph_url=f"{base}/v1.0",
        authority_url=base,
        notification_openid_url=f"{base}/v1/.well-known/OpenIdConfiguration",
        ca_file=certs.ca_file,
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        webhook_port=0,
        gc_freeze=False,  # one process runs hundreds of bots; nothing to gain, memory to lose
        instance_internal_port=0,
    )


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@asynccontextmanager
async def running_bot(
    certs: DevCerts, time_scale: float, **changes: Any
) -> AsyncIterator[tuple[Emulator, Bot]]:
    """An emulator and a started Bot on this loop, the bot's settings changed by `changes`;
    both stopped afterwards. time_scale shrinks Graph's windows and the emulator's delays."""
    emulator = Emulator(emulator_config(certs, time_scale=time_scale))
    await emulator.start()
    bot = Bot(settings_for(emulator, certs).replace(**changes), window_scale=time_scale)
    try:
        await bot.start()
        yield emulator, bot
    finally:
        await bot.stop()
        await emulator.stop()
