"""Play the bot's side of an emulator scenario (emulator/scenario.py, its `[bot]` table): join a
meeting, or answer / reject / redirect / transfer the scenario's incoming calls, stay for a
while, hang up; and record what the bot saw: each call's states, roster over time, and who was
heard when. `make demo SCENARIO=...` and tests/test_scenarios.py run scenarios through this.

`[bot]` keys (docs/emulator.md "Scenarios"):
  action        "join" (default) | "answer" | "reject" | "redirect" | "transfer"
  meeting       the meeting's name in the file (join; default the first)
  unmixed       receive unmixed meeting audio (default false)
  video_sockets receive-only video sockets to open (default 0)
  delta_roster  ask for delta roster notifications (default false)
  seconds       how long to stay in a call once established (default 5)
  participant_capacity   answer with it (policy-based recording)
  reject_reason "none" | "busy" | "forbidden"
  redirect_to   user id to redirect to
  transfer_to   user ids to try in turn: a declined transfer returns the call to established
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.app import Bot
from bot.call import Call
from bot.graph import shapes
from bot.participants import RosterUpdate, parse_msi
from media.clock import TICKS_PER_SECOND
from media.frames import AudioFrame
from media.session import MediaSessionOptions
from media.video import VideoSocketSettings

logger = logging.getLogger(__name__)

ACTIONS = ("join", "answer", "reject", "redirect", "transfer")
ESTABLISH_SECONDS = 30.0
END_SECONDS = 15.0
FRAMES_KEPT = 30 * 60 * 50  # half an hour of 20 ms frames


@dataclass(frozen=True)
class Heard:
    """One 20 ms frame as the bot's hot loop got it."""

    capture: float  # the sender's capture time, seconds on time.monotonic() (0 if unknown)
    speakers: tuple[int, ...]  # active speaker MSIs (mixed) or the unmixed buffers' MSIs
    concealed: bool


class HeardLog:
    """A processor that remembers who was heard in each frame (bounded), passing frames on."""

    name = "heard-log"

    def __init__(self) -> None:
        self.frames: deque[Heard] = deque(maxlen=FRAMES_KEPT)

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        speakers = tuple(b.msi for b in frame.unmixed) if frame.unmixed else frame.active_speakers
        capture = frame.original_sender_timestamp / TICKS_PER_SECOND
        self.frames.append(Heard(capture, speakers, frame.concealed))
        return None  # a tap: says nothing


@dataclass(frozen=True)
class Seen:
    """A participant as one roster update showed them."""

    name: str
    muted: bool
    streams: tuple[tuple[str, int], ...]  # (mediaType, MSI) of each media stream

    def msis(self, media_type: str) -> tuple[int, ...]:
        return tuple(msi for kind, msi in self.streams if kind == media_type)


@dataclass
class RosterEntry:
    at: float  # time.monotonic() the update was applied
    participants: dict[str, Seen]  # by participant id


@dataclass
class CallRecord:
    call: Call
    roster: list[RosterEntry] = field(default_factory=list)
    established_at: float | None = None

    @property
    def states(self) -> list[str]:
        return list(self.call.states_seen)

    def names_over_time(self) -> list[set[str]]:
        return [{p.name for p in r.participants.values()} for r in self.roster]


@dataclass
class ScenarioRun:
    calls: list[CallRecord] = field(default_factory=list)
    heard: HeardLog = field(default_factory=HeardLog)

    def record(self, call: Call) -> CallRecord:
        for record in self.calls:
            if record.call is call:
                return record
        record = CallRecord(call)
        self.calls.append(record)

        def on_roster(call: Call, update: RosterUpdate) -> None:
            record.roster.append(RosterEntry(time.monotonic(), snapshot(call)))

        call.events.on("participants", on_roster)
        return record


def snapshot(call: Call) -> dict[str, Seen]:
    seen = {}
    for pid, p in call.participants.items():
        streams = tuple(
            (str(s.get("mediaType")), msi)
            for s in p.resource.get("mediaStreams") or ()
            if isinstance(s, dict) and (msi := parse_msi(s.get("sourceId"))) is not None
        )
        seen[pid] = Seen(p.display_name, p.is_muted, streams)
    return seen


def media_options(bot_table: dict[str, Any]) -> MediaSessionOptions:
    sockets = int(bot_table.get("video_sockets", 0))
    return MediaSessionOptions(
        receive_unmixed_meeting_audio=bool(bot_table.get("unmixed", False)),
        video_sockets=tuple(VideoSocketSettings(direction="recvonly") for _ in range(sockets)),
    )


async def play(
    bot: Bot,
    bot_table: dict[str, Any],
    run: ScenarioRun,
    join_url: str | None,
    ring: Callable[[], Awaitable[int]],
    progress: Callable[[CallRecord], None] | None = None,
) -> ScenarioRun:
    """Play `[bot]`: `join_url` for a join, `ring()` starts the scenario's incoming calls and
    returns how many will ring. The bot's processors should include `run.heard`."""
    action = bot_table.get("action", "join")
    if action not in ACTIONS:
        raise ValueError(f"[bot] action must be one of {', '.join(ACTIONS)}")
    seconds = float(bot_table.get("seconds", 5.0))
    options = media_options(bot_table)
    if action == "join":
        if join_url is None:
            raise ValueError("a join scenario needs a meeting")
        call = await bot.join(
            join_url,
            media_options=options,
            delta_roster=bool(bot_table.get("delta_roster", False)),
        )
        await _stay(run.record(call), seconds, progress)
        return run

    done: list[asyncio.Task[None]] = []
    rung = asyncio.Event()
    expected: int | None = None  # known once ring() returns; calls may come in before that

    async def on_incoming(call: Call) -> None:
        record = run.record(call)
        done.append(
            asyncio.create_task(_decide(call, record, bot_table, options, seconds, progress))
        )
        if expected is not None and len(done) >= expected:
            rung.set()

    bot.calls.events.on("incoming_call", on_incoming)
    expected = await ring()
    if len(done) >= expected:
        rung.set()
    await asyncio.wait_for(rung.wait(), ESTABLISH_SECONDS + expected * 10)
    # Calls rung while others run (policy-recording overflow) are decided as they come.
    while True:
        pending = [t for t in done if not t.done()]
        if not pending:
            break
        await asyncio.gather(*pending)
    return run


async def _decide(
    call: Call,
    record: CallRecord,
    table: dict[str, Any],
    options: MediaSessionOptions,
    seconds: float,
    progress: Callable[[CallRecord], None] | None,
) -> None:
    action = table.get("action")
    if action == "reject":
        await call.reject(table.get("reject_reason", "none"))
        await call.wait_for("terminated", END_SECONDS)
        return
    if action == "redirect":
        await call.redirect([shapes.identity_set(user_id=str(table["redirect_to"]))])
        await call.wait_for("terminated", END_SECONDS)
        return
    capacity = table.get("participant_capacity")
    await call.answer(
        media_options=options,
        participant_capacity=int(capacity) if capacity is not None else None,
        delta_roster=bool(table.get("delta_roster", False)),
    )
    if action == "transfer":
        await call.wait_for("established", ESTABLISH_SECONDS)
        for user_id in table.get("transfer_to", []):
            before = len(call.states_seen)
            await call.transfer(shapes.identity_set(user_id=str(user_id)))
            # Accepted: the call ends; declined: back to established (https://learn.microsoft.com/en-us/graph/api/call-transfer).
            await call.wait_until(_transfer_settled(before), ESTABLISH_SECONDS)
            if call.state == "terminated":
                return
        await call.hang_up()
        await call.wait_for("terminated", END_SECONDS)
        return
    await _stay(record, seconds, progress)


def _transfer_settled(states_before: int) -> Callable[[Call], bool]:
    def settled(call: Call) -> bool:
        back = call.state == "established" and len(call.states_seen) > states_before
        return call.state == "terminated" or back

    return settled


async def _stay(
    record: CallRecord, seconds: float, progress: Callable[[CallRecord], None] | None
) -> None:
    call = record.call
    await call.wait_for("established", ESTABLISH_SECONDS)
    record.established_at = time.monotonic()
    ended = asyncio.ensure_future(call.wait_for("terminated", seconds + END_SECONDS))
    deadline = time.monotonic() + seconds
    try:
        # The scenario's length is the point here; the call may also end on its own first.
        while (left := deadline - time.monotonic()) > 0 and not ended.done():
            await asyncio.wait([ended], timeout=min(1.0, left))
            if progress is not None:
                progress(record)
    finally:
        if not ended.done():
            await call.hang_up()
        await ended


# -- [expect]: the outcome a scenario file promises ----------------------------------------------

EXPECT_KEYS = frozenset(
    {
        "final_state",  # every call's last state
        "states",  # the first call's states, in order
        "calls",  # how many calls the bot had (overflow calls included)
        "result_subcode",  # the first call's resultInfo subcode at its end
        "first_call_roster",  # the scenario's people in the first call's last roster
        "roster_start",  # ... in its first roster update
        "roster_max",  # ... in some roster update
        "roster_end",  # ... in its last roster update
    }
)


@dataclass(frozen=True)
class Outcome:
    """What Graph (the emulator) saw of a scenario's calls, beside what the bot saw."""

    redirected_to: dict[str, list[str]] = field(default_factory=dict)  # call id -> identity ids
    transfer_targets: dict[str, list[str]] = field(default_factory=dict)  # call id -> in order
    declining_users: frozenset[str] = frozenset()  # transfer targets who decline
    recorded: frozenset[str] = frozenset()  # calls whose `recording` status Graph acknowledged


def check_expect(
    expect: dict[str, Any],
    bot_table: dict[str, Any],
    run: ScenarioRun,
    people: dict[str, str],
    outcome: Outcome,
) -> list[str]:
    """What did not hold, one line each (empty: the scenario passed). `expect` is the scenario's
    [expect] table, `bot_table` its [bot] table, `people` its participants' ids -> names.

    Beyond [expect]: there was a call, every call ended (terminated, unless final_state says
    otherwise), a redirect reached Graph with the [bot] redirect_to target for every call, and
    a transfer ended at a target who accepts it."""
    failed = [f"[expect] {key}: unknown expectation" for key in sorted(set(expect) - EXPECT_KEYS)]
    records = run.calls
    if not records:
        return [*failed, "the bot had no call"]
    first = records[0]
    final = expect.get("final_state", "terminated")
    for record in records:
        if record.states[-1:] != [final]:
            failed.append(f"call {record.call.id}: ended {record.states[-1:]}, expected {final!r}")
    if "calls" in expect and len(records) != expect["calls"]:
        failed.append(f"[expect] calls: {len(records)} calls, expected {expect['calls']}")
    if "states" in expect and first.states != list(expect["states"]):
        failed.append(f"[expect] states: {first.states}, expected {list(expect['states'])}")
    if "result_subcode" in expect:
        subcode = (first.call.result_info or {}).get("subcode")
        if subcode != expect["result_subcode"]:
            failed.append(
                f"[expect] result_subcode: {subcode}, expected {expect['result_subcode']}"
            )
    rosters = [
        sorted(seen.name for pid, seen in entry.participants.items() if pid in people)
        for entry in first.roster
    ]
    for key, got in (
        ("roster_start", rosters[0] if rosters else None),
        ("roster_end", rosters[-1] if rosters else None),
        ("first_call_roster", rosters[-1] if rosters else None),
    ):
        if key in expect and got != sorted(expect[key]):
            failed.append(f"[expect] {key}: {got}, expected {sorted(expect[key])}")
    if "roster_max" in expect and sorted(expect["roster_max"]) not in rosters:
        failed.append(
            f"[expect] roster_max: {sorted(expect['roster_max'])} never seen in {rosters}"
        )
    action = bot_table.get("action", "join")
    if action == "redirect":
        target = [str(bot_table.get("redirect_to"))]
        for record in records:
            got = outcome.redirected_to.get(record.call.id, [])
            if got != target:
                failed.append(f"call {record.call.id}: redirected to {got}, expected {target}")
    if action == "transfer":
        tried = outcome.transfer_targets.get(first.call.id, [])
        if not tried or tried[-1] in outcome.declining_users:
            failed.append(f"call {first.call.id}: transfers to {tried} reached no accepting target")
    return failed
