"""The browser join page, end to end: headless Chromium with fake devices joins an emulated
meeting that a real bot is in (app-hosted media, mixed audio, a sendrecv video socket).

Chromium's fake microphone beeps and its fake camera shows a moving test card. The bot says a
steady tone back and echoes the camera it receives; the page measures the tone with a WebAudio
analyser and counts the video frames it decodes (window.joinState).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import ssl
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from bot.app import Bot
from bot.call import Call
from bot.devcerts import DevCerts
from bot.participants import RosterUpdate
from emulator import Emulator
from emulator.participant import Meeting, ParticipantScript
from media.frames import AudioFrame, VideoFrame
from media.session import MediaSessionOptions
from media.video import VideoSocket, VideoSocketSettings
from tests.conftest import TENANT_ID, emulator_config, settings_for
from tests.leaks import back_to_baseline, snapshot

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.async_api import Browser, Page, async_playwright

    MISSING = "" if CHROMIUM.exists() else "no /usr/bin/chromium (apt-get install chromium)"
except ImportError:
    MISSING = "the playwright module is not installed (pip install -e '.[dev]')"
needs_chromium = pytest.mark.skipif(bool(MISSING), reason=MISSING)

logger = logging.getLogger(__name__)

# verified-facts.md, "Chromium for browser tests": fake devices, no permission prompt, nothing
# fetched from the network. launch() gives every run a fresh temporary profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
NAME = "Pat Browser"
QUIET = "Quinn Quiet"
TONE_HZ = 440.0
TONE_AMPLITUDE = 8000  # int16: an RMS of 0.17 full scale
HEARD_RMS = 1000.0  # int16 RMS of a frame that carries the browser's beep (up to ~14000)
HEARD_FRAMES = 4  # a beep every 500 ms fills 2-4 frames over this
PAGE_LEVEL = 0.05  # the page's analyser RMS (0..1) that counts as hearing the bot
VIDEO_FRAMES = 10
TIMEOUT = 15.0
PAGE_TIMEOUT_MS = 15_000


def browser_meeting() -> Meeting:
    # A silent scripted participant: the bot's call needs someone on the media link to start.
    return Meeting(
        thread_id="19:meeting_YnJvd3Nlcg@thread.v2",
        organizer_id=str(uuid.UUID(int=1)),
        tenant_id=TENANT_ID,
        participants=[
            ParticipantScript(QUIET, str(uuid.UUID(int=3)), 0x51, "p-quiet", voice="silence")
        ],
        subject="Browser join test",
    )


class ToneAndListen:
    """Says a steady tone (what the page must hear) and counts the frames in which it heard the
    watched MSI with real energy (the browser's beep)."""

    name = "tone"

    def __init__(self) -> None:
        self.watch: int | None = None
        self.heard = 0
        self.loudest = 0.0  # the highest RMS heard from the watched MSI
        self.enough = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._samples = 0

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        if self.watch is not None and self.watch in frame.active_speakers:
            rms = float(np.sqrt(np.mean(np.square(frame.pcm, dtype=np.float64))))
            if rms > HEARD_RMS:
                self.heard += 1
                self.loudest = max(self.loudest, rms)
                if self.heard == HEARD_FRAMES:
                    self._loop.call_soon_threadsafe(self.enough.set)  # the hot loop's thread
        t = (self._samples + np.arange(320)) / 16_000
        self._samples += 320
        pcm = (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)
        return AudioFrame(pcm, frame.timestamp)


class RosterWatch:
    """Sets `present` when the named person is in the bot's roster, `gone` when they left."""

    def __init__(self, call: Call, name: str) -> None:
        self.name = name
        self.present = asyncio.Event()
        self.gone = asyncio.Event()
        call.events.on("participants", self._changed)

    def _changed(self, call: Call, update: RosterUpdate) -> None:
        here = any(p.display_name == self.name for p in call.participants.values())
        if here:
            self.present.set()
            self.gone.clear()
        elif self.present.is_set():
            self.gone.set()


@dataclasses.dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    listen: ToneAndListen
    browser: Browser


@pytest.fixture
async def rig(certs: DevCerts) -> AsyncIterator[Rig]:
    emulator = Emulator(emulator_config(certs, meetings=[browser_meeting()]))
    await emulator.start()
    listen = ToneAndListen()
    bot = Bot(settings_for(emulator, certs), processors=lambda ctx: [listen])
    try:
        await bot.start()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                yield Rig(emulator, bot, listen, browser)
            finally:
                await browser.close()
    finally:
        await bot.stop()
        await emulator.stop()


async def echo_video(socket: VideoSocket, msi: int, frames: list[VideoFrame]) -> None:
    """Keep the frames the bot receives on the socket and send each one back (the page's view of
    the bot), until cancelled; the socket's ring wakes us, no polling."""
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()
    socket.receive_ring.on_push = functools.partial(loop.call_soon_threadsafe, arrived.set)
    try:
        while True:
            arrived.clear()
            frame = socket.receive()
            if frame is None:
                await arrived.wait()
                continue
            if frame.msi == msi:
                frames.append(frame)
            socket.send(VideoFrame(frame.data, frame.width, frame.height, frame.timestamp))
    finally:
        socket.receive_ring.on_push = None


async def open_page(rig: Rig, meeting: Meeting) -> Page:
    context = await rig.browser.new_context(ignore_https_errors=True)  # the test CA
    page = await context.new_page()
    thread = urllib.parse.quote(meeting.thread_id, safe="")
    await page.goto(f"{rig.emulator.base_url}/meetings/{thread}/join")
    return page


async def join(page: Page, name: str) -> None:
    await page.fill("#name", name)
    await page.click("#join")


ROSTER_SHOWS_SPEAKERS = """([name, quiet]) => {
    const items = [...document.querySelectorAll("#roster li")];
    const you = items.find((li) => li.dataset.kind === "you");
    const bot = items.find((li) => li.dataset.kind === "bot");
    const other = items.find((li) => li.textContent.startsWith(quiet));
    return Boolean(you && bot && other) && you.textContent.startsWith(name)
        && you.classList.contains("speaking") && bot.classList.contains("speaking")
        && !other.classList.contains("speaking");
}"""


@needs_chromium
async def test_a_person_joins_from_chromium_and_meets_the_bot(rig: Rig) -> None:
    emulator, bot, listen = rig.emulator, rig.bot, rig.listen
    meeting = emulator.config.meetings[0]
    sockets = (VideoSocketSettings("sendrecv"),)
    # Delta roster: each join and leave arrives as the changed entry alone.
    call = await bot.join(
        emulator.join_url(meeting),
        delta_roster=True,
        media_options=MediaSessionOptions(video_sockets=sockets),
    )
    await call.wait_for("established", TIMEOUT)
    emulated = emulator.calls[call.id]
    link = emulated.link
    session = bot.media_session(call)
    assert link is not None and session is not None
    roster = RosterWatch(call, NAME)

    page = await open_page(rig, meeting)
    # Before the join: what the process holds with the bot in the meeting and the page loaded.
    # Thread pools grow on demand and keep their threads, which is not a leak: the default
    # executors of the emulator's loop (asyncio) and the bot's media loop (uvloop), and the bot's
    # codec pool (it starts encoding when it echoes the camera).
    baseline = snapshot()
    pools = Counter(asyncio=32, uvloop=32, codec=2)
    baseline = dataclasses.replace(baseline, threads=baseline.threads + pools)
    await join(page, NAME)

    # The bot's roster names the person, with an audio and a camera MSI.
    await asyncio.wait_for(roster.present.wait(), TIMEOUT)
    person = next(p for p in call.participants.values() if p.display_name == NAME)
    (audio_msi,), (video_msi,) = person.msis("audio"), person.msis("video")
    assert "guest" in person.identity

    # (a) The bot hears the browser's microphone: its MSI among the mix's active speakers, with
    # the energy of the beep.
    listen.watch = audio_msi
    await asyncio.wait_for(listen.enough.wait(), TIMEOUT)

    # (b) The bot sees the browser's camera on the socket it subscribed to the person's video.
    socket = session.video_sockets[0]
    if socket.receive_status != "active":
        await bot.wait_media_event(lambda e: socket.receive_status == "active", TIMEOUT)
    received: list[VideoFrame] = []
    echo = asyncio.create_task(echo_video(socket, video_msi, received))
    try:
        socket.subscribe(video_msi, "sd360p")
        # (c) The page hears the bot's tone and sees the echoed camera.
        await page.wait_for_function(
            f"""() => window.joinState.botAudioLevel > {PAGE_LEVEL}
                && window.joinState.botVideoFrames >= {VIDEO_FRAMES}""",
            timeout=PAGE_TIMEOUT_MS,
            polling=100,
        )
        # (d) The roster on the page: the person (speaking: the beep), the bot (speaking: the
        # tone) and the silent scripted participant (not speaking).
        await page.wait_for_function(
            ROSTER_SHOWS_SPEAKERS, arg=[NAME, QUIET], timeout=PAGE_TIMEOUT_MS, polling=100
        )
        state = await page.evaluate("window.joinState")
    finally:
        echo.cancel()
        await asyncio.gather(echo, return_exceptions=True)

    assert len(received) >= VIDEO_FRAMES
    sizes = {(f.width, f.height) for f in received}
    assert sizes == {(640, 360)}, sizes
    luma = received[-1].data.reshape(-1)[: 640 * 360]
    assert luma.std() > 10  # a picture, not a flat frame
    assert state["connection"] == "connected" and state["phase"] == "joined"
    assert state["participantId"] == person.id
    assert state["sentAudioPackets"] > 0 and state["sentVideoFrames"] > 0
    logger.info(
        "bot heard the beep in %d frames (RMS up to %.0f); it got %d camera frames %s; the "
        "page's bot audio level %.3f (peak %.3f), %d bot video frames %s",
        listen.heard,
        listen.loudest,
        len(received),
        sizes,
        state["botAudioLevel"],
        state["botAudioPeakLevel"],
        state["botVideoFrames"],
        state["botVideoSize"],
    )

    # (e) Leave: the bot's roster loses the person, and the emulator keeps nothing of theirs.
    await page.click("#leave")
    await asyncio.wait_for(roster.gone.wait(), TIMEOUT)
    await page.wait_for_function("() => window.joinState.phase === 'left'", timeout=5000)
    assert emulator.browsers.sessions == {}
    assert all(p.display_name != NAME for p in meeting.participants)
    assert all(p.msi != audio_msi for p in link.participants)
    assert link.audio_taps == [] and link.video_taps == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("browser:")]
    await back_to_baseline(baseline)

    # Closing the page without Leave ends the same way.
    page = await open_page(rig, meeting)
    closing = RosterWatch(call, "Closing Tab")
    await join(page, "Closing Tab")
    await asyncio.wait_for(closing.present.wait(), TIMEOUT)
    await page.context.close()
    await asyncio.wait_for(closing.gone.wait(), TIMEOUT)
    assert emulator.browsers.sessions == {}
    await call.hang_up()
    await call.wait_for("terminated", TIMEOUT)


def page_url(emulator: Emulator, thread_id: str, what: str = "join") -> str:
    return f"{emulator.base_url}/meetings/{urllib.parse.quote(thread_id, safe='')}/{what}"


async def test_the_page_is_served_for_known_meetings_only(
    emulator: Emulator, client_ssl: ssl.SSLContext
) -> None:
    meeting = emulator.config.meetings[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(page_url(emulator, meeting.thread_id), ssl=client_ssl) as page:
            assert page.status == 200
            assert "/static/join.js" in await page.text()
            assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
        async with http.get(f"{emulator.base_url}/static/join.js", ssl=client_ssl) as script:
            assert script.status == 200
        # The folder's other page (the loopback-only status page) is not served here.
        async with http.get(f"{emulator.base_url}/static/status.html", ssl=client_ssl) as other:
            assert other.status == 404
        async with http.get(page_url(emulator, "19:nope@thread.v2"), ssl=client_ssl) as missing:
            assert missing.status == 404


async def test_the_socket_takes_a_join_from_the_page_origin_only(
    emulator: Emulator, client_ssl: ssl.SSLContext
) -> None:
    url = page_url(emulator, emulator.config.meetings[0].thread_id, "ws")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, ssl=client_ssl, origin="https://elsewhere.example")
        assert refused.value.status == 403
        for first, error in [
            ({"type": "hello"}, "the first message must be a join"),
            ({"type": "join", "sdp": "v=0\r\n"}, "needs an SDP offer with audio"),
            ({"type": "join", "sdp": "v=0\r\nm=audio x\r\n"}, "the offer was not accepted"),
        ]:
            async with http.ws_connect(url, ssl=client_ssl) as ws:
                await ws.send_json(first)
                reply = await ws.receive_json(timeout=TIMEOUT)
                assert reply["type"] == "error" and error in reply["message"], reply
                assert (await ws.receive(timeout=TIMEOUT)).type == aiohttp.WSMsgType.CLOSE
    assert emulator.browsers.sessions == {}
