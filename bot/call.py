"""A call: its state kept current from notifications, and every operation Graph offers on it.

Operations follow Graph's call API, one method per endpoint
(https://learn.microsoft.com/en-us/graph/api/resources/call#methods). Those that return a
commsOperation return an Operation; await `op.wait()` for its outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from bot.events import EventHandlers
from bot.graph import shapes
from bot.graph.client import GraphClient
from bot.operations import Operation
from bot.participants import Participant, Roster, RosterUpdate, _context, describe_identity
from bot.pipeline import CallSpeech
from bot.resources import IdMap, ResultInfo, canonical_id, result_info
from media.session import MediaSessionOptions

logger = logging.getLogger(__name__)

# Forward order of call states (https://learn.microsoft.com/en-us/graph/api/resources/call).
# "establishing"/"established" may arrive out of order, so a notification never moves a call
# backwards along this order, except the one documented way back: a failed transfer returns to
# "established".
STATE_ORDER = {
    "incoming": 0,
    "establishing": 1,
    "ringing": 1,
    "established": 2,
    "hold": 2,
    "redirecting": 3,
    "transferring": 3,
    "transferAccepted": 4,
    "terminating": 5,
    "terminated": 6,
}
Decision = Literal["answered", "rejected", "redirected"]
OPERATION_HISTORY = 256
TONE_HISTORY = 256


class DecisionError(Exception):
    """An incoming call was already answered, rejected or redirected."""


class CallEndedError(Exception):
    """The call ended before it reached the state being waited for."""

    def __init__(self, call: Call, state: str) -> None:
        super().__init__(f"call {call.id} ended before {state}: resultInfo {call.result_info}")
        self.call = call


class CallContext(Protocol):
    """What a call needs from the bot that owns it."""

    @property
    def graph(self) -> GraphClient: ...

    callback_url: str

    def new_media_blob(self, call: Call, options: MediaSessionOptions | None = None) -> str: ...

    def expect_state(self, call: Call, state: str) -> None:
        """A request was accepted that Graph follows with a notification of `state`; if that
        notification is lost, the owner reads the call back (bot/reconcile.py)."""


class Call:
    def __init__(self, call_id: str, context: CallContext | None = None) -> None:
        self.id = call_id
        self.context = context
        self.state = "establishing"
        self.states_seen: list[str] = []
        # The call resource merged forward only (see apply_resource), and the last resourceData
        # as Graph sent it, even one that arrived late.
        self.resource: dict[str, Any] = {}
        self.raw_resource: dict[str, Any] = {}
        self.result_info: dict[str, Any] | None = None  # ResultInfo.as_dict(): ints, "subcode"
        self.roster = Roster(call_id)
        self.participants: IdMap[Participant] = IdMap()
        self.operations: IdMap[Operation] = IdMap()
        # Open content-sharing sessions by id (contentSharingSession resources,
        # https://learn.microsoft.com/en-us/graph/api/resources/contentsharingsession).
        self.content_sharing: IdMap[dict[str, Any]] = IdMap()
        self.adopted = False  # tracked from a notification, never created or answered here
        self.events = EventHandlers()
        self.speech = CallSpeech()  # who speaks, segments, recording status (bot/pipeline.py)
        self.media_session_id: str | None = None
        self.scenario_id = ""
        self.delta_roster = False
        self.decision: Decision | None = None
        self.answer_deadline: float | None = None  # loop time by which Graph needs a decision
        self.tones_seen: deque[str] = deque(maxlen=TONE_HISTORY)
        # Why the call's media failed under it (MediaEvent "failed" detail), e.g. the media
        # processor was lost; the call then ends (Graph's resultInfo, or the bot hangs up).
        self.media_lost: str | None = None
        self.stale_states = 0  # state notifications that arrived after a later state
        self.stale_tones = 0  # toneInfo re-delivered (a sequenceId already seen)
        self._tone_sequence: int | None = None  # the highest sequenceId seen
        self._tone_order: deque[int | None] = deque()  # tones_seen's sequenceIds
        self._changed = asyncio.Event()

    # -- state from notifications -------------------------------------------------------------

    @property
    def direction(self) -> str:
        return str(self.resource.get("direction", ""))

    @property
    def is_policy_recording(self) -> bool:
        """Policy-based recording invitations name the observed participant (5 s to answer)."""
        context = self.resource.get("incomingContext") or {}
        return bool(isinstance(context, dict) and context.get("observedParticipantId"))

    @property
    def result(self) -> ResultInfo | None:
        """resultInfo with int code and subcode, whatever form Graph sent."""
        return result_info(self.result_info)

    @property
    def termination_reason(self) -> str | None:
        """Why the call ended: `terminationReason` where Graph sends one, else the
        resultInfo message (https://learn.microsoft.com/en-us/graph/api/resources/call)."""
        reason = self.resource.get("terminationReason")
        if isinstance(reason, str) and reason:
            return reason
        if self.state != "terminated" or self.result_info is None:
            return None
        return str(self.result_info.get("message") or "") or None

    @property
    def media_state(self) -> dict[str, str]:
        """callMediaState: {"audio": "active" | "inactive"}
        (https://learn.microsoft.com/en-us/graph/api/resources/callmediastate)."""
        state = self.resource.get("mediaState")
        if not isinstance(state, dict):
            return {}
        return {k: v for k, v in state.items() if isinstance(v, str) and not k.startswith("@")}

    @property
    def lobby(self) -> list[Participant]:
        """Participants waiting in the lobby (participant.isInLobby)."""
        return [p for p in self.participants.values() if p.is_in_lobby]

    @property
    def screen_sharer(self) -> Participant | None:
        """Who shares the screen: the participant whose videoBasedScreenSharing stream sends
        (https://learn.microsoft.com/en-us/graph/api/resources/mediastream)."""
        return next((p for p in self.participants.values() if p.is_sharing_screen), None)

    @property
    def large_gallery(self) -> Participant | None:
        """The large-gallery participant once addLargeGalleryView succeeded; subscribe to its
        `large_gallery_view.video_msi` (https://learn.microsoft.com/en-us/graph/cloud-communications-identifylargegalleryview)."""
        return next((p for p in self.participants.values() if p.is_large_gallery), None)

    def apply_resource(self, resource: dict[str, Any], deleted: bool) -> str | None:
        """Merge a call resource; returns the new state if it changed, else None.

        Merged forward only: Graph promises no order, so a resource whose state is behind the
        call's (by the documented state order) only fills in what is missing, and the newer
        values stay; resultInfo too. `@odata.etag` is opaque, so it orders nothing, and the
        documentation's own examples give one etag to different versions
        (https://learn.microsoft.com/en-us/graph/api/call-answer): a re-delivery is found by
        comparing whole notifications instead (CallCollection).
        """
        self.raw_resource = resource
        state = "terminated" if deleted else resource.get("state")
        behind = (isinstance(state, str) and self._behind(state)) or self._older_tone(resource)
        if behind:
            self.resource = {**resource, **self.resource}
        else:
            self.resource = {**self.resource, **resource}
        info = result_info(resource.get("resultInfo"))
        if info is not None and (not behind or self.result_info is None):
            self.result_info = info.as_dict()
        return self.apply_state(state) if isinstance(state, str) else None

    def apply_tone(self, tone_info: object) -> str | None:
        """A toneInfo (https://learn.microsoft.com/en-us/graph/api/resources/toneinfo): the
        tone, or None for a repeat. `sequenceId` orders tones: one that arrives late is still
        a key the caller pressed, so it is kept, in its place in `tones_seen`; a sequenceId
        already seen is a re-delivery."""
        if not isinstance(tone_info, dict) or not isinstance(tone_info.get("tone"), str):
            return None
        tone: str = tone_info["tone"]
        sequence = tone_info.get("sequenceId")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            self.tones_seen.append(tone)
            self._tone_order.append(None)
            return tone
        if sequence in self._tone_order:
            self.stale_tones += 1
            return None
        self._tone_sequence = max(sequence, self._tone_sequence or sequence)
        # After every tone numbered lower (unnumbered ones stay where they came).
        at = len(self._tone_order)
        while at > 0 and isinstance(self._tone_order[at - 1], int):
            previous = self._tone_order[at - 1]
            if previous is not None and previous < sequence:
                break
            at -= 1
        if len(self.tones_seen) == self.tones_seen.maxlen:
            self.tones_seen.popleft()
            self._tone_order.popleft()
            at = max(0, at - 1)
        self.tones_seen.insert(at, tone)
        self._tone_order.insert(at, sequence)
        return tone

    def _older_tone(self, resource: dict[str, Any]) -> bool:
        """The resource's toneInfo is older than one applied: the resource is behind too."""
        tone = resource.get("toneInfo")
        sequence = tone.get("sequenceId") if isinstance(tone, dict) else None
        return (
            isinstance(sequence, int)
            and self._tone_sequence is not None
            and sequence <= self._tone_sequence
        )

    def _behind(self, state: str) -> bool:
        """`state` is older than the call's, and not the documented way back from a transfer."""
        if state not in STATE_ORDER:
            return False
        back_from_transfer = state == "established" and self.state in (
            "transferring",
            "transferAccepted",
        )
        return STATE_ORDER[state] < STATE_ORDER.get(self.state, 0) and not back_from_transfer

    def apply_state(self, state: str) -> str | None:
        if state not in STATE_ORDER:
            logger.info(
                "Call(%s) ignores unknown state %r", self.id, state, extra={"call_id": self.id}
            )
            return None
        if self._behind(state):
            self.stale_states += 1
            logger.info(
                "Call(%s) ignores stale %s after %s",
                self.id,
                state,
                self.state,
                extra={"call_id": self.id},
            )
            return None
        if self.states_seen and self.states_seen[-1] == state:
            return None
        if self.states_seen:
            change = f"{self.states_seen[-1]} -> {state}"
        else:
            change = state
        logger.info("Call(%s) state %s", self.id, change, extra={"call_id": self.id})
        self.states_seen.append(state)
        self.state = state
        self._changed.set()
        return state

    def apply_roster(self, update_from: Any) -> RosterUpdate:
        update = self.roster.apply(update_from, self.delta_roster or update_from.partial)
        self._sync_participants(update)
        return update

    def resync_roster(self, entries: list[dict[str, Any]]) -> RosterUpdate:
        """The whole roster read back with GET .../participants (after a lost notification)."""
        update = self.roster.resync(entries)
        self._sync_participants(update)
        return update

    def _sync_participants(self, update: RosterUpdate) -> None:
        for pid in update.removed:
            self.participants.pop(pid, None)
        for pid in (*update.added, *update.updated):
            resource = self.roster.participants[pid]
            if pid in self.participants:
                self.participants[pid].resource = resource
            else:
                self.participants[pid] = Participant(self, resource)

    async def wait_for(self, state: str, within_seconds: float) -> None:
        """Wait until the call reaches `state` or a later one.

        Raises TimeoutError, or CallEndedError if it terminated without passing `state`.
        """
        async with asyncio.timeout(within_seconds):
            while STATE_ORDER.get(self.state, 0) < STATE_ORDER[state]:
                self._changed.clear()
                await self._changed.wait()
        if state not in self.states_seen and self.state == "terminated" != state:
            raise CallEndedError(self, state)

    async def wait_until(self, predicate: Callable[[Call], bool], within_seconds: float) -> None:
        """Wait until `predicate(call)` holds after a change (or already does), e.g. a transfer
        that was declined is back in `established`. Raises TimeoutError."""
        async with asyncio.timeout(within_seconds):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def changed(self) -> None:
        """Something about the call besides its state changed (speech, recording status):
        wake wait_until()."""
        self._changed.set()

    def msi_to_participant(self) -> dict[int, str]:
        """Audio MSIs (roster mediaStreams.sourceId) to participant ids, the bot's own excluded."""
        me = canonical_id(self.resource.get("myParticipantId"))
        return {
            msi: p.id for p in self.participants.values() if p.id != me for msi in p.msis("audio")
        }

    # -- requests -----------------------------------------------------------------------------

    def _graph(self) -> GraphClient:
        if self.context is None:
            raise RuntimeError(f"Call({self.id}) is not attached to a bot")
        return self.context.graph

    async def request(
        self,
        method: str,
        path: str = "",
        body: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        return await self._graph().request(
            method, f"/communications/calls/{self.id}{path}", body, self.scenario_id, deadline
        )

    def _claim(self, decision: Decision) -> None:
        """One decision per incoming call: a second answer/reject/redirect is a bug."""
        if self.decision is not None:
            raise DecisionError(f"Call({self.id}) was already {self.decision}")
        self.decision = decision

    async def operation(self, path: str, body: dict[str, Any]) -> Operation:
        """POST an action that returns a commsOperation, and track it."""
        resource = await self.request("POST", path, body)
        return self.track_operation(resource)

    def track_operation(self, resource: dict[str, Any], op_id: str | None = None) -> Operation:
        """Track an operation from the action's answer or a notification. `op_id`: the id the
        notification's URL gave, for bodies that carry none."""
        op_id = canonical_id(op_id or resource.get("id") or "") or None
        known = self.operations.get(op_id) if op_id else None
        if known is not None:
            known.update(resource)
            return known
        op = Operation({**resource, "id": op_id} if op_id else resource)
        if not op_id:
            op.finish_without_notification()
            return op
        self.operations[op_id] = op
        if len(self.operations) > OPERATION_HISTORY:  # forget the oldest finished one
            oldest = next((k for k, o in self.operations.items() if o.done), None)
            if oldest is not None:
                del self.operations[oldest]
        return op

    # -- answering an incoming call: https://learn.microsoft.com/en-us/graph/api/call-answer,
    # .../call-reject and .../call-redirect ------------------------------------------------------

    async def answer(
        self,
        *,
        media: Literal["app", "service"] = "app",
        modalities: Sequence[str] = ("audio",),
        participant_capacity: int | None = None,
        delta_roster: bool = False,
        prefetch: list[tuple[str, str]] | None = None,
        media_options: MediaSessionOptions | None = None,
    ) -> None:
        """media_options: unmixed audio and video sockets for app-hosted media."""
        if self.context is None:
            raise RuntimeError("not attached to a bot")
        if self.decision is not None:
            raise DecisionError(f"Call({self.id}) was already {self.decision}")
        media_config = (
            shapes.app_hosted_media(self.context.new_media_blob(self, media_options))
            if media == "app"
            else shapes.service_hosted_media(prefetch)
        )
        body: dict[str, Any] = {
            "callbackUri": self.context.callback_url,
            "acceptedModalities": list(modalities),
            "mediaConfig": media_config,
        }
        if delta_roster:
            self.delta_roster = True
            body["callOptions"] = {
                "@odata.type": "#microsoft.graph.incomingCallOptions",
                "isDeltaRosterEnabled": True,
            }
        if participant_capacity is not None:
            body["participantCapacity"] = participant_capacity
        self._claim("answered")
        await self.request("POST", "/answer", body, self.answer_deadline)
        logger.info(
            "Call(%s) answered (%s-hosted media, %s)",
            self.id,
            media,
            ", ".join(modalities),
            extra={"call_id": self.id},
        )
        self.context.expect_state(self, "established")

    async def reject(self, reason: Literal["none", "busy", "forbidden"] = "none") -> None:
        self._claim("rejected")
        await self.request("POST", "/reject", {"reason": reason}, self.answer_deadline)
        logger.info("Call(%s) rejected (reason %s)", self.id, reason, extra={"call_id": self.id})

    async def redirect(
        self, targets: Sequence[dict[str, Any]], timeout_seconds: int | None = None
    ) -> None:
        """targets: identity sets; more than one rings them all (at most 25; timeout 15-90 s)."""
        if not 1 <= len(targets) <= 25:
            raise ValueError("redirect takes 1 to 25 targets")
        body: dict[str, Any] = {
            "targets": [shapes.invitation_participant(t) for t in targets],
            "callbackUri": self.context.callback_url if self.context else None,
        }
        if timeout_seconds is not None:
            if not 15 <= timeout_seconds <= 90:
                raise ValueError("redirect timeout is 15 to 90 seconds")
            body["timeout"] = timeout_seconds
        self._claim("redirected")
        await self.request("POST", "/redirect", body, self.answer_deadline)
        logger.info(
            "Call(%s) redirected to %s",
            self.id,
            ", ".join(describe_identity(t) for t in targets),
            extra={"call_id": self.id},
        )

    # -- in-call operations --------------------------------------------------------------------

    async def transfer(self, target: dict[str, Any], replaces_call_id: str | None = None) -> None:
        """Blind transfer to an identity, or consultative with `replaces_call_id`."""
        await self.request(
            "POST",
            "/transfer",
            {"transferTarget": shapes.invitation_participant(target, replaces_call_id)},
        )

    async def hang_up(self) -> None:
        before = getattr(self.context, "before_hang_up", None)
        if before is not None:
            await before(self)  # e.g. recording stopped and its status set while Graph knows us
        await self.request("DELETE")
        logger.info("Call(%s) hung up (DELETE accepted)", self.id, extra={"call_id": self.id})
        if self.context is not None:
            self.context.expect_state(self, "terminated")

    async def keep_alive(self) -> None:
        """POST keepAlive: Graph ends a call with no request for 45 minutes
        (https://learn.microsoft.com/en-us/graph/api/call-keepalive)."""
        await self.request("POST", "/keepAlive")

    async def mute(self, client_context: str | None = None) -> Operation:
        return await self.operation("/mute", _context(client_context))

    async def unmute(self, client_context: str | None = None) -> Operation:
        return await self.operation("/unmute", _context(client_context))

    async def subscribe_to_tone(self, client_context: str | None = None) -> Operation:
        """Tones then arrive as call updates with toneInfo; see the "tone" event."""
        return await self.operation("/subscribeToTone", _context(client_context))

    async def send_dtmf_tones(
        self, tones: str | list[str], delay_between_tones_ms: int | None = None
    ) -> Operation:
        body: dict[str, Any] = {"tones": shapes.tone_names(tones)}
        if delay_between_tones_ms is not None:
            body["delayBetweenTonesMs"] = delay_between_tones_ms
        return await self.operation("/sendDtmfTones", body)

    async def update_recording_status(
        self, status: Literal["notRecording", "recording", "failed"], client_context: str = ""
    ) -> Operation:
        """Required by Graph's terms before recording or persisting media."""
        return await self.operation(
            "/updateRecordingStatus", {"status": status, **_context(client_context or None)}
        )

    async def change_screen_sharing_role(self, role: Literal["viewer", "sharer"]) -> None:
        await self.request("POST", "/changeScreenSharingRole", {"role": role})

    async def play_prompt(
        self, prompts: Sequence[tuple[str, str]], client_context: str | None = None
    ) -> Operation:
        """Service-hosted media only. prompts: (uri, resourceId) of 16 kHz mono WAV files."""
        if not 1 <= len(prompts) <= 20:
            raise ValueError("playPrompt takes 1 to 20 prompts")
        body = {"prompts": [shapes.media_prompt(u, r) for u, r in prompts]}
        return await self.operation("/playPrompt", {**body, **_context(client_context)})

    async def record(
        self,
        *,
        prompt: tuple[str, str] | None = None,
        barge_in_allowed: bool = False,
        initial_silence_timeout_seconds: int = 5,
        max_silence_timeout_seconds: int = 5,
        max_record_duration_seconds: int = 5,
        play_beep: bool = True,
        stop_tones: Sequence[str] = (),
        client_context: str | None = None,
    ) -> Operation:
        """Service-hosted media only: record a response, at most 2 minutes
        (https://learn.microsoft.com/en-us/graph/api/call-record)."""
        for name, value in (
            ("initial silence", initial_silence_timeout_seconds),
            ("max silence", max_silence_timeout_seconds),
            ("max duration", max_record_duration_seconds),
        ):
            if not 1 <= value <= 120:
                raise ValueError(f"record {name} timeout is 1 to 120 seconds")
        body: dict[str, Any] = {
            "bargeInAllowed": barge_in_allowed,
            "initialSilenceTimeoutInSeconds": initial_silence_timeout_seconds,
            "maxSilenceTimeoutInSeconds": max_silence_timeout_seconds,
            "maxRecordDurationInSeconds": max_record_duration_seconds,
            "playBeep": play_beep,
            "stopTones": shapes.tone_names(list(stop_tones)),
            **_context(client_context),
        }
        if prompt is not None:
            body["prompts"] = [shapes.media_prompt(*prompt)]
        # The action is named recordResponse in the URL (https://learn.microsoft.com/en-us/graph/api/call-record).
        return await self.operation("/recordResponse", body)

    async def cancel_media_processing(self, client_context: str | None = None) -> Operation:
        return await self.operation("/cancelMediaProcessing", _context(client_context))

    async def add_large_gallery_view(self, client_context: str | None = None) -> Operation:
        return await self.operation("/addLargeGalleryView", _context(client_context))

    async def invite(
        self,
        identities: Sequence[dict[str, Any]],
        replaces_call_id: str | None = None,
        client_context: str | None = None,
    ) -> Operation:
        """participants/invite (https://learn.microsoft.com/en-us/graph/api/participant-invite)."""
        body = {
            "participants": [
                shapes.invitation_participant(i, replaces_call_id) for i in identities
            ],
            **_context(client_context),
        }
        return await self.operation("/participants/invite", body)

    def __repr__(self) -> str:
        return f"Call({self.id} {self.state})"
