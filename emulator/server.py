"""The emulator's process-level object: config, keys, the HTTPS app, and a thread runner."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
import urllib.parse
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from emulator import admin, browser, faults, graph, login, notifyfaults, status
from emulator.analysis import EchoReport, Recording, echo_report
from emulator.calls import DEFAULT_APP_NAME, EmulatedCall, cancel_tasks
from emulator.faults import FaultRule, RecordedRequest
from emulator.impairment import Impairment
from emulator.keys import SigningKey
from emulator.notifier import Notifier
from emulator.participant import IncomingCall, Meeting

logger = logging.getLogger(__name__)

T = TypeVar("T")
REQUEST_LOG_SIZE = 10_000
MAX_CALLS = 5000


@dataclass(frozen=True)
class AppRegistration:
    app_id: str
    secret: str | None
    tenant_id: str
    certificate_pem: bytes | None = None  # a registered certificate (client assertions)
    display_name: str = DEFAULT_APP_NAME  # the bot's displayName in rosters


@dataclass
class EmulatorConfig:
    cert_file: str
    key_file: str
    trust_file: str | None = None  # CA bundle for the bots' webhooks and media endpoints
    host: str = "127.0.0.1"
    port: int = 0
    apps: dict[str, AppRegistration] = field(default_factory=dict)
    meetings: list[Meeting] = field(default_factory=list)
    media_connect_timeout_seconds: float = 10.0
    token_lifetime_seconds: float = 3600.0
    # Multiplies every Graph timing rule (15 s ring, 5 s policy ring, 45 min inactivity, prompt
    # and transfer durations), so that tests run them in milliseconds.
    time_scale: float = 1.0
    media_loss_rate: float = 0.0  # RTP to the bot dropped at random (seeded)
    media_loss_seed: int = 1
    # Loss, bursts, jitter, reordering and blackouts toward the bot from the media start
    # (emulator/impairment.py, Impairment.parse for the JSON keys); replaces media_loss_* if set.
    media_impairment: Impairment | None = None
    # Load-generator mode (emulator/mpaudio.py): pre-encoded participant audio from a per-seed
    # cache, and the bot's audio only counted (MediaProcessorLink.heard_arrivals), not decoded.
    media_light: bool = False
    # The only local addresses the media processor gathers ICE host candidates on, loopback
    # allowed (aioice alone skips 127.0.0.1 and ::1); empty: every non-loopback interface.
    media_host_addresses: tuple[str, ...] = ()
    # Calls that ring the bot when asked (a scenario's [[incoming]]; incoming.ring_incoming).
    incoming: list[IncomingCall] = field(default_factory=list)
    # Users (identity ids) who decline a transfer to them (the failure path of
    # https://learn.microsoft.com/en-us/graph/api/call-transfer).
    declining_users: set[str] = field(default_factory=set)
    # Notification delivery and signing faults armed from the start (emulator/notifyfaults.py;
    # the admin API arms the same at run time).
    notification_faults: notifyfaults.NotificationFaults | None = None
    signing_faults: notifyfaults.SigningFaults | None = None
    # 429/503 answers armed from the start (POST /emulator/faults bodies; a scenario's graph).
    graph_faults: list[FaultRule] = field(default_factory=list)


def create_app(emulator: Emulator) -> web.Application:
    @web.middleware
    async def count_hits(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Requests per route, e.g. "POST /{tenant}/oauth2/v2.0/token": tests assert caching.
        info = request.match_info.route.resource
        emulator.hits[f"{request.method} {info.canonical if info else '(unmatched)'}"] += 1
        return await handler(request)

    app = web.Application(
        middlewares=[count_hits, admin.loopback_only, faults.middleware(emulator)]
    )
    app.add_routes(login.routes(emulator))
    app.add_routes(graph.routes(emulator))
    app.add_routes(admin.routes(emulator))
    app.add_routes(status.routes(emulator))
    app.add_routes(notifyfaults.routes(emulator))
    app.add_routes(browser.routes(emulator))
    return app


class Emulator:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.token_key = SigningKey()
        self.notification_keys = [SigningKey()]
        self.fault_injector = notifyfaults.FaultInjector(
            self.notification_keys, config.notification_faults, config.signing_faults
        )
        self.calls: dict[str, EmulatedCall] = {}
        self.hits: Counter[str] = Counter()
        self.seen_assertions: dict[str, float] = {}  # client-assertion jti -> exp (replays)
        # Every Graph request, in arrival order; bounded for a long-running emulator.
        self.requests: deque[RecordedRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self.faults: list[FaultRule] = list(config.graph_faults)
        self.background: set[asyncio.Task[Any]] = (
            set()
        )  # admin work (scenario rings), stopped with us
        self.recordings: dict[str, tuple[str, bytes]] = {}  # recordResponse files: token, WAV
        self.browsers = browser.Browsers()  # people on the join page (emulator/browser.py)
        self.client_ssl: ssl.SSLContext | None = None
        if config.trust_file:
            self.client_ssl = ssl.create_default_context(cafile=config.trust_file)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._notifier: Notifier | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"https://{self.config.host}:{self.port}"

    def add_call(self, call: EmulatedCall) -> None:
        """Keep the call; the oldest ended calls go once there are more than MAX_CALLS."""
        self.calls[call.id] = call
        if len(self.calls) > MAX_CALLS:
            ended = [c.id for c in self.calls.values() if c.state == "terminated"]
            for call_id in ended[: len(self.calls) - MAX_CALLS]:
                del self.calls[call_id]

    def meeting(self, thread_id: str) -> Meeting | None:
        return next((m for m in self.config.meetings if m.thread_id == thread_id), None)

    def join_url(self, meeting: Meeting) -> str:
        """A Teams join URL in the form the .NET samples parse
        (https://github.com/microsoftgraph/microsoft-graph-comms-samples/blob/master/Samples/Common/Sample.Common/Meetings/JoinInfo.cs)."""
        context = urllib.parse.quote(
            f'{{"Tid":"{meeting.tenant_id}","Oid":"{meeting.organizer_id}"}}'
        )
        thread = urllib.parse.quote(meeting.thread_id, safe="")
        return f"https://teams.microsoft.com/l/meetup-join/{thread}/0?context={context}"

    def join_page_url(self, meeting: Meeting) -> str:
        """The browser join page for a person (emulator/browser.py)."""
        thread = urllib.parse.quote(meeting.thread_id, safe="")
        return f"{self.base_url}/meetings/{thread}/join"

    async def start(self) -> None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(self.config.cert_file, self.config.key_file)
        self._session = aiohttp.ClientSession()
        self._notifier = Notifier(self._session, self.client_ssl, self.fault_injector)
        self._runner = web.AppRunner(create_app(self))
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.port, ssl_context=ssl_context
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        logger.info("Emulator listening on %s", self.base_url)

    async def stop(self) -> None:
        await self.browsers.close_all()  # their leaves still reach the calls, which end next
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await asyncio.gather(*(cancel_tasks(c) for c in list(self.calls.values())))
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def post_notifications(
        self, call: EmulatedCall, items: list[dict[str, Any]], callback_uri: str | None = None
    ) -> int:
        assert self._notifier is not None, "emulator not started"
        return await self._notifier.post(
            self.notification_keys[0],
            callback_uri or call.callback_uri,
            call.app_id,
            call.tenant_id,
            items,
            call.scenario_id,
        )

    async def echo_report(self, call_id: str) -> tuple[EchoReport, Recording]:
        """How the first participant heard the bot: correlation, delay, and the heard audio."""
        call = self.calls[call_id]
        if call.link is None:
            return echo_report(Recording(), Recording()), Recording()
        return echo_report(call.link.sent, call.link.heard), call.link.heard


class EmulatorThread:
    """Runs an Emulator on its own event loop in its own thread (the demo and the tests)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.emulator = Emulator(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator", daemon=True)

    def start(self) -> Emulator:
        self._thread.start()
        self.run(self.emulator.start())
        return self.emulator

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the emulator's loop and wait for it from another thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.run(self.emulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()
