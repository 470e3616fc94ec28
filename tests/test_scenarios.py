"""Every shipped scenario (emulator/scenarios/*.toml) played against the bot, with its outcome
asserted: call states, the roster as the bot saw it over time, and who the bot heard when,
against the scenario's own script (the emulator's ground truth).

Who spoke when: each frame the bot's hot loop got carries its capture time (abs-capture-time),
which puts it on the scenario's timeline (seconds from the call's media start). Frames within
FRAME_SLACK of a spurt's edge or an event are not judged: the codec and the 20 ms grid blur
the edge by a frame either way.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from bot.app import Bot
from bot.devcerts import DevCerts
from bot.graph.client import GraphError
from bot.scenarios import CallRecord, ScenarioRun, play
from emulator import Emulator
from emulator.incoming import ring_incoming
from emulator.participant import ParticipantScript
from emulator.scenario import Scenario, ScenarioError, load, names, parse
from media.clock import TICKS_PER_SECOND
from media.pipeline.events import MIXED, SpeechStopped
from tests.conftest import APP_ID, emulator_config, settings_for

FRAME_SLACK = 0.06
SHIPPED_TESTS = {
    "demo",
    "standup",
    "panel",
    "incoming-p2p",
    "policy-recording",
    "transfer",
    "redirect",
    "two-tenants",
    "flaky-network",
    "turns",
}


@dataclass
class Played:
    scenario: Scenario
    emulator: Emulator
    run: ScenarioRun
    bot: Bot

    def media_start(self, record: CallRecord) -> float:
        link = self.emulator.calls[record.call.id].link
        assert link is not None and link.media_start is not None
        return link.media_start


@asynccontextmanager
async def played(
    certs: DevCerts,
    name: str,
    seconds: float | None = None,
    delta_roster: bool = False,
    unmixed: bool | None = None,
) -> AsyncIterator[Played]:
    """Run scenario `name` to its end against the bot (staying `seconds` if given, asking for
    delta rosters or unmixed audio if told); the emulator stays up for assertions."""
    scenario = load(name)
    if seconds is not None:
        scenario.bot["seconds"] = seconds
    if delta_roster:
        scenario.bot["delta_roster"] = True
    if unmixed is not None:
        scenario.bot["unmixed"] = unmixed
    config = scenario.config(**_base_config(certs))
    emulator = Emulator(config)
    await emulator.start()
    run = ScenarioRun()
    bot = Bot(settings_for(emulator, certs), processors=lambda ctx: [run.heard])
    await bot.start()
    try:
        meeting = scenario.meeting(scenario.bot.get("meeting")) if scenario.meetings else None
        join_url = emulator.join_url(meeting) if meeting is not None else None

        ringing: list[asyncio.Task[Any]] = []

        async def ring() -> int:
            ringing.append(asyncio.create_task(ring_incoming(emulator, bot.callback_url)))
            return len(scenario.incoming)

        await asyncio.wait_for(play(bot, scenario.bot, run, join_url, ring), 60)
        yield Played(scenario, emulator, run, bot)
    finally:
        await bot.stop()
        await emulator.stop()


def _base_config(certs: DevCerts) -> dict[str, Any]:
    base = vars(emulator_config(certs))
    return {k: base[k] for k in ("cert_file", "key_file", "trust_file", "apps")} | {
        "media_connect_timeout_seconds": 5.0
    }


def judged(
    played: Played,
    record: CallRecord,
    expected: Callable[[float], set[int]],
    edges: list[float],
    until: float,
) -> tuple[int, int]:
    """(frames whose speakers match `expected(t)`, frames judged), t in media seconds."""
    start = played.media_start(record)
    good = total = 0
    for heard in played.run.heard.frames:
        if heard.capture <= 0:
            continue
        t = heard.capture - start
        if not 0.1 <= t <= until or any(abs(t - e) < FRAME_SLACK for e in edges):
            continue
        total += 1
        good += set(heard.speakers) == expected(t)
    return good, total


def spurt_edges(scripts: list[ParticipantScript]) -> list[float]:
    return [edge for s in scripts for spurt in (s.talk or ()) for edge in spurt]


def test_every_shipped_scenario_loads_and_has_a_test() -> None:
    assert set(names()) == SHIPPED_TESTS
    for name in names():
        scenario = load(name)
        assert scenario.description
        assert scenario.meetings or scenario.incoming


async def test_demo_scenario_is_heard_the_whole_time(certs: DevCerts) -> None:
    async with played(certs, "demo", seconds=3) as p:
        record = p.run.calls[0]
        assert record.states[-1] == "terminated"
        avery = p.scenario.participant("avery")
        good, total = judged(p, record, lambda t: {avery.msi}, [], 2.8)
        assert total > 100 and good / total >= 0.99


@pytest.mark.parametrize("delta_roster", [False, True], ids=["full-roster", "delta-roster"])
async def test_standup_roster_mute_camera_share_and_speakers(
    certs: DevCerts, delta_roster: bool
) -> None:
    async with played(certs, "standup", delta_roster=delta_roster) as p:
        s = p.scenario
        record = p.run.calls[0]
        alice, bob, gina, pat = (s.participant(n) for n in ("alice", "bob", "gina", "pat"))
        people = {x.participant_id for x in (alice, bob, gina, pat)}
        rosters = [
            {pid: seen for pid, seen in r.participants.items() if pid in people}
            for r in record.roster
        ]
        names_seen = [sorted(seen.name for seen in r.values()) for r in rosters]
        assert names_seen[0] == s.expect["roster_start"]
        assert s.expect["roster_max"] in names_seen
        assert names_seen[-1] == s.expect["roster_end"]
        # Identities as the roster shows them: a guest, a phone number.
        ids = p.emulator.calls[record.call.id].roster.snapshot()
        kinds = {e["info"]["identity"].get("phone", {}).get("id") for e in ids}
        assert "+14255550100" in kinds
        # Alice: shares from 1.0 s to 4.6 s, is muted 3.4-4.0 s; Bob's camera goes off at 2 s.
        alice_states = [
            (r[alice.participant_id].muted, r[alice.participant_id].msis("videoBasedScreenSharing"))
            for r in rosters
            if alice.participant_id in r
        ]
        assert (False, ()) == alice_states[0]
        assert (False, (3001,)) in alice_states
        assert (True, (3001,)) in alice_states
        assert alice_states[-1] == (False, ())
        bob_video = [r[bob.participant_id].msis("video") for r in rosters]
        assert bob_video[0] == (2002,) and bob_video[-1] == ()

        # Who spoke when, against the script with presence and mute applied.
        def expected(t: float) -> set[int]:
            who = {alice.msi} if alice.talking(t) and not 3.4 <= t < 4.0 else set()
            who |= {bob.msi} if bob.talking(t) else set()
            who |= {gina.msi} if gina.talking(t) and 2.5 <= t < 5.2 else set()
            return who  # Pat's line is silent: never an active speaker

        edges = spurt_edges([alice, bob, gina]) + [2.5, 3.4, 4.0, 5.2]
        good, total = judged(p, record, expected, edges, 5.8)
        assert total > 200 and good / total >= 0.95, (good, total)


async def test_panel_unmixed_streams_follow_the_speakers(certs: DevCerts) -> None:
    async with played(certs, "panel") as p:
        record = p.run.calls[0]
        scripts = p.scenario.meeting().participants

        def talking(t: float) -> set[int]:
            return {x.msi for x in scripts if x.talking(t)}

        edges = spurt_edges(scripts)
        good, total = judged(p, record, talking, edges, 4.0)
        # Five at once (1.3-1.4 s) is more than the four streams: those frames must carry four
        # of the five, and are judged by that rule instead.
        five = [
            h for h in p.run.heard.frames if len(talking(h.capture - p.media_start(record))) == 5
        ]
        assert len(five) >= 3  # 1.3-1.4 s: five frames, bar edge jitter
        assert all(len(h.speakers) == 4 for h in five if not h.concealed)
        # Unmixed streams carry nothing while nobody talks: only the talking frames arrive.
        assert total > 60 and good / total >= 0.95 - len(five) / total, (good, total)


async def test_incoming_p2p_is_answered_and_the_caller_heard(certs: DevCerts) -> None:
    async with played(certs, "incoming-p2p") as p:
        record = p.run.calls[0]
        assert record.states == p.scenario.expect["states"]
        casey = p.scenario.participant("casey")
        good, total = judged(
            p, record, lambda t: {casey.msi} if casey.talking(t) else set(), [0.3, 2.0], 2.8
        )
        assert total > 80 and good / total >= 0.97


async def test_policy_recording_capacity_overflows_into_new_calls(certs: DevCerts) -> None:
    async with played(certs, "policy-recording") as p:
        assert len(p.run.calls) == p.scenario.expect["calls"]
        first = p.run.calls[0]
        assert first.call.is_policy_recording
        view = p.emulator.calls[first.call.id]
        assert view.participant_capacity == 2
        people = {x.participant_id for x in [p.scenario.participant(n) for n in ("rita", "sam")]}
        last = {pid: s.name for pid, s in first.roster[-1].participants.items() if pid in people}
        assert sorted(last.values()) == p.scenario.expect["first_call_roster"]
        overflow = [p.emulator.calls[c] for c in view.overflow_calls]
        callers = sorted(c.fields["source"]["identity"]["user"]["displayName"] for c in overflow)
        assert callers == ["Tia Third", "Uma Fourth"]
        assert all(r.states[-1] == "terminated" for r in p.run.calls)


async def test_transfer_declined_then_accepted(certs: DevCerts) -> None:
    async with played(certs, "transfer") as p:
        record = p.run.calls[0]
        states = record.states
        assert states.count("transferring") == 2
        back = states.index("transferring") + 1
        assert states[back] == "established"  # declined: back in the call
        assert states[-1] == "terminated"
        assert record.call.result_info is not None
        assert record.call.result_info["subcode"] == p.scenario.expect["result_subcode"]


async def test_redirect_sends_both_calls_on(certs: DevCerts) -> None:
    async with played(certs, "redirect") as p:
        assert len(p.run.calls) == 2
        assert all(r.states[-1] == "terminated" for r in p.run.calls)
        redirects = [r for r in p.emulator.requests if r.path.endswith("/redirect")]
        assert len(redirects) == 2
        target = redirects[0].json["targets"][0]["identity"]["user"]["id"]
        assert target == p.scenario.bot["redirect_to"]


async def test_two_tenants_keep_their_calls_apart(certs: DevCerts) -> None:
    scenario = load("two-tenants")
    emulator = Emulator(scenario.config(**_base_config(certs)))
    await emulator.start()
    bots = []
    try:
        calls = []
        for app, meeting in zip(scenario.apps.values(), ("north", "south"), strict=True):
            settings = settings_for(emulator, certs).replace(
                app_id=app.app_id, app_secret=app.secret, tenant_id=app.tenant_id
            )
            bot = Bot(settings)
            await bot.start()
            bots.append(bot)
            call = await bot.join(emulator.join_url(scenario.meeting(meeting)), media="service")
            await call.wait_for("established", 15)
            calls.append(call)
        for call, app in zip(calls, scenario.apps.values(), strict=True):
            view = emulator.calls[call.id]
            assert (view.app_id, view.tenant_id) == (app.app_id, app.tenant_id)
        # The second app's token cannot read the first app's call.
        with pytest.raises(GraphError) as info:
            await bots[1].graph.request("GET", f"/communications/calls/{calls[0].id}")
        assert info.value.status == 403
        for call in calls:
            await call.hang_up()
            await call.wait_for("terminated", 15)
    finally:
        for bot in bots:
            await bot.stop()
        await emulator.stop()
    assert APP_ID not in scenario.apps


async def test_flaky_network_is_retried_deduplicated_and_concealed(certs: DevCerts) -> None:
    async with played(certs, "flaky-network") as p:
        record = p.run.calls[0]
        assert record.states[-1] == "terminated"
        assert record.call.result_info is not None and record.call.result_info["code"] == 0
        creates = [
            r for r in p.emulator.requests if r.method == "POST" and r.path.endswith("/calls")
        ]
        assert len(creates) == 2  # 429 with Retry-After, then the retry
        assert creates[1].received_at - creates[0].received_at >= 1.0
        sender = p.emulator.calls[record.call.id].sender
        assert sender is not None
        await asyncio.wait_for(asyncio.shield(sender), 10)  # every copy posted
        await asyncio.wait_for(p.bot.calls.idle(), 10)
        duplicated = p.emulator.fault_injector.counts["duplicated"]
        assert duplicated > 0 and p.bot.calls.duplicates == duplicated
        link = p.emulator.calls[record.call.id].link
        assert link is not None
        counts = link.impairment_counts
        assert counts.blacked_out >= 25 and counts.dropped > counts.blacked_out
        start = p.media_start(record)
        frames = [(h.capture - start, h) for h in p.run.heard.frames if h.capture > 0]
        # Every 20 ms frame was delivered: losses are concealed, not gaps.
        assert sum(h.concealed for _, h in frames) >= 25
        wren = p.scenario.participant("wren").msi
        after = [h for t, h in frames if 2.4 <= t <= 3.8]
        assert after and sum(wren in h.speakers for h in after) / len(after) >= 0.8


def test_bad_scenarios_say_what_is_wrong(tmp_path: Any) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "unknown top-level": ({"meetingz": []}, "unknown key(s) meetingz"),
        "bad talk": (
            {"meetings": [{"participants": [{"id": "a", "msi": 1, "talk": [[2, 1]]}]}]},
            "talk spurt",
        ),
        "duplicate msi": (
            {"meetings": [{"participants": [{"id": "a", "msi": 1}, {"id": "b", "msi": 1}]}]},
            "MSI 1 is used twice",
        ),
        "missing wav": (
            {"meetings": [{"participants": [{"id": "a", "msi": 1, "voice": "nope.wav"}]}]},
            "does not exist",
        ),
        "bad action": (
            {
                "meetings": [
                    {
                        "participants": [{"id": "a", "msi": 1}],
                        "events": [{"at": 1, "participant": "a", "action": "dance"}],
                    }
                ]
            },
            "action must be one of",
        ),
        "phone without number": (
            {"meetings": [{"participants": [{"id": "a", "msi": 1, "kind": "phone"}]}]},
            "number is required",
        ),
        "leave before join": (
            {"meetings": [{"participants": [{"id": "a", "msi": 1, "join": 2, "leave": 1}]}]},
            "leave must come after join",
        ),
    }
    for label, (data, message) in cases.items():
        with pytest.raises(ScenarioError, match=re.escape(message)):
            parse(data, label, tmp_path)
    with pytest.raises(ScenarioError, match="no scenario named"):
        load("no-such-scenario")


@dataclass(frozen=True)
class Utterance:
    msi: int
    start: float
    end: float


def vad_report(
    p: Played, record: CallRecord, tolerance: float = 0.06
) -> tuple[list[Utterance], list[tuple[Utterance, float, float]], list[SpeechStopped]]:
    """The script's utterances, each with the onset and offset error of the bot's VAD segment
    for that speaker that overlaps it most (inf when none does), and the segments that match
    no utterance. Times are media seconds: capture time minus the media start."""
    start = p.media_start(record)
    utterances = [
        Utterance(person.msi, a, b)
        for person in p.scenario.meetings[0].participants
        for a, b in person.talk or ()
    ]
    segments = [s for s in record.call.speech.segments if s.msi != MIXED]
    used: set[int] = set()
    matched = []
    for u in utterances:
        best, overlap = None, 0.0
        for i, seg in enumerate(segments):
            a = seg.start / TICKS_PER_SECOND - start
            b = seg.end / TICKS_PER_SECOND - start
            shared = min(b, u.end) - max(a, u.start)
            if seg.msi == u.msi and shared > overlap:
                best, overlap = i, shared
        if best is None:
            matched.append((u, math.inf, math.inf))
            continue
        used.add(best)
        seg = segments[best]
        matched.append(
            (
                u,
                seg.start / TICKS_PER_SECOND - start - u.start,
                seg.end / TICKS_PER_SECOND - start - u.end,
            )
        )
    extra = [seg for i, seg in enumerate(segments) if i not in used]
    return utterances, matched, extra


@pytest.mark.parametrize("unmixed", [True, False], ids=["unmixed", "mixed"])
async def test_turns_vad_segments_match_the_script(certs: DevCerts, unmixed: bool) -> None:
    """VAD onset and offset within 60 ms of the script for at least 95% of utterances, per
    speaker: unmixed (a detector per speaker's buffer) and mixed (the mix's detector, credited
    to the frame's active speakers)."""
    async with played(certs, "turns", unmixed=unmixed) as p:
        record = p.run.calls[0]
        utterances, matched, extra = vad_report(p, record)
        within = [m for m in matched if abs(m[1]) <= 0.06 and abs(m[2]) <= 0.06]
        assert len(utterances) == 21
        assert len(within) / len(utterances) >= 0.95, [
            (u.msi, u.start, round(on, 3), round(off, 3)) for u, on, off in matched
        ]
        # No made-up speech: a segment that matches no utterance is a false detection.
        assert len(extra) <= 1, extra
        # The call saw who spoke: speaking state empties at the end, names come from the roster.
        names = p.bot.speaker_names(record.call.media_session_id or "")
        assert not names or set(names) <= {5101, 5102, 5103}
