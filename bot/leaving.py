"""Leaving every call at stop: hang up (or reject) each call through Graph and wait, within a
deadline, for Graph to confirm it ended; what is still up is reported."""

from __future__ import annotations

import asyncio
import logging

from bot.call import Call, CallEndedError, DecisionError
from bot.calls import CallCollection
from bot.errors import GraphError

# The Bot's logger: these lines were, and still are, the bot's (BOT_LOG_LEVELS names bot.app).
logger = logging.getLogger("bot.app")


def calls_left_up(calls: CallCollection) -> list[str]:
    """`id (state)` of every call Graph may still hold for this bot: what an immediate
    exit would leave up."""
    return [
        f"{call.id} ({call.state})"
        for call in calls.calls.values()
        if call.state not in ("terminated", "")
    ]


async def leave_all(
    calls: CallCollection, timeout_seconds: float, shutdown_timeout_seconds: float
) -> list[str]:
    """Every call the bot is in, in parallel: recording stopped and its status set,
    then DELETE, then Graph's `terminated` notification; an undecided incoming call is
    rejected. Waits at most timeout_seconds in all (the webhook is still up to hear
    Graph's answers); each call waits at most shutdown_timeout_seconds for `terminated`."""
    up = [c for c in calls.calls.values() if c.state not in ("terminated", "")]
    if not up:
        return []
    logger.info("Bot stopping: leaving %d call(s)", len(up))
    leaving = [
        asyncio.create_task(_leave(calls, call, shutdown_timeout_seconds), name=f"leave:{call.id}")
        for call in up
    ]
    _, pending = await asyncio.wait(leaving, timeout=timeout_seconds)
    for task in pending:
        task.cancel()
    await asyncio.gather(*leaving, return_exceptions=True)
    left = calls_left_up(calls)
    if left:
        logger.warning(
            "Bot stopped waiting after %.1f s; left up in Graph: %s",
            timeout_seconds,
            ", ".join(left),
        )
    return left


async def _leave(calls: CallCollection, call: Call, shutdown_timeout_seconds: float) -> None:
    try:
        if call.state == "incoming" and call.decision is None:
            await call.reject("busy")
        elif call.state == "terminating":
            pass  # Graph is ending it: only its `terminated` is awaited
        else:
            await call.hang_up()
        await call.wait_for("terminated", shutdown_timeout_seconds)
    except (GraphError, DecisionError, CallEndedError) as exc:
        # 404: Graph no longer has the call (its end notification was lost): nothing left.
        if isinstance(exc, GraphError) and exc.status == 404:
            calls.end(call)
            return
        logger.warning("Call(%s) could not be left at stop: %s", call.id, exc)
