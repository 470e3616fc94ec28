"""Participants coming and going while a call runs: joins, leaves, mute, camera and screen share,
each changing the call's roster (a roster notification, full or delta, roster.py) and its media
link together, as Teams does; and a meeting's timeline (Meeting.events, the scripts' joins_at and
leaves_at) played against each call that joined it.

Timeline times count from the call's media start (app-hosted) or from `established`
(service-hosted): the moment a bot can first observe the meeting, so a scenario reads the same
whenever the bot joins. Times are real seconds, not scaled by time_scale: they pace media.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emulator.calls import EmulatedCall, publish_roster, spawn
from emulator.participant import Meeting, MeetingEvent, ParticipantScript
from emulator.roster import EmulatedParticipant, camera_stream, from_script, screen_stream

if TYPE_CHECKING:
    from emulator.server import Emulator

logger = logging.getLogger(__name__)

# removedState.reason of someone who hung up (a free string, https://learn.microsoft.com/en-us/graph/api/resources/removedstate)
LEFT = "left"
ACTIONS = ("join", "leave", "mute", "unmute", "cameraOn", "cameraOff", "shareStart", "shareStop")


@dataclass(frozen=True)
class Step:
    at: float
    participant_id: str
    action: str


def timeline(meeting: Meeting) -> list[Step]:
    """Every timed step of the meeting, in time order (stable: equal times keep file order)."""
    steps = [Step(e.at, e.participant_id, e.action) for e in meeting.events]
    for script in meeting.participants:
        if script.joins_at > 0:
            steps.append(Step(script.joins_at, script.participant_id, "join"))
        if script.leaves_at is not None:
            steps.append(Step(script.leaves_at, script.participant_id, "leave"))
    return sorted(steps, key=lambda s: s.at)


def present_at_start(meeting: Meeting) -> list[ParticipantScript]:
    return [p for p in meeting.participants if p.joins_at <= 0]


def _first(meeting: Meeting, participant_id: str, actions: tuple[str, str]) -> str | None:
    return next(
        (
            e.action
            for e in sorted(meeting.events, key=lambda e: e.at)
            if e.participant_id == participant_id and e.action in actions
        ),
        None,
    )


def initial_participant(meeting: Meeting, script: ParticipantScript) -> EmulatedParticipant:
    """A present participant's roster entry at the call's start: a camera or share whose first
    event turns it on starts off, a participant whose first mute event is `unmute` starts
    muted."""
    participant = from_script(script)
    pid = script.participant_id
    if _first(meeting, pid, ("cameraOn", "cameraOff")) == "cameraOn":
        participant.media_streams = [s for s in participant.media_streams if not _is_camera(s)]
    if _first(meeting, pid, ("shareStart", "shareStop")) == "shareStart":
        participant.media_streams = [s for s in participant.media_streams if not _is_share(s)]
    if _first(meeting, pid, ("mute", "unmute")) == "unmute":
        participant.is_muted = True
    return participant


def _is_camera(stream: dict[str, object]) -> bool:
    return stream.get("label") == "main-video"


def _is_share(stream: dict[str, object]) -> bool:
    return stream.get("mediaType") == "videoBasedScreenSharing"


def _live(call: EmulatedCall) -> bool:
    return call.state == "established" and not call.ending


def sync_media(call: EmulatedCall) -> None:
    """Once the link is up: mute and turned-off video as the roster says at the start."""
    if call.link is None:
        return
    for participant in call.roster.participants.values():
        script = participant.script
        if script is None:
            continue
        if participant.is_muted:
            call.link.set_muted(script.msi, True)
        streams = participant.media_streams
        if script.video_msi is not None and not any(_is_camera(s) for s in streams):
            call.link.stop_video(script.video_msi)
        if script.screen_msi is not None and not any(_is_share(s) for s in streams):
            call.link.stop_video(script.screen_msi)


def apply(emulator: Emulator, call: EmulatedCall, script: ParticipantScript, action: str) -> None:
    """One participant change on one call: the roster entry, its notification, the media."""
    if not _live(call):
        return
    link = call.link
    pid = script.participant_id
    if action == "join":
        if call.roster.get(pid) is not None:
            return
        capacity = call.participant_capacity
        others = len(call.roster.participants) - 1  # everyone but the bot
        if capacity is not None and others >= capacity:
            # Beyond the capacity the bot answered with, Teams invites another recorder call
            # (participantCapacity in https://learn.microsoft.com/en-us/graph/api/call-answer).
            if call.on_overflow is not None:
                call.on_overflow(script)
            return
        participant = call.roster.add(from_script(script))
        call.scripts.append(script)
        if link is not None:
            link.add_participant(script)
        publish_roster(emulator, call, [participant])
        return
    entry = call.roster.get(pid)
    if entry is None:
        logger.info("Call(%s) %s for %s, who is not in the call", call.id, action, pid)
        return
    if action == "leave":
        removed = call.roster.remove(pid, LEFT)
        call.scripts = [s for s in call.scripts if s.participant_id != pid]
        if link is not None:
            link.remove_participant(script.msi)
        if removed is not None:
            publish_roster(emulator, call, [removed])
        return
    if action in ("mute", "unmute"):
        entry.is_muted = action == "mute"
        if link is not None:
            link.set_muted(script.msi, entry.is_muted)
    elif action in ("cameraOn", "cameraOff") and script.video_msi is not None:
        _toggle(call, entry, camera_stream(script.video_msi), action == "cameraOn")
    elif action in ("shareStart", "shareStop") and script.screen_msi is not None:
        _toggle(call, entry, screen_stream(script.screen_msi), action == "shareStart")
    else:
        logger.info("Call(%s) %s: %s has no such stream", call.id, action, pid)
        return
    publish_roster(emulator, call, [entry])


def _toggle(
    call: EmulatedCall, entry: EmulatedParticipant, stream: dict[str, object], on: bool
) -> None:
    label, msi = stream["label"], int(str(stream["sourceId"]))
    entry.media_streams = [s for s in entry.media_streams if s.get("label") != label]
    if on:
        entry.media_streams.append(stream)
    if call.link is not None:
        if on:
            call.link.start_video(msi)
        else:
            call.link.stop_video(msi)


def start_timeline(emulator: Emulator, call: EmulatedCall) -> None:
    """The call is established: set its media to the roster's start state, then play the
    meeting's timeline on it (a task of the call, cancelled when it ends)."""
    sync_media(call)
    if call.meeting is None or not timeline(call.meeting):
        return
    link = call.link
    zero = link.media_start if link is not None and link.media_start is not None else None
    spawn(call, run_timeline(emulator, call, zero if zero is not None else time.monotonic()))


async def run_timeline(emulator: Emulator, call: EmulatedCall, zero: float) -> None:
    """Play the meeting's timeline against one call; `zero` is time.monotonic() of its media
    start. Pacing a script by the clock is what a timeline is, so it sleeps until each step."""
    meeting = call.meeting
    if meeting is None:
        return
    loop = asyncio.get_running_loop()
    # time.monotonic() and the loop's clock are the same clock on Linux (both CLOCK_MONOTONIC).
    for step in timeline(meeting):
        delay = zero + step.at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        script = _script(meeting, step.participant_id)
        if script is not None:
            apply(emulator, call, script, step.action)


def _script(meeting: Meeting, participant_id: str) -> ParticipantScript | None:
    return next((p for p in meeting.participants if p.participant_id == participant_id), None)


def calls_in(emulator: Emulator, meeting: Meeting) -> Iterator[EmulatedCall]:
    for call in list(emulator.calls.values()):
        if call.meeting is meeting and _live(call):
            yield call


def join_meeting(emulator: Emulator, meeting: Meeting, script: ParticipantScript) -> None:
    """Someone joins the meeting now (the browser join page): every call in it sees them, and
    calls that join later find them in the roster."""
    if all(p.participant_id != script.participant_id for p in meeting.participants):
        meeting.participants.append(script)
    for call in calls_in(emulator, meeting):
        apply(emulator, call, script, "join")


def leave_meeting(emulator: Emulator, meeting: Meeting, participant_id: str) -> None:
    script = _script(meeting, participant_id)
    if script is None:
        return
    meeting.participants.remove(script)
    for call in calls_in(emulator, meeting):
        apply(emulator, call, script, "leave")


def event(at: float, participant_id: str, action: str) -> MeetingEvent:
    if action not in ACTIONS or action in ("join", "leave"):
        raise ValueError(f"unknown meeting event {action!r}")
    return MeetingEvent(at, participant_id, action)
