"""The bot: wires settings, the media platform, the Graph client and the webhook together, and
is the entry point for placing, joining and receiving calls.

Threads (DESIGN.md section 3): this object lives on the control loop (the caller's loop). The
media platform runs its own media thread and hot-loop thread; its events reach us as plain
messages through call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

import aiohttp
from aiohttp import web

from bot.call import Call
from bot.calls import CallCollection
from bot.errors import GraphError
from bot.graph import shapes
from bot.graph.auth import TokenProvider
from bot.graph.client import GraphClient, Sleep
from bot.inbound_auth import NotificationValidator
from bot.join_url import JoinInfo, parse_join_url
from bot.keepalive import KeepAlive
from bot.settings import Settings
from bot.webhook import STATS, WEBHOOK_PATH, WebhookStats, create_app
from media import MediaPlatform, MediaPlatformSettings
from media.pipeline import AudioProcessor, EchoProcessor
from media.session import LocalMediaSession, MediaEvent, MediaSessionOptions

logger = logging.getLogger(__name__)

ProcessorFactory = Callable[[], list[AudioProcessor]]
MEDIA_EVENT_HISTORY = 256
Media = Literal["app", "service"]


class Bot:
    def __init__(
        self,
        settings: Settings,
        processors: ProcessorFactory = lambda: [EchoProcessor()],
        keepalive: KeepAlive | None = None,
        window_scale: float = 1.0,
        retry_sleep: Sleep = asyncio.sleep,
    ) -> None:
        """window_scale shrinks Graph's answer windows for tests against a time-scaled emulator."""
        self.settings = settings
        self._processors = processors
        self._retry_sleep = retry_sleep
        self.calls = CallCollection(
            context=self,
            lifecycle=self,
            window_scale=window_scale,
            reconcile_seconds=settings.state_reconcile_seconds,
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
            ),
            on_event=self._media_event_threadsafe,
        )
        # Recent media-session events, for status and diagnostics (bounded: a service runs long).
        self.media_events: deque[MediaEvent] = deque(maxlen=MEDIA_EVENT_HISTORY)
        self._media_waiters: list[
            tuple[Callable[[MediaEvent], bool], asyncio.Future[MediaEvent]]
        ] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._media_lost: dict[str, asyncio.Task[None]] = {}  # call id -> its media-lost watch
        self._stopping = False
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
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
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
        )
        await asyncio.to_thread(self.media.start)
        server_ssl = None
        if s.cert_file:
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ssl.load_cert_chain(s.cert_file, s.key_file)
        self._runner = web.AppRunner(create_app(self.validator, self.calls), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.webhook_host, s.webhook_port, ssl_context=server_ssl)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.callback_url = s.callback_url or f"https://{s.service_fqdn}:{port}{WEBHOOK_PATH}"
        logger.info("Bot webhook at %s, media at %s", self.callback_url, self.media.mp_uri_base)

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

    async def stop(self) -> None:
        self._stopping = True  # sessions closed by the shutdown are not media lost
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.keepalive.close()
        watches = list(self._media_lost.values())
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await self.calls.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.media.stop)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- placing and joining calls (application-post-calls.md) --------------------------------

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
            self._meeting_body(info.chat_info(), info.meeting_info(), guest_name),
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
        body = self._meeting_body(chat, meeting_info, guest_name)
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

    def _meeting_body(
        self, chat: dict[str, Any], meeting: dict[str, Any], guest_name: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"chatInfo": chat, "meetingInfo": meeting}
        if guest_name is not None:
            # Joining as a guest needs Calls.JoinGroupCallAsGuest.All (graph-comms.md 2.1).
            body["source"] = {
                "@odata.type": "#microsoft.graph.participantInfo",
                "identity": shapes.identity_set(
                    guest_id=str(uuid.uuid4()), display_name=guest_name
                ),
            }
        return body

    async def _create(
        self,
        body: dict[str, Any],
        tenant_id: str,
        media: Media,
        delta_roster: bool,
        options: MediaSessionOptions | None = None,
    ) -> Call:
        options = options or MediaSessionOptions()
        session = self.media.create_session(self._processors(), options) if media == "app" else None
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
        state = call.apply_resource(created, deleted=False)
        if state is not None:
            self.calls.notify_state(call, state)
        elif call.state == "terminated":  # it ended before Graph's answer reached us
            self.terminated(call)
        self.expect_state(call, "established")
        return call

    # -- CallContext and Lifecycle (bot.call, bot.calls) --------------------------------------

    def new_media_blob(self, call: Call, options: MediaSessionOptions | None = None) -> str:
        """A media session for an incoming call being answered with app-hosted media."""
        session = self.media.create_session(self._processors(), options)
        call.media_session_id = session.id
        return session.blob(call.id)

    def expect_state(self, call: Call, state: str) -> None:
        """If Graph's notification of `state` is lost, read the call back (bot/reconcile.py)."""
        self.calls.expect(call, state)

    def established(self, call: Call) -> None:
        self.keepalive.start(call)

    def terminated(self, call: Call) -> None:
        """Graph ended the call: stop its keep-alive, free its media (on the media loop)."""
        self.keepalive.stop(call.id)
        watch = self._media_lost.pop(call.id, None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        if call.media_session_id is None:
            return
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
            )

    def _media_event_threadsafe(self, event: MediaEvent) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._media_event, event)

    def _media_event(self, event: MediaEvent) -> None:
        self.media_events.append(event)
        if event.kind in ("failed", "closed"):
            self._media_ended(event)
        waiters, self._media_waiters = self._media_waiters, []
        for predicate, future in waiters:
            if future.done():
                continue
            try:
                matched = predicate(event)
            except Exception as exc:  # the caller's predicate: its error is the caller's
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(event)
            else:
                self._media_waiters.append((predicate, future))

    def _media_ended(self, event: MediaEvent) -> None:
        """A call's media session failed or closed while the call goes on: its media
        processor vanished, or said bye just before Graph's `terminating`. Graph normally ends
        the call (the media-lost watch ends with it); if it does not, the watch hangs up."""
        call = next(
            (c for c in self.calls.calls.values() if c.media_session_id == event.session_id),
            None,
        )
        if self._stopping or call is None or call.state in ("terminating", "terminated"):
            return
        if event.kind == "failed":
            call.media_lost = event.detail or "media failed"
            logger.warning("Call(%s) media lost: %s", call.id, call.media_lost)
        if call.id not in self._media_lost:
            watch = asyncio.create_task(self._watch_media_lost(call), name=f"media-lost:{call.id}")
            self._media_lost[call.id] = watch
            watch.add_done_callback(lambda _: self._media_lost.pop(call.id, None))

    async def _watch_media_lost(self, call: Call) -> None:
        """Give Graph media_lost_timeout_seconds to end a call whose media is gone, then hang
        up; if Graph no longer knows the call (404) or never confirms, end it here."""
        timeout = self.settings.media_lost_timeout_seconds
        try:
            await call.wait_for("terminated", timeout)
            return
        except TimeoutError:
            pass
        logger.warning(
            "Call(%s) media gone for %.1f s and Graph has not ended the call: hanging up",
            call.id,
            timeout,
        )
        try:
            await call.hang_up()
        except GraphError as exc:
            # 404: Graph ended it and its notification was lost. Anything else: a call with no
            # media is of no use, so it ends here either way (Graph's 45-minute inactivity
            # rule ends its side once keep-alives stop, call-keepalive.md).
            logger.warning("Call(%s) hang-up after media loss failed: %s", call.id, exc)
            self.calls.end(call)
            return
        try:
            await call.wait_for("terminated", timeout)
        except TimeoutError:
            self.calls.end(call)  # the DELETE was accepted; its notification never came

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
        future: asyncio.Future[MediaEvent] = asyncio.get_running_loop().create_future()
        self._media_waiters.append((predicate, future))
        try:
            return await asyncio.wait_for(future, within_seconds)
        finally:
            self._media_waiters = [w for w in self._media_waiters if w[1] is not future]


__all__ = ["Bot", "JoinInfo"]
