"""The bot process of bench/attack.py: a real Bot (bot.app.Bot, the `echo` processor from its
settings) in a process of its own, so that its memory, its file limit and its loops are only
its own, and the attack traffic does not share its interpreter.

Requests (attack_parts/pipe.py):
- ("join", n, within): join the emulated meeting n times in parallel, each established within
  `within` s or hung up; -> [{call_id, session_id, ok, error, seconds}];
- ("hangup", call_ids, within): hang those calls up and wait for Graph's `terminated`;
- ("stats", call_ids): each call's state and media-session counters;
- ("counters",): the webhook's and the media-control endpoint's counters;
- ("log",): what the bot logged (attack_parts/pipe.py CappedLog).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from attack_parts.pipe import CappedLog, run, serve_pipe, worker_setup
from bot.app import Bot
from bot.call import Call
from bot.settings import Settings

JOIN_CONCURRENCY = 8


def bot_role(conn: Connection, settings: Settings, join_url: str, nofile: int, log: str) -> None:
    # Spawned children inherit the bench's raised file limit: the bot gets its own (the one
    # the bench started with, or --bot-nofile) before it opens anything.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    handler = worker_setup(Path(log))
    run(_main(conn, settings, join_url, handler))


class BotState:
    def __init__(self, bot: Bot, join_url: str, handler: CappedLog) -> None:
        self.bot = bot
        self.join_url = join_url
        self.handler = handler
        self.calls: dict[str, Call] = {}


async def _main(conn: Connection, settings: Settings, join_url: str, handler: CappedLog) -> None:
    state = BotState(Bot(settings), join_url, handler)
    try:
        await state.bot.start()
    except Exception as exc:
        conn.send(("error", f"the bot did not start: {type(exc).__name__}: {exc}"))
        return
    requests: dict[str, Callable[..., Awaitable[Any]]] = {
        "join": _join,
        "hangup": _hang_up,
        "stats": _stats,
        "counters": _counters,
        "log": _log,
    }

    async def handle(message: tuple[Any, ...]) -> Any:
        return await requests[message[0]](state, *message[1:])

    bot = state.bot
    try:
        conn.send(
            (
                "ok",
                {
                    "callback_url": bot.callback_url,
                    "control_port": bot.media.bound_port,
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                },
            )
        )
        await serve_pipe(conn, handle)
    finally:
        await bot.stop()  # leaves every call (shutdown_timeout_seconds), then shuts down
        handler.close()
    try:
        conn.send(("ok", None))
    except OSError:
        pass  # the bench is gone


async def _join(state: BotState, count: int, within: float) -> list[dict[str, Any]]:
    limit = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def one() -> dict[str, Any]:
        async with limit:
            started = time.monotonic()
            row: dict[str, Any] = {"call_id": None, "session_id": None, "ok": False, "error": ""}
            try:
                call = await state.bot.join(state.join_url)
                state.calls[call.id] = call
                row["call_id"], row["session_id"] = call.id, call.media_session_id
                try:
                    await call.wait_for("established", within)
                    row["ok"] = True
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    row["result_info"] = call.result_info
                    await asyncio.gather(call.hang_up(), return_exceptions=True)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            row["seconds"] = round(time.monotonic() - started, 2)
            return row

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _hang_up(state: BotState, call_ids: list[str], within: float) -> int:
    async def one(call: Call) -> None:
        if call.state not in ("terminated", "terminating", ""):
            await call.hang_up()
        await call.wait_for("terminated", within)

    calls = [state.calls.pop(c) for c in call_ids if c in state.calls]
    results = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    return sum(1 for r in results if not isinstance(r, BaseException))


async def _stats(state: BotState, call_ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for call_id in call_ids:
        call = state.calls.get(call_id)
        if call is None:
            out[call_id] = {"state": "unknown"}
            continue
        session = state.bot.media_session(call)
        out[call_id] = {
            "state": call.state,
            "media_lost": call.media_lost,
            "result_info": call.result_info,
            "media_state": session.state if session is not None else None,
            "media": dict(session.stats) if session is not None else {},
        }
    return out


async def _counters(state: BotState) -> dict[str, Any]:
    bot = state.bot
    return {
        "webhook": _fields(bot.webhook_stats),
        "control": _fields(getattr(bot.media, "control_stats", None)),
        "calls_known": len(bot.calls.calls),
    }


def _fields(stats: object) -> dict[str, Any]:
    """A stats object's counters (ints and counters of ints), whatever its shape: the fixes
    may add some."""
    if stats is None:
        return {}
    values = (
        {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
        if dataclasses.is_dataclass(stats)
        else dict(getattr(stats, "__dict__", {}))
    )
    return {
        k: (dict(v) if isinstance(v, dict) else v)
        for k, v in values.items()
        if isinstance(v, int | float | dict) and not k.startswith("_")
    }


async def _log(state: BotState) -> dict[str, Any]:
    logging.getLogger().handlers[0].flush()
    return state.handler.summary()
