"""`python -m emulator serve --env-file F` and `python -m bot join URL --env-file F`: the emulator
and the bot in two real processes, set up by the one file, media on loopback.

Every subprocess gets TMPDIR pointed at a directory of the test's own, so "no throwaway CA key is
left in the temp directory" is checked exactly. Waits are on printed lines, with timeouts.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from dotenv import dotenv_values

from emulator.cli import (
    READY,
    env_value,
    kept_certs,
    load_certs,
    make_certs,
    write_env_file,
)

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0  # two Python processes importing aiortc, on a shared 2-core machine
EXIT_TIMEOUT_S = 30.0
MEDIA_LINE = re.compile(
    r"MP x media connected: local (?P<local>[0-9a-f.:]+):\d+, bot (?P<bot>[0-9a-f.:]+):\d+"
)


class Child:
    """A subprocess whose stdout and stderr lines are read as they come (so that neither pipe
    fills up and blocks it), with a wait for the first line that matches."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = asyncio.Condition()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read("stdout", process.stdout)),
            asyncio.create_task(self._read("stderr", process.stderr)),
        ]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(process)

    async def _read(self, name: str, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            async with self._changed:
                self.lines[name].append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_line(
        self, match: Callable[[str], bool], stream: str = "stdout", within: float = 30.0
    ) -> str:
        def found() -> str | None:
            return next((line for line in self.lines[stream] if match(line)), None)

        try:
            async with asyncio.timeout(within), self._changed:
                while (line := found()) is None:
                    if self.process.returncode is not None or all(r.done() for r in self._readers):
                        raise AssertionError(f"exited before the line came\n{self.output()}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no such line within {within} s\n{self.output()}") from None
        return line

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        async with asyncio.timeout(EXIT_TIMEOUT_S):
            code = await self.process.wait()
            await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def output(self) -> str:
        return "\n".join(
            f"[{name}] {line}" for name, lines in self.lines.items() for line in lines[-60:]
        )


def child_env(tmpdir: Path, **extra: str) -> dict[str, str]:
    """This environment without any BOT_* (the file must be the whole set-up), TMPDIR ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    return {**env, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1", **extra}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(tmpdir: Path) -> list[Path]:
    """Throwaway certificate directories and keys under `tmpdir`."""
    return [*tmpdir.glob("emulator-certs-*"), *tmpdir.rglob("*.pem")]


async def test_emulator_serve_then_bot_join_with_one_env_file(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env_file = tmp_path / "bot.env"
    emulator = await Child.start(
        "-m", "emulator", "serve", "--port", "0", "--env-file", str(env_file),
        env=child_env(tmpdir),
    )  # fmt: skip
    bot: Child | None = None
    try:
        await emulator.wait_line(lambda line: line == READY, within=START_TIMEOUT_S)
        out = "\n".join(emulator.lines["stdout"])
        join_url = re.search(r"join URL (https://teams\.microsoft\.com/\S+)", out)
        assert join_url is not None, out
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", out)
        assert port is not None and int(port[1]) > 0, out

        # The file: mode 0600 (it holds the app secret), every setting the bot needs.
        assert mode(env_file) == 0o600
        settings = dotenv_values(env_file)
        assert settings["BOT_GRAPH_URL"] == f"https://localhost:{port[1]}/v1.0"
        assert settings["BOT_AUTHORITY_URL"] == f"https://localhost:{port[1]}"
        assert settings["BOT_MEDIA_HOST_ADDRESSES"] == "127.0.0.1"
        for name in ("BOT_APP_ID", "BOT_APP_SECRET", "BOT_TENANT_ID"):
            assert settings[name], name
        key_file = Path(str(settings["BOT_KEY_FILE"]))
        assert key_file.parent.parent == tmpdir and key_file.parent.name.startswith(
            "emulator-certs-"
        )
        assert mode(key_file) == 0o600
        assert mode(Path(str(settings["BOT_CA_FILE"]))) == 0o644

        bot = await Child.start(
            "-m", "bot", "join", join_url[1], "--env-file", str(env_file),
            # Any free ports: other tests may hold the defaults (9441, 8445).
            env=child_env(tmpdir, BOT_WEBHOOK_PORT="0", BOT_INSTANCE_INTERNAL_PORT="0"),
        )  # fmt: skip
        await bot.wait_line(lambda line: line.startswith("established:"), within=START_TIMEOUT_S)
        media = await emulator.wait_line(lambda line: bool(MEDIA_LINE.search(line)), "stderr")
        pair = MEDIA_LINE.search(media)
        assert pair is not None
        # Both ends on loopback: the MP's own candidate and the address the bot's media came
        # from (the bot's candidate), which stock aioice would have put on another interface.
        assert (pair["local"], pair["bot"]) == ("127.0.0.1", "127.0.0.1"), media

        assert await bot.stop() == 0, bot.output()
        assert await emulator.stop() == 0, emulator.output()
    finally:
        for child in (bot, emulator):
            if child is not None:
                await child.kill()
    assert leftovers(tmpdir) == []  # key_file's directory included


async def test_state_dir_certificates_are_kept_and_reused(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    state = tmp_path / "state"
    printed = []
    for _ in range(2):
        emulator = await Child.start(
            "-m", "emulator", "serve", "--port", "0", "--state-dir", str(state),
            env=child_env(tmpdir),
        )  # fmt: skip
        try:
            await emulator.wait_line(lambda line: line == READY, within=START_TIMEOUT_S)
            printed.append(emulator.lines["stdout"][0])
            # Ctrl-C is a clean stop too.
            assert await emulator.stop(signal.SIGINT) == 0, emulator.output()
        finally:
            await emulator.kill()
    ca = state / "ca.pem"
    assert printed == [f"emulator: new CA kept at {ca}", f"emulator: reused CA kept at {ca}"]
    assert mode(state / "key.pem") == 0o600
    assert mode(state) == 0o700
    assert leftovers(tmpdir) == []


async def test_throwaway_ca_is_removed_when_start_up_fails(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        emulator = await Child.start(
            "-m", "emulator", "serve", "--port", str(port), env=child_env(tmpdir)
        )  # fmt: skip
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                code = await emulator.process.wait()
        finally:
            await emulator.kill()
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in emulator.output()
    assert leftovers(tmpdir) == []


def test_env_file_reads_the_same_in_sh_and_dotenv(tmp_path: Path) -> None:
    values = {
        "BOT_PLAIN": "https://localhost:9443/v1.0",
        "BOT_SPACED": "/tmp/my certs/ca.pem",
        "BOT_DOLLAR": "$HOME and `id` # not a comment",
        "BOT_EMPTY": "",
        "BOT_LIST": "127.0.0.1,::1",
    }
    env_file = tmp_path / "bot.env"
    write_env_file(env_file, values, "a comment\nover two lines")
    text = env_file.read_text()
    assert "BOT_PLAIN=https://localhost:9443/v1.0\n" in text  # quoted only if needed
    assert "BOT_SPACED='/tmp/my certs/ca.pem'\n" in text
    assert mode(env_file) == 0o600
    assert dotenv_values(env_file) == values
    shown = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", str(env_file)],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
    ).stdout.decode()
    from_sh = dict(item.split("=", 1) for item in shown.split("\0") if item.startswith("BOT_"))
    assert from_sh == values
    for unsafe in ("it's", "C:\\certs", "two\nlines", "${HOME}"):
        with pytest.raises(ValueError, match="cannot write"):
            env_value(unsafe)
    assert not list(tmp_path.glob(".bot.env.*"))  # the temporary file was renamed, not left


def test_kept_certificates_are_reused_only_while_good(tmp_path: Path) -> None:
    names = ("localhost", "127.0.0.1")
    first, reused = kept_certs(tmp_path / "state", names)
    assert not reused
    again, reused = kept_certs(tmp_path / "state", names)
    assert reused and again == first
    ca_pem = Path(first.ca_file).read_bytes()

    now = datetime.datetime.now(datetime.UTC)
    assert load_certs(tmp_path / "state", names, now) == first
    # Another name (emulator serve --host myhost), an expiring certificate, a foreign key.
    assert load_certs(tmp_path / "state", (*names, "myhost.example"), now) is None
    assert load_certs(tmp_path / "state", names, now.replace(year=now.year + 2000)) is None
    other = make_certs(tmp_path / "other", names)
    Path(first.key_file).write_bytes(Path(other.key_file).read_bytes())
    assert load_certs(tmp_path / "state", names, now) is None
    renewed, reused = kept_certs(tmp_path / "state", names)
    assert not reused and Path(renewed.ca_file).read_bytes() != ca_pem
    # A leaf from another CA next to this ca.pem.
    Path(renewed.cert_file).write_bytes(Path(other.cert_file).read_bytes())
    Path(renewed.key_file).write_bytes(Path(other.key_file).read_bytes())
    assert load_certs(tmp_path / "state", names, now) is None
