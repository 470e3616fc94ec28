"""One emulated call: its resource, its state machine (https://learn.microsoft.com/en-us/graph/api/resources/call)
and the ordered stream of signed notifications Graph posts about it to its callbackUri
(https://learn.microsoft.com/en-us/graph/api/resources/commsnotifications)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulator.mediaprocessor import MediaProcessorError, MediaProcessorLink
from emulator.notifier import notification
from emulator.odata import APP_HOSTED, media_blob
from emulator.participant import Meeting, ParticipantScript
from emulator.roster import EmulatedParticipant, Roster

if TYPE_CHECKING:
    from emulator.server import Emulator

logger = logging.getLogger(__name__)

HISTORY = 2000  # notifications, tones and finished operations kept per call
# Graph's timing rules, in seconds of Graph time (EmulatorConfig.time_scale shrinks them all).
# The answer/reject/redirect window, 5 s for policy-based recording (https://learn.microsoft.com/en-us/graph/api/call-answer).
RING_SECONDS = 15.0
POLICY_RING_SECONDS = 5.0
# "not receive this request within 45 minutes" (https://learn.microsoft.com/en-us/graph/api/call-keepalive).
INACTIVE_SECONDS = 45 * 60.0
DEFAULT_APP_NAME = "Media bot"  # an app registration's display name unless it has its own


def result_info(code: int, subcode: int, message: str) -> dict[str, Any]:
    return {
        "@odata.type": "#microsoft.graph.resultInfo",
        "code": code,
        "subcode": subcode,
        "message": message,
    }


# 500/7112: the documented symptom of a bot media endpoint that cannot be reached (1.4, 1.8).
MEDIA_FAILED = result_info(500, 7112, "MediaControllerConversationAddParticipantFailed")
HUNG_UP = result_info(0, 0, "The call was ended by the application.")
# 410/301005 "Media connectivity failure." is in the table of call end reason codes of
# https://learn.microsoft.com/en-us/graph/api/call-delete
# (microsoftgraph/microsoft-graph-docs PR 16376); production bots see it as "Client Media
# Error. DiagCode: 410#301005.@" when media drops mid-call. The emulator uses it when its own
# media processor vanishes, after MP_LOST_SECONDS of Graph time (the docs give no delay; ours is
# a guess, well inside RFC 7675's 30 s consent timeout since Graph watches its own MP).
MEDIA_LOST = result_info(410, 301005, "Media connectivity failure.")
MP_LOST_SECONDS = 10.0
# The docs give no code for these; 408 (request timeout) reads right for both, and the message
# tells them apart.
RING_TIMEOUT = result_info(408, 0, "The call was not answered, rejected or redirected in time.")
INACTIVE = result_info(408, 0, "No request from the application for 45 minutes: call inactive.")

ENDED = frozenset({"terminating", "terminated"})


@dataclass
class Operation:
    """A commsOperation of one subtype
    (https://learn.microsoft.com/en-us/graph/api/resources/commsoperation)."""

    id: str
    kind: str  # e.g. "playPromptOperation"
    client_context: str | None
    status: str = "running"
    result_info: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_graph(self) -> dict[str, Any]:
        return {
            "@odata.type": f"#microsoft.graph.{self.kind}",
            "id": self.id,
            "status": self.status,
            "clientContext": self.client_context,
            "resultInfo": self.result_info,
            **self.extra,
        }


@dataclass
class MediaJob:
    """A queued playPrompt or recordResponse: they run one after the other
    ("by default queued to process in order", https://learn.microsoft.com/en-us/graph/api/call-cancelmediaprocessing)."""

    operation: Operation
    seconds: float
    done: Callable[[], None]


@dataclass
class EmulatedCall:
    id: str
    app_id: str
    tenant_id: str
    callback_uri: str
    direction: str  # outgoing | incoming
    kind: str  # meeting | p2p | group | incoming
    request: dict[str, Any]
    scenario_id: str
    media: dict[str, Any] | None = None
    meeting: Meeting | None = None
    # Who is on the media link (all scripted participants; a P2P or incoming call has one).
    scripts: list[ParticipantScript] = field(default_factory=list)
    my_participant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    chain_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "establishing"
    result_info: dict[str, Any] | None = None
    states_notified: list[str] = field(default_factory=list)
    roster: Roster = field(default_factory=Roster)
    operations: OrderedDict[str, Operation] = field(default_factory=OrderedDict)
    media_queue: deque[MediaJob] = field(default_factory=deque)
    media_worker: asyncio.Task[None] | None = None
    recording_status: str = "notRecording"
    # (time.monotonic() when the status was acknowledged, status): tests check that no media
    # was persisted before `recording` was acknowledged.
    recording_history: deque[tuple[float, str]] = field(
        default_factory=lambda: deque(maxlen=HISTORY)
    )
    screen_sharing_role: str = "viewer"
    tone_subscribed: bool = False
    tone_sequence: int = 0
    tones: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY))
    notifications: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    fields: dict[str, Any] = field(default_factory=dict)  # source, targets, incomingContext...
    link: MediaProcessorLink | None = None
    task: asyncio.Task[None] | None = None  # the lifecycle: establish, then watch the media
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    outbox: asyncio.Queue[tuple[str, dict[str, Any]] | None] | None = None
    sender: asyncio.Task[None] | None = None
    last_request: float = 0.0
    ending: bool = False
    # Policy-based recording: how many participants the bot said it can take
    # (https://learn.microsoft.com/en-us/graph/api/call-answer).
    participant_capacity: int | None = None
    overflow_calls: list[str] = field(default_factory=list)  # ids of calls rung for the rest
    # Where a redirect sent the call: its targets' identity ids, once Graph accepted it
    # (https://learn.microsoft.com/en-us/graph/api/call-redirect).
    redirected_to: list[str] = field(default_factory=list)
    # Who takes a joiner beyond participant_capacity (incoming.py rings them a call of their own).
    on_overflow: Callable[[ParticipantScript], None] | None = None

    @property
    def speaker(self) -> ParticipantScript | None:
        """The first participant: the one whose echo the demo measures."""
        return self.scripts[0] if self.scripts else None

    @property
    def url(self) -> str:
        return f"/communications/calls/{self.id}"

    @property
    def app_hosted(self) -> bool:
        return self.media is not None and self.media.get("@odata.type") == APP_HOSTED

    @property
    def bot(self) -> EmulatedParticipant:
        participant = self.roster.get(self.my_participant_id)
        assert participant is not None, "the app's own participant is always in the roster"
        return participant

    def resource(self) -> dict[str, Any]:
        """The call resource as GET and notifications show it
        (https://learn.microsoft.com/en-us/graph/api/resources/call)."""
        data: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.call",
            "@odata.id": self.url,
            "id": self.id,
            "state": self.state,
            "direction": self.direction,
            "callbackUri": self.callback_uri,
            "callChainId": self.chain_id,
            "myParticipantId": self.my_participant_id,
            "requestedModalities": self.request.get("requestedModalities", ["audio"]),
            "mediaConfig": self.media,
            "chatInfo": self.request.get("chatInfo"),
            "meetingInfo": self.request.get("meetingInfo"),
            "callOptions": self.request.get("callOptions"),
            "subject": self.request.get("subject"),
            "tenantId": self.tenant_id,
            "resultInfo": self.result_info,
        }
        data.update(self.fields)
        return data

    def touch(self) -> None:
        """A request from the owning app: the 45-minute inactivity clock restarts."""
        self.last_request = asyncio.get_running_loop().time()


def app_display_name(emulator: Emulator, app_id: str) -> str:
    """The app registration's name, which Graph shows as the bot's displayName."""
    registration = emulator.config.apps.get(app_id)
    return registration.display_name if registration is not None else DEFAULT_APP_NAME


def bot_participant(
    call: EmulatedCall, source: dict[str, Any] | None, app_name: str = DEFAULT_APP_NAME
) -> EmulatedParticipant:
    """The app's own roster entry: its application identity, or the guest identity it joined
    with (`source.identity.guest`, the "join as guest" example of
    https://learn.microsoft.com/en-us/graph/api/application-post-calls). The application
    identity carries a displayName as in Graph's rosters (communicationsApplicationIdentity,
    https://learn.microsoft.com/en-us/graph/api/resources/communicationsapplicationidentity):
    the one the bot gave in source.identity.application, else the app registration's."""
    given = source.get("identity") if isinstance(source, dict) else None
    stated = given.get("application") if isinstance(given, dict) else None
    name = stated.get("displayName") if isinstance(stated, dict) else None
    if not isinstance(name, str) or not name.strip():
        name = app_name
    identity: dict[str, Any] = {"application": {"id": call.app_id, "displayName": name}}
    if isinstance(given, dict) and isinstance(given.get("guest"), dict):
        guest = dict(given["guest"])
        guest.setdefault("id", str(uuid.uuid4()))
        identity = {"guest": guest}
    # Real rosters list the app's own streams too
    # (https://learn.microsoft.com/en-us/graph/cloud-communications-identifylargegalleryview);
    # the emulator leaves them out for now because the bot's demo counts every roster MSI as a
    # speaker.
    return EmulatedParticipant(call.my_participant_id, identity, [])


def scaled(emulator: Emulator, seconds: float) -> float:
    return max(0.0, seconds * emulator.config.time_scale)


def register(emulator: Emulator, call: EmulatedCall) -> None:
    """Make the call known and start its notification sender and inactivity watchdog."""
    emulator.add_call(call)
    call.touch()
    call.outbox = asyncio.Queue(maxsize=HISTORY)
    call.sender = asyncio.create_task(_send(emulator, call))
    spawn(call, _watch_inactivity(emulator, call))


def spawn(call: EmulatedCall, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A background task that belongs to the call and is cancelled when the call ends."""
    task = asyncio.create_task(coro)
    call.tasks.add(task)
    task.add_done_callback(call.tasks.discard)
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[None]) -> None:
    """A call's background work that raised says so (it would otherwise vanish with the task,
    leaving the call stuck where it was)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("call task %s failed", task.get_name(), exc_info=task.exception())


async def _send(emulator: Emulator, call: EmulatedCall) -> None:
    """Post the call's notifications one at a time, in the order they were made, except where
    an armed notification fault (emulator/notifyfaults.py) drops, repeats, delays or holds one
    back. After the call's last notification, what is still delayed goes out when due, then the
    sender ends: nothing is left waiting on a call that is over."""
    assert call.outbox is not None
    schedule = emulator.fault_injector.schedule(call.id)
    loop = asyncio.get_running_loop()
    closing = False
    while True:
        for callback_uri, item in schedule.take(loop.time(), closing):
            await emulator.post_notifications(call, [item], callback_uri)
        wake = schedule.next_wakeup()
        if closing:
            if wake is None:
                return
            await asyncio.sleep(max(0.0, wake - loop.time()))  # the delay being injected
            continue
        try:
            async with asyncio.timeout_at(wake):  # None: no timeout
                entry = await call.outbox.get()
        except TimeoutError:
            continue  # a delayed or held notification is due
        if entry is None:
            closing = True
        else:
            schedule.push(entry, loop.time())


def notify(emulator: Emulator, call: EmulatedCall, change_type: str, url: str, data: Any) -> None:
    if call.outbox is None or (call.state == "terminated" and change_type != "deleted"):
        return
    item = notification(change_type, url, data)
    call.notifications.append(item)
    try:
        call.outbox.put_nowait((call.callback_uri, item))
    except asyncio.QueueFull:
        logger.warning("Call(%s) outbox full, dropped a %s notification", call.id, change_type)


def notify_call(
    emulator: Emulator, call: EmulatedCall, change_type: str = "updated", **extra: Any
) -> None:
    if not call.states_notified or call.states_notified[-1] != call.state:
        call.states_notified.append(call.state)
    notify(emulator, call, change_type, call.url, {**call.resource(), **extra})


def set_state(emulator: Emulator, call: EmulatedCall, state: str) -> None:
    call.state = state
    notify_call(emulator, call)


def publish_roster(
    emulator: Emulator, call: EmulatedCall, changed: list[EmulatedParticipant]
) -> None:
    data = call.roster.update(changed)
    notify(emulator, call, "updated", f"{call.url}/participants", data)


def add_operation(call: EmulatedCall, kind: str, context: str | None) -> Operation:
    operation = Operation(str(uuid.uuid4()), kind, context)
    call.operations[operation.id] = operation
    while len(call.operations) > HISTORY:
        call.operations.popitem(last=False)
    return operation


def finish_operation(
    emulator: Emulator,
    call: EmulatedCall,
    operation: Operation,
    status: str,
    result: dict[str, Any] | None,
    **extra: Any,
) -> None:
    """The operation's final state, as a `deleted` notification on its operations URL
    (running operations end with a notification, https://learn.microsoft.com/en-us/graph/api/resources/commsoperation)."""
    operation.status = status
    operation.result_info = result
    operation.extra.update(extra)
    url = f"{call.url}/operations/{operation.id}"
    notify(emulator, call, "deleted", url, {"@odata.id": url, **operation.to_graph()})


async def establish(
    emulator: Emulator,
    call: EmulatedCall,
    on_established: Callable[[Emulator, EmulatedCall], None] | None = None,
) -> None:
    """establishing -> (media processor connects, for app-hosted media) -> established, then the
    roster; an app-hosted call ends with 7112 when its media cannot connect or goes away.
    on_established runs once the roster is out (a meeting starts its timeline there)."""
    set_state(emulator, call, "establishing")
    if call.app_hosted:
        if not await _connect_media(emulator, call):
            end_call(emulator, call, MEDIA_FAILED)
            return
    set_state(emulator, call, "established")
    publish_roster(emulator, call, list(call.roster.participants.values()))
    if on_established is not None:
        on_established(emulator, call)
    if call.link is not None:
        await call.link.failed.wait()
        vanished = call.link.vanished
        if vanished is None:
            # The bot's media went away under an established call: Graph ends the call.
            end_call(emulator, call, MEDIA_FAILED)
        elif vanished.graph_ends_call:
            # Our own media processor crashed (POST .../media/vanish): Graph notices after a
            # while and ends the call as it does for a media connectivity failure.
            detection = vanished.detection_seconds
            if detection is None:
                detection = MP_LOST_SECONDS
            await asyncio.sleep(scaled(emulator, detection))
            end_call(emulator, call, MEDIA_LOST)
        # else: Graph never notices; the call lasts until the app hangs up (or goes inactive).


async def _connect_media(emulator: Emulator, call: EmulatedCall) -> bool:
    blob = media_blob(call.media)
    if blob is None or not call.scripts:
        return False
    try:
        call.link = MediaProcessorLink(
            blob,
            emulator.client_ssl,
            emulator.config.media_loss_rate,
            emulator.config.media_loss_seed,
            light=emulator.config.media_light,
            impairment=emulator.config.media_impairment,
            host_addresses=emulator.config.media_host_addresses,
        )
        await call.link.connect(call.scripts, emulator.config.media_connect_timeout_seconds)
    except MediaProcessorError as exc:
        logger.info("Call(%s) media failed: %s", call.id, exc)
        return False
    return True


def end_call(emulator: Emulator, call: EmulatedCall, result: dict[str, Any] | None) -> None:
    """End the call once, whoever asks: stop its work, then terminating/terminated."""
    if call.ending:
        return
    call.ending = True
    current = asyncio.current_task()
    for task in [call.task, call.media_worker, *call.tasks]:
        if task is not None and task is not current and not task.done():
            task.cancel()
    call.media_queue.clear()
    spawn(call, _finish(emulator, call, result))


async def _finish(emulator: Emulator, call: EmulatedCall, result: dict[str, Any] | None) -> None:
    # A hang-up of an established call shows terminating first (https://learn.microsoft.com/en-us/graph/api/call-delete).
    if call.state == "established":
        set_state(emulator, call, "terminating")
    if call.link is not None:
        await call.link.close("call ended")
    call.state = "terminated"
    call.result_info = result
    notify_call(emulator, call, "deleted")
    if call.outbox is not None:
        try:
            call.outbox.put_nowait(None)
        except asyncio.QueueFull:
            pass  # the sender is cancelled with the emulator


async def _watch_inactivity(emulator: Emulator, call: EmulatedCall) -> None:
    limit = scaled(emulator, INACTIVE_SECONDS)
    loop = asyncio.get_running_loop()
    while True:
        # Requests move the deadline on; sleep until the latest one, then look again.
        remaining = call.last_request + limit - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(remaining)
    logger.info("Call(%s) inactive: no request from its app", call.id)
    end_call(emulator, call, INACTIVE)


async def cancel_tasks(call: EmulatedCall) -> None:
    """Stop everything the call runs (the emulator is stopping)."""
    tasks = [t for t in [call.task, call.media_worker, call.sender, *call.tasks] if t is not None]
    for task in tasks:
        task.cancel()
    if call.link is not None:
        await call.link.close("emulator stopping")
    await asyncio.gather(*tasks, return_exceptions=True)
