"""The bot: wires settings, the media platform, the Graph client and the webhook together, and
is the entry point for placing, joining and receiving calls.

Threads: this object lives on the control loop (the caller's loop). The
media platform runs its own media thread and hot-loop thread; its events reach us as plain
messages through call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import ssl
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

from bot import leaving
from bot.call import Call
from bot.call_requests import describe_request, meeting_body
from bot.calls import CallCollection
from bot.errors import GraphError
from bot.graph import shapes
from bot.graph.auth import TokenProvider
from bot.graph.client import GraphClient, Sleep
from bot.inbound_auth import NotificationValidator
from bot.join_url import JoinInfo, parse_join_url
from bot.keepalive import KeepAlive
from bot.media_events import MediaEvents
from bot.pipeline import by_session, event_name, log_event
from bot.recording import CallRecording
from bot.settings import Settings, SettingsError
from bot.startup import bind_error, host_port
from bot.webhook import STATS, WEBHOOK_PATH, WebhookStats, create_app
from media import MediaPlatform, MediaPlatformSettings
from media.listener import serve
from media.pipeline import plugins
from media.pipeline.events import PipelineEvent, RecorderFailed, SpeechStarted
from media.pipeline.processor import Processor, ProcessorContext, Recording, close_processors
from media.platform import MediaPlatformError
from media.session import LocalMediaSession, MediaEvent, MediaSessionOptions

logger = logging.getLogger(__name__)

# Code-given processors for each new media session (besides BOT_PROCESSORS from settings).
ProcessorFactory = Callable[[ProcessorContext], Sequence[Processor]]
NAMES_TIMEOUT_SECONDS = 2.0
MEDIA_EVENT_HISTORY = 256
Media = Literal["app", "service"]


class Bot:
    def __init__(
        self,
        settings: Settings,
        processors: ProcessorFactory | None = None,
        keepalive: KeepAlive | None = None,
        window_scale: float = 1.0,
        retry_sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`processors` makes each media session's processors in code; settings add theirs
        (BOT_PROCESSORS). window_scale shrinks Graph's answer windows for tests against a
        time-scaled emulator. Raises SettingsError for unusable processor settings."""
        self.settings = settings
        self._processors = processors
        self._processor_specs = plugins.parse_specs(settings.processors)
        try:
            self._processor_options = plugins.parse_options(settings.processor_options)
            for spec in self._processor_specs:  # a typo fails at start, not at the first call
                plugins.load_factory(spec)
        except plugins.ProcessorSpecError as exc:
            raise SettingsError(str(exc)) from exc
        self._retry_sleep = retry_sleep
        self.calls = CallCollection(
            context=self,
            lifecycle=self,
            window_scale=window_scale,
            reconcile_seconds=settings.state_reconcile_seconds,
            unknown_calls=settings.unknown_calls,
        )
        self._media_feed = MediaEvents(
            self.calls,
            lambda: self._stopping,
            settings.media_lost_timeout_seconds,
            MEDIA_EVENT_HISTORY,
        )
        self.keepalive = keepalive or KeepAlive()
        if self.keepalive.on_gone is None:
            self.keepalive.on_gone = self.calls.end
        self.media = MediaPlatform(
            MediaPlatformSettings(
                service_fqdn=settings.service_fqdn,
                certificate_file=settings.cert_file,
                private_key_file=settings.key_file,
                instance_internal_port=settings.instance_internal_port,
                instance_public_port=settings.instance_public_port,
                bind_host=settings.media_bind_host,
                instance_public_ip=settings.instance_public_ip,
                media_port_min=settings.media_port_min,
                media_port_max=settings.media_port_max,
                host_addresses=settings.media_host_addresses,
                listener=settings.listener_limits(),
                control_hello_timeout_seconds=settings.listener_hello_timeout_seconds,
            ),
            on_event=self._media_event_threadsafe,
            on_pipeline_events=self._pipeline_events_threadsafe,
            vad=settings.vad(),
        )
        self.recording = CallRecording(self.media, lambda: self.admitting, self._spawn)
        # Recent media-session events, for status and diagnostics (bounded: a service runs long).
        self.media_events: deque[MediaEvent] = self._media_feed.history
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: bool = False
        # False once stop() began: incoming calls are rejected (busy), join/create refuse.
        self.admitting: bool = True
        self._graph: GraphClient | None = None
        self.validator: NotificationValidator | None = None
        self.callback_url = ""

    @property
    def webhook_stats(self) -> WebhookStats | None:
        """Notification posts accepted, refused (by reason) and malformed, while running."""
        return self._runner.app[STATS] if self._runner is not None else None

    @property
    def graph(self) -> GraphClient:
        if self._graph is None:
            raise RuntimeError("Bot.start() first")
        return self._graph

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; on failure, stop what had started and re-raise."""
        try:
            await self._start()
            await self._warm_up()
            if self.settings.gc_freeze:
                # Everything alive now (modules, aiortc, the emulator in a demo) moves to the
                # permanent generation, so a full collection scans only what calls create:
                # pauses of 25-85 ms under load became 2-14 ms (bench/pipeline.py), which is
                # what late ticks and the webhook's p99 were made of (CPython docs, gc.freeze).
                gc.collect()
                gc.freeze()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client_ssl = ssl.create_default_context(cafile=s.ca_file) if s.ca_file else None
        self._session = aiohttp.ClientSession()
        tokens = TokenProvider(
            s.app_id,
            s.app_secret,
            f"{s.authority_url}/{s.tenant_id}",
            s.ca_file,
            certificate_file=s.app_certificate_file,
        )
        self._graph = GraphClient(
            s.graph_url, tokens, self._session, client_ssl, sleep=self._retry_sleep
        )
        self.validator = NotificationValidator(
            s.app_id,
            s.notification_openid_url,
            self._session,
            client_ssl,
            leeway_seconds=s.notification_leeway_seconds,
            unknown_kid_refresh_seconds=s.notification_key_refresh_seconds,
            allowed_tenants=s.allowed_tenants,
        )
        try:
            await asyncio.to_thread(self.media.start)
        except MediaPlatformError as exc:
            if isinstance(exc.__cause__, OSError):
                raise SettingsError(
                    bind_error(
                        "BOT_INSTANCE_INTERNAL_PORT",
                        s.media_bind_host,
                        s.instance_internal_port,
                        exc.__cause__,
                    )
                ) from exc
            raise
        server_ssl = None
        if s.cert_file:
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ssl.load_cert_chain(s.cert_file, s.key_file)
        try:
            self._runner, _ = await serve(
                "webhook",
                create_app(self.validator, self.calls),
                s.webhook_host,
                s.webhook_port,
                server_ssl,
                s.listener_limits(),
                access_log=None,
            )
        except OSError as exc:
            raise SettingsError(
                bind_error("BOT_WEBHOOK_PORT", s.webhook_host, s.webhook_port, exc)
            ) from exc
        port = int(self._runner.addresses[0][1])
        self.callback_url = s.callback_url or f"https://{s.service_fqdn}:{port}{WEBHOOK_PATH}"
        logger.info(
            "Bot webhook listening on %s, callback URL %s",
            ", ".join(host_port(a[0], a[1]) for a in self._runner.addresses),
            self.callback_url,
        )
        net = self.media.network
        logger.info(
            "Bot media control listening on %s (%s); media UDP ports %s on %s%s",
            host_port(s.media_bind_host, self.media.bound_port),
            self.media.mp_uri_base,
            "any" if net.port_min is None else f"{net.port_min}-{net.port_max}",
            ", ".join(net.bind_addresses or ()) or "discovered addresses",
            f", advertised as {net.public_ip}" if net.public_ip else "",
        )

    async def _warm_up(self) -> None:
        """Fetch the notification keys and a Graph token now, so the first incoming call does
        not spend its 15 s window on them. Failures are logged: both are retried on use."""
        assert self.validator is not None
        results = await asyncio.gather(
            self.validator.prefetch(), self.graph.tokens.token(), return_exceptions=True
        )
        for what, result in zip(("notification keys", "Graph token"), results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("Bot x could not fetch %s at start: %r", what, result)

    async def stop(self, timeout_seconds: float | None = None) -> list[str]:
        """Leave, then shut down: admit no new call, stop every recording and tell Graph
        (`notRecording`), hang up every call the bot is in and wait for Graph to confirm it,
        all within `timeout_seconds` (default: the shutdown_timeout_seconds setting); then
        finalize recorders and release everything. Returns the calls still up in Graph
        (those it did not confirm in time), as for calls_left_up()."""
        self.admitting = False
        left: list[str] = []
        if self._runner is not None and self._graph is not None:
            timeout = (
                self.settings.shutdown_timeout_seconds
                if timeout_seconds is None
                else timeout_seconds
            )
            left = await leaving.leave_all(
                self.calls, timeout, self.settings.shutdown_timeout_seconds
            )
        self._stopping = True  # sessions closed by the shutdown are not media lost
        if self.settings.gc_freeze:
            gc.unfreeze()  # what start() froze can be collected again once the bot is gone
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.keepalive.close()
        await self._media_feed.close()
        await self.calls.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.media.stop)
        if self._session is not None:
            await self._session.close()
            self._session = None
        return left

    def calls_left_up(self) -> list[str]:
        """`id (state)` of every call Graph may still hold for this bot: what an immediate
        exit would leave up."""
        return leaving.calls_left_up(self.calls)

    # -- placing and joining calls: https://learn.microsoft.com/en-us/graph/api/application-post-calls

    async def join(
        self,
        join_url: str,
        *,
        media: Media = "app",
        guest_name: str | None = None,
        delta_roster: bool = False,
        media_options: MediaSessionOptions | None = None,
    ) -> Call:
        """Join a Teams meeting from its join URL. Raises GraphError, ValueError.

        media_options: unmixed audio (receive_unmixed_meeting_audio) and video sockets."""
        info = parse_join_url(join_url)
        return await self._create(
            meeting_body(info.chat_info(), info.meeting_info(), guest_name),
            info.tenant_id,
            media,
            delta_roster,
            media_options,
        )

    async def join_by_meeting_id(
        self,
        join_meeting_id: str,
        passcode: str | None = None,
        *,
        media: Media = "app",
        guest_name: str | None = None,
        media_options: MediaSessionOptions | None = None,
    ) -> Call:
        """Join with a meeting id and passcode (joinMeetingIdMeetingInfo)."""
        meeting_info: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.joinMeetingIdMeetingInfo",
            "joinMeetingId": join_meeting_id,
            "passcode": passcode,
        }
        chat = {"@odata.type": "#microsoft.graph.chatInfo", "threadId": None, "messageId": None}
        body = meeting_body(chat, meeting_info, guest_name)
        return await self._create(body, self.settings.tenant_id, media, False, media_options)

    async def create_call(
        self,
        targets: Sequence[dict[str, Any]],
        *,
        media: Media = "app",
        subject: str | None = None,
        media_options: MediaSessionOptions | None = None,
    ) -> Call:
        """A peer-to-peer call (one target) or a group call (several): identity sets."""
        if not targets:
            raise ValueError("a call needs at least one target")
        body: dict[str, Any] = {
            "targets": [shapes.invitation_participant(t) for t in targets],
            "source": {
                "@odata.type": "#microsoft.graph.participantInfo",
                "identity": shapes.identity_set(application_id=self.settings.app_id),
            },
        }
        if subject is not None:
            body["subject"] = subject
        return await self._create(body, self.settings.tenant_id, media, False, media_options)

    async def _create(
        self,
        body: dict[str, Any],
        tenant_id: str,
        media: Media,
        delta_roster: bool,
        options: MediaSessionOptions | None = None,
    ) -> Call:
        if not self.admitting:
            raise RuntimeError("the bot is stopping: no new call")
        options = options or MediaSessionOptions()
        session = (
            self.media.create_session(self._make_processors, options) if media == "app" else None
        )
        request: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.call",
            "callbackUri": self.callback_url,
            "requestedModalities": options.modalities,
            "mediaConfig": shapes.app_hosted_media(session.blob())
            if session is not None
            else shapes.service_hosted_media(),
            "tenantId": tenant_id,
            **body,
        }
        if delta_roster:
            request["callOptions"] = {
                "@odata.type": "#microsoft.graph.outgoingCallOptions",
                "isDeltaRosterEnabled": True,
            }
        scenario_id = str(uuid.uuid4())
        # Until this call is learned, an unknown id in a notification may be this call's
        # (Graph can notify before it answers the POST): BOT_UNKNOWN_CALLS waits.
        with self.calls.creating():
            try:
                created = await self.graph.request(
                    "POST", "/communications/calls", request, scenario_id
                )
                call_id = str(created["id"])
            except (GraphError, KeyError):
                if session is not None:
                    await self.media.close_session(session.id, "create failed")
                raise
            call = self.calls.get_or_add(call_id)
            call.scenario_id = scenario_id
            call.delta_roster = delta_roster
            call.media_session_id = session.id if session is not None else None
            logger.info(
                "Call(%s) created: %s (%s-hosted media)",
                call_id,
                describe_request(body),
                media,
                extra={"call_id": call_id},
            )
            state = call.apply_resource(created, deleted=False)
            if state is not None:
                self.calls.notify_state(call, state)
            elif call.state == "terminated":  # it ended before Graph's answer reached us
                self.terminated(call)
            # Graph's notifications can arrive before its answer to the POST: they were held, and
            # apply now, after the answer and with the call's media session and options set.
            self.calls.learned(call)
        self.expect_state(call, "established")
        return call

    # -- CallContext and Lifecycle (bot.call, bot.calls) --------------------------------------

    def new_media_blob(self, call: Call, options: MediaSessionOptions | None = None) -> str:
        """A media session for an incoming call being answered with app-hosted media."""
        session = self.media.create_session(self._make_processors, options)
        call.media_session_id = session.id
        return session.blob(call.id)

    def expect_state(self, call: Call, state: str) -> None:
        """If Graph's notification of `state` is lost, read the call back (bot/reconcile.py)."""
        self.calls.expect(call, state)

    def established(self, call: Call) -> None:
        self.keepalive.start(call)
        self.recording.established(call, self.settings.record_on_join)

    async def before_hang_up(self, call: Call) -> None:
        """The bot is leaving: recorders stop and the status says so while Graph still knows
        the call (https://learn.microsoft.com/en-us/graph/api/call-updaterecordingstatus)."""
        await self.recording.before_hang_up(call)

    def terminated(self, call: Call) -> None:
        """Graph ended the call: stop its keep-alive, free its media (on the media loop)."""
        self.keepalive.stop(call.id)
        self._media_feed.terminated(call.id)
        if call.media_session_id is None:
            return
        self.recording.terminated(call)
        task = asyncio.create_task(self.media.close_session(call.media_session_id, "call ended"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def incoming_fallback(self, call: Call) -> None:
        """Nobody decided in time: answer (the default) or reject, inside Graph's window."""
        try:
            if self.settings.incoming_call_fallback == "answer":
                await call.answer()
            else:
                await call.reject("busy")
        except GraphError as exc:
            logger.warning(
                "Call(%s) fallback %s failed: %s",
                call.id,
                self.settings.incoming_call_fallback,
                exc,
                extra={"call_id": call.id},
            )

    # -- the processing pipeline (media/pipeline/, bot/pipeline.py) ---------------------------

    def _make_processors(self, session: LocalMediaSession) -> list[Processor]:
        """A new media session's processors: code-given first, then BOT_PROCESSORS."""
        context = ProcessorContext(
            session_id=session.id,
            out_dir=Path(self.settings.recordings_dir),
            names=lambda: self.speaker_names(session.id),
            emit=self._pipeline_events_threadsafe,
        )
        made = list(self._processors(context)) if self._processors is not None else []
        try:
            made += plugins.build(self._processor_specs, context, self._processor_options)
        except BaseException:
            close_processors(made)
            raise
        return made

    def speaker_names(self, session_id: str) -> Mapping[int, str]:
        """MSI -> display name for the call on a media session; any thread (processors ask
        from their own threads, the answer is read on the control loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return {}
        if threading.get_ident() == self._loop_thread:
            return self._names(session_id)
        future: concurrent.futures.Future[Mapping[int, str]] = concurrent.futures.Future()

        def read() -> None:
            if not future.cancelled():
                future.set_result(self._names(session_id))

        try:
            loop.call_soon_threadsafe(read)
            return future.result(NAMES_TIMEOUT_SECONDS)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return {}  # the loop is gone or stuck: unnamed MSIs, never a hang

    def _names(self, session_id: str) -> Mapping[int, str]:
        call = self._call_on(session_id)
        if call is None:
            return {}
        self._learn_names(call)
        return dict(call.speech.names)

    @staticmethod
    def _learn_names(call: Call) -> None:
        """Add the roster's MSI -> name pairs to what the call has seen: someone who spoke
        and left keeps their name in the timeline."""
        for msi, participant_id in call.msi_to_participant().items():
            participant = call.participants.get(participant_id)
            name = participant.display_name if participant is not None else ""
            call.speech.names[msi] = name or participant_id

    def _call_on(self, session_id: str) -> Call | None:
        return next(
            (c for c in self.calls.calls.values() if c.media_session_id == session_id), None
        )

    def _pipeline_events_threadsafe(self, events: Sequence[PipelineEvent]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._pipeline_events, events)
            except RuntimeError:  # closed between the check and the call
                pass

    def _pipeline_events(self, events: Sequence[PipelineEvent]) -> None:
        for session_id, mine in by_session(events).items():
            call = self._call_on(session_id)
            if call is None:
                continue
            for event in mine:
                if isinstance(event, SpeechStarted) and event.msi not in call.speech.names:
                    self._learn_names(call)
                call.speech.apply(event)
                log_event(call.id, event)
                self.calls.dispatch(call, event_name(event), event)
                if isinstance(event, RecorderFailed) and not self._stopping:
                    self.recording.failed(call)
            call.changed()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def recorders(self, call: Call) -> list[Recording]:
        """The call's recording processors (media/pipeline/processor.py Recording)."""
        return self.recording.recorders(call)

    async def start_recording(self, call: Call) -> None:
        """Set the call's recording status to `recording` through Graph, and only once Graph
        has acknowledged it start the call's recorders. Raises GraphError (nothing is
        recorded), ValueError when the call has no recorder."""
        await self.recording.start_recording(call)

    async def stop_recording(self, call: Call, status: str = "notRecording") -> None:
        """Stop the call's recorders, then tell Graph (`notRecording`, or `failed` when a
        recorder broke). A call Graph has already ended needs no status."""
        await self.recording.stop_recording(call, status)

    def _media_event_threadsafe(self, event: MediaEvent) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._media_feed.on_event, event)

    def media_session(self, call: Call) -> LocalMediaSession | None:
        """The call's app-hosted media: its audio socket, video sockets, send_dtmf()."""
        if call.media_session_id is None:
            return None
        return self.media.session(call.media_session_id)

    async def wait_media_event(
        self, predicate: Callable[[MediaEvent], bool], within_seconds: float
    ) -> MediaEvent:
        """The next media event (tone, dominant speaker, video status...) that matches, from
        now on. Raises TimeoutError."""
        return await self._media_feed.wait(predicate, within_seconds)


__all__ = ["Bot", "JoinInfo"]
