"""Every mistake a user makes in settings gets one line naming the setting and the value, and
exit status 2, with no traceback (`-v` keeps it): run as the user runs it, `python -m bot`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.devcerts import DevCerts, make_dev_certs
from tests.cli import Ran, run_bot


@dataclass
class Mistake:
    name: str
    env: dict[str, str]
    expect: tuple[str, ...]  # each must be in the one line printed
    args: tuple[str, ...] = ()
    files: dict[str, str] | None = None  # written under the test's directory, {dir} expanded


@pytest.fixture
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def mistakes(certs: DevCerts, other: DevCerts, port: int) -> list[Mistake]:
    key_pair = {"BOT_CERT_FILE": certs.cert_file, "BOT_KEY_FILE": certs.key_file}
    return [
        Mistake(
            "missing cert file",
            {"BOT_CERT_FILE": "/nonexistent/cert.pem", "BOT_KEY_FILE": certs.key_file},
            ("BOT_CERT_FILE='/nonexistent/cert.pem'", "no such file"),
        ),
        Mistake(
            "cert file is a directory",
            {"BOT_CERT_FILE": "{dir}", "BOT_KEY_FILE": certs.key_file},
            ("BOT_CERT_FILE=", "is not a file"),
        ),
        Mistake(
            "CA file not PEM",
            {"BOT_CA_FILE": "{dir}/ca.txt"},
            ("BOT_CA_FILE=", "ca.txt", "not a PEM file"),
            files={"ca.txt": "not a certificate\n"},
        ),
        Mistake(
            "key of another certificate",
            {"BOT_CERT_FILE": certs.cert_file, "BOT_KEY_FILE": other.key_file},
            ("BOT_CERT_FILE=", "BOT_KEY_FILE=", "not a certificate chain and its private key"),
        ),
        Mistake(
            "cert without key",
            {"BOT_CERT_FILE": certs.cert_file},
            ("BOT_CERT_FILE and BOT_KEY_FILE go together",),
        ),
        Mistake(
            "webhook port in use",
            {**key_pair, "BOT_WEBHOOK_PORT": str(port), "BOT_INSTANCE_INTERNAL_PORT": "0"},
            (f"BOT_WEBHOOK_PORT={port}", f"127.0.0.1:{port}", "already in use"),
        ),
        Mistake(
            "media port in use",
            {**key_pair, "BOT_WEBHOOK_PORT": "0", "BOT_INSTANCE_INTERNAL_PORT": str(port)},
            (f"BOT_INSTANCE_INTERNAL_PORT={port}", "already in use"),
        ),
        Mistake(
            "port not a number",
            {"BOT_WEBHOOK_PORT": "nine"},
            ("BOT_WEBHOOK_PORT='nine'", "whole number"),
        ),
        Mistake(
            "port out of range",
            {"BOT_INSTANCE_PUBLIC_PORT": "70000"},
            ("BOT_INSTANCE_PUBLIC_PORT='70000'", "65535"),
        ),
        Mistake(
            "http URL",
            {"BOT_GRAPH_URL": "http://graph.microsoft.com/v1.0"},
            ("BOT_GRAPH_URL='http://graph.microsoft.com/v1.0'", "https"),
        ),
        Mistake(
            "callback URL without host",
            {"BOT_CALLBACK_URL": "https:///api/calling"},
            ("BOT_CALLBACK_URL=", "with a host"),
        ),
        Mistake(
            "public IP not an address",
            {"BOT_INSTANCE_PUBLIC_IP": "my-vm"},
            ("BOT_INSTANCE_PUBLIC_IP='my-vm': is not an IP address",),
        ),
        Mistake(
            "media host address not an address",
            {"BOT_MEDIA_HOST_ADDRESSES": "127.0.0.1,eth0"},
            ("BOT_MEDIA_HOST_ADDRESSES=", "'eth0' is not an IP address"),
        ),
        Mistake(
            "half a port range",
            {"BOT_MEDIA_PORT_MIN": "50000"},
            ("BOT_MEDIA_PORT_MIN and BOT_MEDIA_PORT_MAX go together",),
        ),
        Mistake(
            "reversed port range",
            {"BOT_MEDIA_PORT_MIN": "50010", "BOT_MEDIA_PORT_MAX": "50000"},
            ("BOT_MEDIA_PORT_MIN..BOT_MEDIA_PORT_MAX", "50010..50000"),
        ),
        Mistake(
            "unknown processor",
            {"BOT_PROCESSORS": "recorder,nosuch"},
            ("BOT_PROCESSORS='recorder,nosuch'", "nosuch", "echo", "timeline"),
        ),
        Mistake(
            "processor path that does not import",
            {"BOT_PROCESSORS": "mypkg.nowhere:Thing"},
            ("BOT_PROCESSORS='mypkg.nowhere:Thing'", "cannot import mypkg.nowhere"),
        ),
        Mistake(
            "infinite leeway",
            {"BOT_NOTIFICATION_LEEWAY_SECONDS": "inf"},
            ("BOT_NOTIFICATION_LEEWAY_SECONDS='inf'", "finite"),
        ),
        Mistake(
            "negative leeway",
            {"BOT_NOTIFICATION_LEEWAY_SECONDS": "-5"},
            ("BOT_NOTIFICATION_LEEWAY_SECONDS='-5'", "greater than or equal to 0"),
        ),
        Mistake(
            "a tenant that is not a GUID",
            {"BOT_ALLOWED_TENANTS": "contoso"},
            ("BOT_ALLOWED_TENANTS=", "contoso"),
        ),
        Mistake(
            "empty secret is shown as ***",
            {"BOT_APP_SECRET": ""},
            ("BOT_APP_SECRET=***", "must not be empty"),
        ),
        Mistake(
            "fallback not a choice",
            {"BOT_INCOMING_CALL_FALLBACK": "maybe"},
            ("BOT_INCOMING_CALL_FALLBACK='maybe'", "'answer' or 'reject'"),
        ),
        Mistake(
            "log format",
            {"BOT_LOG_FORMAT": "xml"},
            ("BOT_LOG_FORMAT='xml'", "'text' or 'json'"),
        ),
        Mistake(
            "TOML key spelt as the variable",
            {},
            ("bot.toml", "BOT_WEBHOOK_PORT is not a setting", "did you mean webhook_port"),
            args=("--config", "{dir}/bot.toml"),
            files={"bot.toml": "BOT_WEBHOOK_PORT = 9441\n"},
        ),
        Mistake(
            "TOML key misspelt",
            {},
            ("webhok_port is not a setting", "did you mean webhook_port"),
            args=("--config", "{dir}/bot.toml"),
            files={"bot.toml": "webhok_port = 9441\n"},
        ),
        Mistake(
            "TOML syntax",
            {},
            ("bot.toml", "not valid TOML"),
            args=("--config", "{dir}/bot.toml"),
            files={"bot.toml": "webhook_port = \n"},
        ),
        Mistake(
            "TOML value of the wrong type",
            {},
            ("webhook_port='9441x' in ", "bot.toml: must be a whole number"),
            args=("--config", "{dir}/bot.toml"),
            files={"bot.toml": 'webhook_port = "9441x"\n'},
        ),
        Mistake(
            "missing TOML file",
            {"BOT_CONFIG": "{dir}/nope.toml"},
            ("BOT_CONFIG", "nope.toml", "no such file"),
        ),
        Mistake(
            "env file key misspelt",
            {},
            ("BOT_WEBHOK_PORT is not a setting", "did you mean BOT_WEBHOOK_PORT"),
            args=("--env-file", "{dir}/bot.env"),
            files={"bot.env": "BOT_WEBHOK_PORT=9441\n"},
        ),
        Mistake(
            "missing env file",
            {},
            ("--env-file", "nope.env", "no such file"),
            args=("--env-file", "{dir}/nope.env"),
        ),
    ]


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return make_dev_certs(tmp_path_factory.mktemp("other-certs"))


async def test_each_mistake_is_one_line_naming_the_setting(
    certs: DevCerts, other_certs: DevCerts, held_port: int, tmp_path: Path
) -> None:
    cases = mistakes(certs, other_certs, held_port)

    async def attempt(index: int, case: Mistake) -> tuple[Mistake, Ran]:
        directory = tmp_path / f"case-{index}"
        directory.mkdir()
        for name, text in (case.files or {}).items():
            (directory / name).write_text(text)
        env = {k: v.replace("{dir}", str(directory)) for k, v in case.env.items()}
        args = [a.replace("{dir}", str(directory)) for a in case.args]
        return case, await run_bot("serve", *args, env=env, cwd=directory)

    limit = asyncio.Semaphore(4)

    async def limited(index: int, case: Mistake) -> tuple[Mistake, Ran]:
        async with limit:
            return await attempt(index, case)

    results = await asyncio.gather(*(limited(i, c) for i, c in enumerate(cases)))
    problems = []
    for case, ran in results:
        # Log lines of what had started may come before it; the error is one line.
        lines = [line for line in ran.stderr.splitlines() if line.startswith("bot: ")]
        ok = (
            ran.code == 2
            and len(lines) == 1
            and "Traceback" not in ran.stderr
            and all(part in lines[0] for part in case.expect)
        )
        if not ok:
            problems.append(f"{case.name}: exit {ran.code}, stderr {ran.stderr!r}")
    assert not problems, "\n".join(problems)


async def test_verbose_keeps_the_traceback(tmp_path: Path) -> None:
    ran = await run_bot("-v", "serve", env={"BOT_WEBHOOK_PORT": "nine"}, cwd=tmp_path)
    assert ran.code == 2
    assert "BOT_WEBHOOK_PORT='nine'" in ran.stderr
    assert "Traceback" in ran.stderr


async def test_an_unknown_variable_is_a_warning_with_a_suggestion(tmp_path: Path) -> None:
    ran = await run_bot("settings", env={"BOT_WEBHOK_PORT": "9000"}, cwd=tmp_path)
    assert ran.code == 0, ran.stderr
    assert "BOT_WEBHOK_PORT is not a setting" in ran.stderr
    assert "did you mean BOT_WEBHOOK_PORT?" in ran.stderr
    assert "BOT_WEBHOOK_PORT=9441" in ran.stdout


async def test_settings_command_hides_secrets(tmp_path: Path) -> None:
    ran = await run_bot(
        "settings", env={"BOT_APP_SECRET": "s3cret", "BOT_WEBHOOK_PORT": "9000"}, cwd=tmp_path
    )
    assert ran.code == 0, ran.stderr
    assert "s3cret" not in ran.stdout + ran.stderr
    assert "BOT_APP_SECRET=***" in ran.stdout
    assert "BOT_WEBHOOK_PORT=9000" in ran.stdout
