"""The emulator process of bench/attack.py: Graph and Teams (emulator.Emulator, full media: the
participant talks, and decodes what the bot sends back), in a process of its own so that the
attack traffic's CPU is not in its media timing, nor the bot's.

Requests (attack_parts/pipe.py):
- ("token",): a notification token signed with the emulator's notification key, as
  emulator/notifier.py signs Graph's notifications (for the bench's genuine posts);
- ("heard", call_ids, t0, t1): per call, the frames the participant sent and heard back in
  [t0, t1) (time.monotonic(), CLOCK_MONOTONIC: the same clock in every process);
- ("echo", call_id, t0, t1): the echo analysis bot/demo.py reports (emulator/analysis.py),
  over what was heard in [t0, t1) against what was sent from MAX_LAG_SECONDS earlier;
- ("calls", call_ids): Graph's state and result of each call.
"""

from __future__ import annotations

import math
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from attack_parts.pipe import run, serve_pipe, worker_setup
from emulator import Emulator, EmulatorConfig
from emulator.analysis import MAX_LAG_SECONDS, Recording, echo_report
from emulator.login import NOTIFICATION_ISSUER
from emulator.notifier import NOTIFICATION_TOKEN_LIFETIME_SECONDS


def emulator_role(
    conn: Connection, config: EmulatorConfig, claims: dict[str, str], log: str
) -> None:
    worker_setup(Path(log))
    run(_main(conn, config, claims))


def _window(recording: Recording, t0: float, t1: float) -> Recording:
    keep = [i for i, t in enumerate(recording.times) if t0 <= t < t1]
    return Recording([recording.times[i] for i in keep], [recording.frames[i] for i in keep])


async def _main(conn: Connection, config: EmulatorConfig, claims: dict[str, str]) -> None:
    emulator = Emulator(config)
    await emulator.start()

    def link(call_id: str) -> Any:
        call = emulator.calls.get(call_id)
        return call.link if call is not None else None

    async def handle(message: tuple[Any, ...]) -> Any:
        kind, args = message[0], message[1:]
        if kind == "token":
            key = emulator.notification_keys[0]
            return key.sign(
                {"iss": NOTIFICATION_ISSUER, **claims}, NOTIFICATION_TOKEN_LIFETIME_SECONDS
            )
        if kind == "heard":
            call_ids, t0, t1 = args
            out: dict[str, Any] = {}
            for call_id in call_ids:
                found = link(call_id)
                if found is None:
                    out[call_id] = {"sent": 0, "heard": 0}
                    continue
                out[call_id] = {
                    "sent": sum(1 for t in found.sent.times if t0 <= t < t1),
                    "heard": sum(1 for t in found.heard.times if t0 <= t < t1),
                }
            return out
        if kind == "echo":
            call_id, t0, t1 = args
            found = link(call_id)
            if found is None:
                return {"correlation": 0.0, "delay_ms": None, "frames_sent": 0, "frames_heard": 0}
            report = echo_report(
                _window(found.sent, t0 - MAX_LAG_SECONDS, t1), _window(found.heard, t0, t1)
            )
            delay = report.delay_ms
            return {
                "correlation": round(report.correlation, 4),
                "delay_ms": None if math.isnan(delay) else round(delay, 1),
                "frames_sent": report.frames_sent,
                "frames_heard": report.frames_heard,
            }
        if kind == "calls":
            (call_ids,) = args
            states: dict[str, Any] = {}
            for call_id in call_ids:
                call = emulator.calls.get(call_id)
                states[call_id] = (
                    {"state": call.state, "result_info": call.result_info}
                    if call is not None
                    else {"state": "unknown", "result_info": None}
                )
            return states
        raise ValueError(f"unknown request {kind!r}")

    try:
        meeting = config.meetings[0]
        conn.send(("ok", {"join_url": emulator.join_url(meeting), "base": emulator.base_url}))
        await serve_pipe(conn, handle)
    finally:
        await emulator.stop()
    try:
        conn.send(("ok", None))
    except OSError:
        pass  # the bench is gone
