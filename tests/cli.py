"""Running the `bot` command as a user does, as a subprocess: shared by the CLI tests."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bot.settings import Settings

RUN_SECONDS = 60.0


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without any BOT_* variable, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("BOT_")}
    return {**base, **env}


def settings_env(settings: Settings) -> dict[str, str]:
    """BOT_* variables that make Settings.load() give these settings (what differs from the
    defaults)."""
    default = Settings()
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value == getattr(default, name) or value is None:
            continue
        if isinstance(value, tuple):
            text = ",".join(value)
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        env["BOT_" + name.upper()] = text
    return env


async def start_bot(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        env=clean_env(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_bot(*args: str, env: dict[str, str], cwd: Path, seconds: float = RUN_SECONDS) -> Ran:
    """`python -m bot ARGS` to its end, with only the given BOT_* variables."""
    process = await start_bot(*args, env=env, cwd=cwd)
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())
