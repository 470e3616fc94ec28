"""MediaPlatform: owns the media thread (asyncio, uvloop if installed), the TLS media-control
endpoint and the hot-loop thread, and creates one LocalMediaSession per call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from media.clock import Clock, MonotonicClock
from media.health import HealthChange, LateTickShare, PlatformHealth, PlatformOverloadedError
from media.listener import ListenerLimits, serve
from media.network import NetworkSettings
from media.pipeline.events import EventSink
from media.pipeline.hotloop import HotLoop
from media.pipeline.processor import Processor, close_processors
from media.pipeline.vad import VadSettings
from media.server import ControlStats, close_all, create_app
from media.session import LocalMediaSession, MediaEvent, MediaSessionOptions

logger = logging.getLogger(__name__)

# A session's processors: a list, or a function of the new session that makes them.
Processors = Sequence[Processor] | Callable[[LocalMediaSession], Sequence[Processor]]

STARTUP_TIMEOUT_SECONDS = 15.0


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and let closing transports run their callbacks before the loop
    closes (uvloop refuses to close with live handles)."""
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(3):  # connection_lost callbacks are scheduled with call_soon
        await asyncio.sleep(0)


class MediaPlatformError(Exception):
    """The media platform could not start or do what was asked."""


class MediaPlatformOverloadedError(MediaPlatformError, PlatformOverloadedError):
    """The machine is overloaded: no new sessions (the library's "overloaded" exception)."""


@dataclass(frozen=True, slots=True)
class MediaPlatformSettings:
    """Names as users of Microsoft.Skype.Bots.Media know them
    (MediaPlatformInstanceSettings in https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html)."""

    service_fqdn: str = "localhost"
    certificate_file: str | None = None  # PEM chain for service_fqdn
    private_key_file: str | None = None
    instance_internal_port: int = 8445  # 0: any free port (tests, demo)
    instance_public_port: int | None = None  # None: the bound internal port
    bind_host: str = "127.0.0.1"
    # Media (UDP): all ICE candidates from this port range, advertising the instance's public
    # IP behind 1:1 NAT, so one firewall rule covers the bot (MediaPortRange and
    # InstancePublicIPAddress of the Windows library).
    instance_public_ip: str | None = None
    media_port_min: int | None = None
    media_port_max: int | None = None
    # The only local addresses ICE host candidates are gathered on, loopback allowed (stock
    # aioice skips 127.0.0.1 and ::1, so a bot and an emulator on one machine without another
    # interface could not connect); empty: every non-loopback interface.
    host_addresses: tuple[str, ...] = ()
    # The media-control endpoint's connection caps, timeouts and failed-hello rate limit
    # (media/listener.py), and how long a new control WebSocket has to say hello.
    listener: ListenerLimits = ListenerLimits()
    control_hello_timeout_seconds: float = 10.0

    def network(self) -> NetworkSettings:
        """Raises ValueError naming a bad port range or address."""
        return NetworkSettings(
            port_min=self.media_port_min,
            port_max=self.media_port_max,
            public_ip=self.instance_public_ip,
            bind_addresses=tuple(self.host_addresses) or None,
        )


def _new_media_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class MediaPlatform:
    def __init__(
        self,
        settings: MediaPlatformSettings,
        on_event: Callable[[MediaEvent], None] | None = None,
        clock: Clock | None = None,
        on_health: Callable[[HealthChange], None] | None = None,
        on_pipeline_events: EventSink | None = None,
        vad: VadSettings | None = None,
    ) -> None:
        """on_health runs on the media thread, on_pipeline_events on the hot-loop thread (once
        per tick with that tick's events): hand off, do not block."""
        self.settings = settings
        self.clock = clock or MonotonicClock()
        try:
            self.network = settings.network()
        except ValueError as exc:
            raise MediaPlatformError(f"media network settings: {exc}") from exc
        self.control_stats = ControlStats()
        self.hot_loop = HotLoop(
            self.clock, sink=on_pipeline_events or (lambda events: None), vad=vad
        )
        # MediaPlatformHealthChanged: sampled on the media loop.
        self.health = PlatformHealth(
            self.clock,
            on_change=on_health,
            late_tick_share=LateTickShare(self.hot_loop.stats),
            overloaded_error=MediaPlatformOverloadedError,
        )
        # Encoders run here, off the media loop (libopus releases the GIL while it works).
        self._codec_executor = concurrent.futures.ThreadPoolExecutor(2, "codec")
        self._on_event = on_event or (lambda event: None)
        self._sessions: dict[str, LocalMediaSession] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the media thread and the hot loop; returns once the endpoint listens."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_media_thread, args=(ready,), name="media-loop", daemon=True
        )
        self._thread.start()
        try:
            ready.result(STARTUP_TIMEOUT_SECONDS)
        except Exception as exc:
            raise MediaPlatformError(f"media platform failed to start: {exc}") from exc
        self.hot_loop.start()

    def _run_media_thread(self, ready: concurrent.futures.Future[None]) -> None:
        loop = self._loop = _new_media_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except Exception as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        loop.run_forever()
        loop.run_until_complete(_drain(loop))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _serve(self) -> None:
        s = self.settings
        ssl_context = None
        if s.certificate_file:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(s.certificate_file, s.private_key_file)
        app = create_app(self, self.control_stats, s.control_hello_timeout_seconds)
        self._runner, _ = await serve(
            "media-control", app, s.bind_host, s.instance_internal_port, ssl_context, s.listener
        )
        self.bound_port = int(self._runner.addresses[0][1])
        self.health.attach(asyncio.get_running_loop())
        logger.info("MediaPlatform listening on %s:%d", s.bind_host, self.bound_port)

    def stop(self) -> None:
        """Close every session, stop the endpoint, the media thread and the hot loop."""
        self.hot_loop.stop()
        with self._lock:
            remaining = list(self._sessions)
        for session_id in remaining:  # flush recorders and the like of calls still up
            self._close_processors(session_id, self.hot_loop.remove(session_id))
        self.health.detach()
        loop, thread = self._loop, self._thread
        try:
            if loop is not None and loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                future.result(STARTUP_TIMEOUT_SECONDS)
        except Exception:
            logger.exception("MediaPlatform x shutdown did not finish cleanly")
        finally:
            if loop is not None and loop.is_running():
                loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(STARTUP_TIMEOUT_SECONDS)
            self._codec_executor.shutdown(wait=True)

    async def _shutdown(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            await session.close("platform shutdown")
        if self._runner is not None:
            await close_all(self._runner.app, "platform shutdown")
            await self._runner.cleanup()

    # -- sessions -----------------------------------------------------------------------------

    @property
    def mp_uri_base(self) -> str:
        port = self.settings.instance_public_port or self.bound_port
        return f"wss://{self.settings.service_fqdn}:{port}"

    def create_session(
        self,
        processors: Processors | None = None,
        options: MediaSessionOptions | None = None,
    ) -> LocalMediaSession:
        """Thread-safe. The processors run on the hot loop over the session's audio and video.
        Raises MediaPlatformOverloadedError while the machine is overloaded, and whatever a
        processor factory raises (the session is then not created)."""
        if not self.bound_port:
            raise MediaPlatformError("the media platform is not started")
        self.health.check_can_create_session()
        session = LocalMediaSession(
            self.mp_uri_base,
            self.clock,
            self._emit,
            options,
            self._codec_executor,
            self.network,
        )
        made = list(processors(session) if callable(processors) else processors or [])
        self.hot_loop.add(
            session.id,
            session.audio_socket,
            made,
            video_sockets=session.video_sockets,
            player=session.player,
        )
        with self._lock:
            self._sessions[session.id] = session
        return session

    def processors(self, session_id: str) -> list[Processor]:
        """A live session's processors (empty once it is closed)."""
        return self.hot_loop.processors(session_id)

    def session(self, session_id: str) -> LocalMediaSession | None:
        with self._lock:
            return self._sessions.get(session_id)

    async def close_session(self, session_id: str, reason: str = "") -> None:
        """Awaitable from any loop: closes the session on the media loop and forgets it."""
        with self._lock:
            session = self._sessions.pop(session_id, None)
        processors = self.hot_loop.remove(session_id)
        if processors:
            await asyncio.to_thread(self._close_processors, session_id, processors)
        if session is None or self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(session.close(reason), self._loop)
        await asyncio.wrap_future(future)

    @staticmethod
    def _close_processors(session_id: str, processors: list[Processor]) -> None:
        for error in close_processors(processors):
            logger.error(
                "MediaPlatform x session %s: processor close failed: %s", session_id, error
            )

    def _emit(self, event: MediaEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # the control side's bug must not break the media loop
            logger.exception("MediaPlatform x event handler failed for %s", event)
