"""The bot: wires settings, the media platform, the Graph client and the webhook together.

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
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from bot.calls import Call, CallRegistry
from bot.errors import GraphError
from bot.graph.auth import TokenProvider
from bot.graph.client import GraphClient
from bot.inbound_auth import NotificationValidator
from bot.join_url import parse_join_url
from bot.settings import Settings
from bot.webhook import WEBHOOK_PATH, create_app
from media import MediaPlatform, MediaPlatformSettings
from media.pipeline import AudioProcessor, EchoProcessor
from media.session import MediaEvent

logger = logging.getLogger(__name__)

ProcessorFactory = Callable[[], list[AudioProcessor]]
MEDIA_EVENT_HISTORY = 256


class Bot:
    def __init__(
        self, settings: Settings, processors: ProcessorFactory = lambda: [EchoProcessor()]
    ) -> None:
        self.settings = settings
        self._processors = processors
        self.registry = CallRegistry(on_terminated=self._release_media)
        self._tasks: set[asyncio.Task[None]] = set()
        self.media = MediaPlatform(
            MediaPlatformSettings(
                service_fqdn=settings.service_fqdn,
                certificate_file=settings.cert_file,
                private_key_file=settings.key_file,
                instance_internal_port=settings.instance_internal_port,
                instance_public_port=settings.instance_public_port,
                bind_host=settings.media_bind_host,
            ),
            on_event=self._media_event_threadsafe,
        )
        # Recent media-session events, for status and diagnostics (bounded: a service runs long).
        self.media_events: deque[MediaEvent] = deque(maxlen=MEDIA_EVENT_HISTORY)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.graph: GraphClient | None = None
        self.validator: NotificationValidator | None = None
        self.callback_url = ""

    async def start(self) -> None:
        """Start everything; on failure, stop what had started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        client_ssl = ssl.create_default_context(cafile=s.ca_file) if s.ca_file else None
        self._session = aiohttp.ClientSession()
        tokens = TokenProvider(
            s.app_id, s.app_secret, f"{s.authority_url}/{s.tenant_id}", s.ca_file
        )
        self.graph = GraphClient(s.graph_url, tokens, self._session, client_ssl)
        self.validator = NotificationValidator(
            s.app_id,
            s.notification_openid_url,
            self._session,
            client_ssl,
            leeway_seconds=s.notification_leeway_seconds,
        )
        await asyncio.to_thread(self.media.start)
        server_ssl = None
        if s.cert_file:
            server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ssl.load_cert_chain(s.cert_file, s.key_file)
        self._runner = web.AppRunner(create_app(self.validator, self.registry), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.webhook_host, s.webhook_port, ssl_context=server_ssl)
        await site.start()
        port = int(self._runner.addresses[0][1])
        self.callback_url = s.callback_url or f"https://{s.service_fqdn}:{port}{WEBHOOK_PATH}"
        logger.info("Bot webhook at %s, media at %s", self.callback_url, self.media.mp_uri_base)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.media.stop)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def join(self, join_url: str, scenario_id: str = "") -> Call:
        """Join a Teams meeting from its join URL with app-hosted media. Raises GraphError."""
        assert self.graph is not None, "Bot.start() first"
        info = parse_join_url(join_url)
        session = self.media.create_session(self._processors())
        body: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.call",
            "callbackUri": self.callback_url,
            "requestedModalities": ["audio"],
            "mediaConfig": {
                "@odata.type": "#microsoft.graph.appHostedMediaConfig",
                "blob": session.blob(),
            },
            "chatInfo": info.chat_info(),
            "meetingInfo": info.meeting_info(),
            "tenantId": info.tenant_id,
        }
        try:
            created = await self.graph.create_call(body, scenario_id or str(uuid.uuid4()))
            call_id = str(created["id"])
        except (GraphError, KeyError):
            await self.media.close_session(session.id, "join failed")
            raise
        call = self.registry.get_or_add(call_id)
        call.media_session_id = session.id
        if call.state == "terminated":  # it ended before Graph's answer reached us
            self._release_media(call)
        if isinstance(created.get("state"), str):
            call.apply_state(created["state"])
        return call

    async def hang_up(self, call: Call) -> None:
        assert self.graph is not None, "Bot.start() first"
        await self.graph.delete_call(call.id)

    def _release_media(self, call: Call) -> None:
        """Graph ended the call: free its media session (on the media loop, not here)."""
        if call.media_session_id is None:
            return
        task = asyncio.create_task(self.media.close_session(call.media_session_id, "call ended"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _media_event_threadsafe(self, event: MediaEvent) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.media_events.append, event)
