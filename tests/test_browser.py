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
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from bot.app import Bot
from bot.call import Call
from bot.devcerts import DevCerts
from bot.participants import RosterUpdate
from emulator import Emulator
from emulator.browsermedia import BotVideo
from emulator.participant import Meeting, ParticipantScript
from emulator.server import AppRegistration
from media.frames import AudioFrame, VideoFrame
from media.session import MediaSessionOptions
from media.video import VideoSocket, VideoSocketSettings
from tests.conftest import APP_ID, APP_SECRET, TENANT_ID, emulator_config, settings_for
from tests.leaks import back_to_baseline, snapshot

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.async_api import Browser, Page, async_playwright

    MISSING = "" if CHROMIUM.exists() else "no /usr/bin/chromium (apt-get install chromium)"
except ImportError:
    MISSING = "the playwright module is not installed (pip install -e '.[dev]')"
needs_chromium = pytest.mark.skipif(bool(MISSING), reason=MISSING)

logger = logging.getLogger(__name__)

# Chromium's fake devices, no permission prompt, nothing
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
SECOND = "Sam Second"
QUIET = "Quinn Quiet"
BOT_NAME = "Echo Bot"  # the app registration's display name: what Graph names the bot
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
    app = AppRegistration(APP_ID, APP_SECRET, TENANT_ID, display_name=BOT_NAME)
    emulator = Emulator(emulator_config(certs, apps={APP_ID: app}, meetings=[browser_meeting()]))
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


async def join_with_video(rig: Rig) -> tuple[Call, VideoSocket]:
    """The bot joins the meeting with one sendrecv video socket (it echoes what it receives)."""
    meeting = rig.emulator.config.meetings[0]
    call = await rig.bot.join(
        rig.emulator.join_url(meeting),
        delta_roster=True,  # each join and leave arrives as the changed entry alone
        media_options=MediaSessionOptions(video_sockets=(VideoSocketSettings("sendrecv"),)),
    )
    await call.wait_for("established", TIMEOUT)
    session = rig.bot.media_session(call)
    assert session is not None
    socket = session.video_sockets[0]
    if socket.receive_status != "active":
        await rig.bot.wait_media_event(lambda e: socket.receive_status == "active", TIMEOUT)
    return call, socket


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
    emulator, listen = rig.emulator, rig.listen
    meeting = emulator.config.meetings[0]
    call, socket = await join_with_video(rig)
    link = emulator.calls[call.id].link
    assert link is not None
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


# The bot tile as the person sees it: the video element drawn onto a canvas, its luma (Rec. 601
# weights) mean and spread. A black tile, or one with no frame yet, is mean ~0 and spread ~0;
# Chromium's fake camera, which the bot echoes, is a green test card with a moving pie.
TILE_PIXELS = """() => {
    const video = document.getElementById("bot-video");
    const out = {width: video.videoWidth, height: video.videoHeight, mean: 0, spread: 0,
        played: video.getVideoPlaybackQuality().totalVideoFrames};
    if (!video.videoWidth) return out;
    const canvas = document.createElement("canvas");
    canvas.width = 64;
    canvas.height = 36;
    const context = canvas.getContext("2d", {willReadFrequently: true});
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0, squares = 0;
    for (let i = 0; i < data.length; i += 4) {
        const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
        sum += y;
        squares += y * y;
    }
    const n = data.length / 4;
    out.mean = sum / n;
    out.spread = Math.sqrt(Math.max(0, squares / n - out.mean * out.mean));
    return out;
}"""
TILE_MEAN = 40.0  # the echoed test card is ~90 (green), a black frame ~0
TILE_SPREAD = 8.0  # the pie and the corner marks on it: ~15-35
ROSTER_ITEMS = """() => [...document.querySelectorAll("#roster li")].map((li) => ({
    kind: li.dataset.kind, text: li.textContent,
    msi: li.querySelector(".msi")?.textContent ?? null}))"""


async def tile_shows_video(page: Page) -> dict[str, float]:
    """Wait until the bot tile shows a picture, not black; returns what it measured."""
    await page.wait_for_function(
        f"""() => {{ const t = ({TILE_PIXELS})();
            return window.joinState.botVideoPlaying && t.mean > {TILE_MEAN}
                && t.spread > {TILE_SPREAD}; }}""",
        timeout=PAGE_TIMEOUT_MS,
        polling=200,
    )
    measured: dict[str, float] = await page.evaluate(TILE_PIXELS)
    return measured


@needs_chromium
async def test_two_people_see_the_bot_by_name_and_a_leave_updates_every_roster(rig: Rig) -> None:
    emulator = rig.emulator
    meeting = emulator.config.meetings[0]
    call, socket = await join_with_video(rig)
    first, second = RosterWatch(call, NAME), RosterWatch(call, SECOND)
    page, other = await open_page(rig, meeting), await open_page(rig, meeting)
    await join(page, NAME)
    await join(other, SECOND)
    await asyncio.wait_for(first.present.wait(), TIMEOUT)
    await asyncio.wait_for(second.present.wait(), TIMEOUT)
    person = next(p for p in call.participants.values() if p.display_name == NAME)
    (audio_msi,), (video_msi,) = person.msis("audio"), person.msis("video")

    # The bot as Graph names it in the bot's own roster: the app registration's display name.
    me = call.participants[call.resource["myParticipantId"]]
    assert me.display_name == BOT_NAME, me.identity

    received: list[VideoFrame] = []
    echo = asyncio.create_task(echo_video(socket, video_msi, received))
    try:
        socket.subscribe(video_msi, "sd360p")
        # Both pages see the bot's video (the first person's camera, echoed): a picture.
        tiles = [await tile_shows_video(p) for p in (page, other)]
    finally:
        echo.cancel()
        await asyncio.gather(echo, return_exceptions=True)
    for tile in tiles:
        assert (tile["width"], tile["height"]) == (640, 360), tile

    for p in (page, other):
        # The bot by its name, in the roster and under its tile.
        items = await p.evaluate(ROSTER_ITEMS)
        bots = [i for i in items if i["kind"] == "bot"]
        assert len(bots) == 1 and bots[0]["text"].startswith(f"{BOT_NAME} (bot"), items
        assert await p.text_content("#bot-name") == BOT_NAME
        assert (await p.evaluate("window.joinState.videoFrom")) == me.id
        # MSIs in decimal, the same numbers as the mediaStreams of the bot's Graph roster.
        shown = next(i for i in items if i["text"].startswith(NAME))
        assert shown["msi"] == f"MSI audio {audio_msi}, video {video_msi}", items
        assert not any("0x" in i["text"].lower() for i in items), items
    state = await other.evaluate("window.joinState")
    entry = next(e for e in state["roster"] if e["id"] == person.id)
    assert entry["streams"] == [
        {"mediaType": "audio", "sourceId": str(audio_msi)},
        {"mediaType": "video", "sourceId": str(video_msi)},
    ]

    # Leave: the bot's Graph roster loses the person (a roster notification) ...
    await page.click("#leave")
    await asyncio.wait_for(first.gone.wait(), TIMEOUT)
    assert second.present.is_set() and not second.gone.is_set()
    # ... the page still in the meeting drops them from its roster ...
    await other.wait_for_function(
        """([gone, name]) => {
            const items = [...document.querySelectorAll("#roster li")];
            return items.some((li) => li.dataset.kind === "you" && li.textContent.startsWith(name))
                && !items.some((li) => li.textContent.startsWith(gone));
        }""",
        arg=[NAME, SECOND],
        timeout=PAGE_TIMEOUT_MS,
        polling=100,
    )
    # ... and the leaver's page says it left and shows no roster: the emulator's "left" comes
    # after every state push, so nothing it sent later can bring the old roster back.
    await page.wait_for_function(
        "() => window.joinState.leftReason === 'left'", timeout=PAGE_TIMEOUT_MS
    )
    left = await page.evaluate("window.joinState")
    assert left["phase"] == "left" and left["roster"] == [], left
    assert await page.evaluate(ROSTER_ITEMS) == []
    assert (await page.text_content("#status") or "").startswith("Left the meeting")
    assert not left["botVideoPlaying"]
    logger.info("bot tiles %s; %d camera frames echoed", tiles, len(received))
    await call.hang_up()
    await call.wait_for("terminated", TIMEOUT)


def bot_frame(pts: int, luma: int) -> av.VideoFrame:
    """A decoded frame as the emulator's link hands it to the taps: yuv420p, the bot's pts."""
    frame = av.VideoFrame.from_ndarray(np.full((36 * 3 // 2, 64), luma, np.uint8), "yuv420p")
    frame.pts, frame.time_base = pts, Fraction(1, 90_000)
    return frame


async def test_the_page_gets_its_own_copy_of_each_bot_frame_on_its_own_rising_clock() -> None:
    now = [100.0]
    video = BotVideo(clock=lambda: now[0])
    try:
        shared = bot_frame(900_000, 200)
        video.put("bot-a", shared)
        out = await asyncio.wait_for(video.recv(), TIMEOUT)
        # A copy: what aiortc's encoder does to the frame it encodes (PyAV rebases its pts and
        # time base, a key frame request sets pict_type) leaves the link's frame alone.
        assert out is not shared and np.array_equal(out.to_ndarray(), shared.to_ndarray())
        assert (out.pts, out.time_base) == (0, Fraction(1, 90_000))
        out.pts, out.time_base = 10_000_000, Fraction(1, 1_000_000)
        assert (shared.pts, shared.time_base) == (900_000, Fraction(1, 90_000))

        now[0] += 0.040
        video.put("bot-a", bot_frame(903_600, 200))
        assert (await asyncio.wait_for(video.recv(), TIMEOUT)).pts == 3_600
        # Another bot's frame while the first is on screen is not shown.
        now[0] += 0.040
        video.put("bot-b", bot_frame(0, 50))
        video.put("bot-a", bot_frame(907_200, 200))
        assert (await asyncio.wait_for(video.recv(), TIMEOUT)).pts == 7_200
        # After a pause the other bot takes over. Its pts start again at 0 (aiortc's receiver
        # counts them from 0 for each stream); the page's go on from the arrival times.
        now[0] += 1.5
        video.put("bot-b", bot_frame(0, 50))
        taken = await asyncio.wait_for(video.recv(), TIMEOUT)
        assert video.owner == "bot-b" and taken.pts == round(1.58 * 90_000)
        assert int(taken.to_ndarray()[0, 0]) == 50
        # Two frames within one clock tick still get rising pts.
        video.put("bot-b", bot_frame(3_000, 50))
        assert (await asyncio.wait_for(video.recv(), TIMEOUT)).pts == taken.pts + 1
        assert video.frames == 5
    finally:
        video.stop()
