"""Media faults: the emulator's impairment of the packets to the bot (random and bursty loss,
jitter, reordering, blackouts), its media processor vanishing mid-call, and how the bot takes
each one.

The impairment core is pure and seeded, so its unit tests assert exact patterns and rates. The
bot-against-emulator tests run real aiortc peers on both sides over loopback TLS and DTLS-SRTP:
each sets a knob mid-call through the admin API, checks the bot's audio socket while it is on
and after it is off against the emulator's ground truth (what the participant said, tick by
tick), and ends with every task, thread and socket back to the baseline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import math
import ssl
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from bot.app import Bot
from bot.call import Call
from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.calls import MEDIA_LOST
from emulator.impairment import (
    BurstLoss,
    Fate,
    ImpairedPath,
    Impairer,
    Impairment,
    ImpairmentCounts,
)
from emulator.mediaprocessor import MediaProcessorLink
from emulator.odata import BadRequest
from media.clock import TICKS_PER_SECOND
from media.frames import AudioFrame
from media.jitter import (
    MAX_CONCEALED_RUN,
    MIN_WAIT_SECONDS,
    UNDERRUN_GRACE_SECONDS,
    JitterBuffer,
)
from media.session import LOST_DETAIL
from tests.conftest import SPEAKER_MSI, emulator_config, settings_for
from tests.leaks import Resources, back_to_baseline, snapshot
from tests.test_media_meeting import best_correlation

logger = logging.getLogger(__name__)  # measured figures: pytest --log-cli-level=INFO

FRAME = 0.020
PACKETS = 20_000  # per statistical unit test: rates to within about 1 %

# ---------------------------------------------------------------------------------------------
# The impairment core


def fates(impairer: Impairer, n: int, step: float = FRAME) -> list[tuple[Fate, float]]:
    return [impairer.decide(i * step) for i in range(n)]


def test_parse_takes_the_documented_keys_and_round_trips() -> None:
    body = {
        "lossRate": 0.02,
        "burst": {"pGoodToBad": 0.05, "pBadToGood": 0.5},
        "delayMs": 10,
        "jitterMs": 30,
        "jitterDistribution": "normal",
        "reorderRate": 0.1,
        "reorderDelayMs": 45,
        "blackouts": [{"startSeconds": 2, "durationSeconds": 1.5}],
        "seed": 7,
    }
    impairment = Impairment.parse(body)
    assert impairment.burst == BurstLoss(0.05, 0.5, 1.0, 0.0)
    assert impairment.blackouts[0].covers(3.4) and not impairment.blackouts[0].covers(3.5)
    assert Impairment.parse(impairment.to_json()) == impairment
    assert Impairment.parse({}).clean


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"lossRate": 1.5}, "lossRate must be a probability"),
        ({"lossRate": True}, "lossRate must be a probability"),
        ({"loss": 0.1}, "Unknown impairment key(s): loss"),
        ({"burst": {"pGoodToBad": 0.1}}, "burst.pBadToGood is required"),
        ({"burst": {"pGoodToBad": 0.1, "pBadToGood": 0.5, "k": 1}}, "Unknown burst key(s): k"),
        ({"jitterMs": -1}, "jitterMs must be a number from 0 to 2000"),
        ({"jitterDistribution": "pareto"}, "jitterDistribution must be uniform or normal"),
        ({"reorderRate": 0.1}, "reorderRate needs a reorderDelayMs"),
        ({"blackouts": [{"startSeconds": 1}]}, "needs startSeconds and durationSeconds"),
        ({"blackouts": {"startSeconds": 1}}, "blackouts must be a list"),
        ({"seed": "x"}, "seed must be an integer"),
    ],
)
def test_parse_refuses_bad_input_with_the_key_named(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        Impairment.parse(body)
    assert message in str(caught.value)


def test_a_seed_gives_one_pattern_and_each_knob_draws_on_its_own() -> None:
    lossy = Impairment(loss_rate=0.1, seed=5)
    first = fates(Impairer(lossy), 2000)
    assert fates(Impairer(lossy), 2000) == first
    assert fates(Impairer(Impairment(loss_rate=0.1, seed=6)), 2000) != first
    # Turning jitter on leaves the loss pattern as it was (the knobs have their own streams).
    jittery = fates(Impairer(Impairment(loss_rate=0.1, jitter_ms=40, seed=5)), 2000)
    assert [f is Fate.LOST for f, _ in jittery] == [f is Fate.LOST for f, _ in first]


def test_random_loss_hits_its_rate_independently() -> None:
    out = fates(Impairer(Impairment(loss_rate=0.1, seed=1)), PACKETS)
    lost = [f is Fate.LOST for f, _ in out]
    assert sum(lost) / PACKETS == pytest.approx(0.1, abs=0.01)
    # Bernoulli: the chance that the next is lost too is the rate itself, not more.
    after_loss = [b for a, b in zip(lost, lost[1:], strict=False) if a]
    assert sum(after_loss) / len(after_loss) == pytest.approx(0.1, abs=0.02)


def test_gilbert_elliott_bursts_have_the_models_rate_and_lengths() -> None:
    # 10 % loss in bursts of 4 on average: p = r * 0.1 / 0.9 with r = 1/4.
    burst = BurstLoss(p_good_to_bad=0.25 / 9, p_bad_to_good=0.25)
    assert burst.loss_rate == pytest.approx(0.1) and burst.mean_bad_packets == 4
    out = fates(Impairer(Impairment(burst=burst, seed=3)), PACKETS)
    lost = [f is Fate.BURST_LOST for f, _ in out]
    assert sum(lost) / PACKETS == pytest.approx(0.1, abs=0.015)
    runs = [len(run) for run in "".join("x" if x else "." for x in lost).split(".") if run]
    assert statistics.mean(runs) == pytest.approx(4, rel=0.1)
    # Geometric lengths: many single losses, and bursts well past the mean.
    assert Counter(runs)[1] > len(runs) / 5 and max(runs) >= 12
    # Against random loss at the same rate, losses cluster: P(lost | previous lost) is high.
    after_loss = [b for a, b in zip(lost, lost[1:], strict=False) if a]
    assert sum(after_loss) / len(after_loss) == pytest.approx(0.75, abs=0.03)


def test_a_blackout_drops_exactly_its_window_rtp_and_rtcp() -> None:
    impairer = Impairer(
        Impairment.parse({"blackouts": [{"startSeconds": 1.0, "durationSeconds": 0.5}]})
    )
    out = fates(impairer, 200, step=0.01)
    dropped = [i for i, (f, _) in enumerate(out) if f is Fate.BLACKED_OUT]
    assert dropped == list(range(100, 150))  # 1.00 s inclusive to 1.50 s exclusive
    assert all(f is Fate.SENT for f, _ in out[:100] + out[150:])
    assert impairer.blacked_out(1.0) and impairer.blacked_out(1.4999)
    assert not impairer.blacked_out(0.9999) and not impairer.blacked_out(1.5)


def test_jitter_delays_stay_in_their_distribution() -> None:
    uniform = fates(Impairer(Impairment(delay_ms=10, jitter_ms=40, seed=2)), PACKETS)
    delays = [d for _, d in uniform]
    assert min(delays) >= 0.010 and max(delays) <= 0.050
    assert statistics.mean(delays) == pytest.approx(0.030, abs=0.001)
    normal = fates(Impairer(Impairment(jitter_ms=20, jitter_distribution="normal")), PACKETS)
    # Half-normal with sigma 20 ms: mean sigma * sqrt(2 / pi).
    assert statistics.mean(d for _, d in normal) == pytest.approx(0.020 * 0.7979, rel=0.03)
    assert all(fate is Fate.DELAYED for fate, delay in normal if delay > 0)


def test_reordering_holds_back_its_share_so_later_packets_overtake() -> None:
    out = fates(Impairer(Impairment(reorder_rate=0.1, reorder_delay_ms=50, seed=4)), PACKETS)
    held = [i for i, (f, _) in enumerate(out) if f is Fate.REORDERED]
    assert len(held) / PACKETS == pytest.approx(0.1, abs=0.01)
    assert all(out[i][1] == pytest.approx(0.050) for i in held)
    # Sent every 20 ms, packet i leaves at i * 20 ms + delay: order by departure.
    departures = sorted(range(PACKETS), key=lambda i: (i * FRAME + out[i][1], i))
    overtaken = sum(1 for pos, i in enumerate(departures) if pos != i)
    assert overtaken > len(held)  # each held one is passed by the next two or so


def test_the_loss_shorthand_maps_onto_the_impairment() -> None:
    """EmulatorConfig.media_loss_rate/seed (tests/test_media_loss.py) is random loss alone;
    media_impairment, when given, is used instead."""
    blob = {"mpUri": "wss://localhost/MediaProcessor/1", "mpMediaSessionId": "1", "token": "t"}
    assert MediaProcessorLink(blob, None, 0.1, 3).impairment == Impairment(loss_rate=0.1, seed=3)
    given = Impairment(jitter_ms=20)
    assert MediaProcessorLink(blob, None, 0.1, 3, impairment=given).impairment is given


async def test_the_path_sends_delayed_packets_in_due_order_and_close_drops_the_rest() -> None:
    """ImpairedPath on the loop: timers and one pump task, no task per packet; what is still
    held at close() goes nowhere and the pump ends."""
    sent: list[int] = []
    arrived = asyncio.Event()

    async def send(data: bytes) -> None:
        sent.append(data[1])
        if len(sent) == 8:
            arrived.set()

    path = ImpairedPath(send, Impairment(), lambda: 0.0)
    packet = bytes(12)
    # Eight packets delayed by hand-picked amounts: they must leave in due order.
    delays = [0.05, 0.01, 0.03, 0.02, 0.04, 0.0, 0.06, 0.015]
    for i, delay in enumerate(delays):
        path.set(Impairment(delay_ms=delay * 1000))
        await path.send(bytes([0, i]) + packet[2:])
    await asyncio.wait_for(arrived.wait(), 5)
    assert sent == sorted(range(8), key=lambda i: delays[i])
    assert path.counts.delayed == 7 and path.counts.sent == 1
    # What the receiver sees: every packet that left after a later one of its SSRC.
    assert path.counts.out_of_order == 6
    tasks_before = len(asyncio.all_tasks())
    path.set(Impairment(delay_ms=500))
    for i in range(5):
        await path.send(bytes([0, 100 + i]) + packet[2:])
    assert len(asyncio.all_tasks()) == tasks_before  # held on timers, not on tasks
    await path.close()
    assert sent[8:] == [] and len(asyncio.all_tasks()) == tasks_before - 1


async def test_the_path_is_bounded() -> None:
    async def send(data: bytes) -> None:
        pass

    path = ImpairedPath(send, Impairment(delay_ms=1000), lambda: 0.0, max_held=10)
    for _ in range(15):
        await path.send(bytes(12))
    assert path.counts.delayed == 15 and path.counts.overflow == 5
    assert path.counts.dropped == 5
    await path.close()


# ---------------------------------------------------------------------------------------------
# The bot's jitter buffer playing out a continuous stream (pure)


def test_a_continuous_stream_plays_a_blackout_out_on_time() -> None:
    """Mixed audio stops for 200 ms: the slots are played out as they fall due (concealed, then
    silent), not in one burst when packets return; the packets of the slots played are late."""
    jb = JitterBuffer(continuous=True)
    for i in range(10):
        jb.add(i, i * 960, b"p", (7,), i * FRAME)
    out = []
    now = 9 * FRAME
    while now < 0.45:  # the loop timer's job: expire() at each deadline
        deadline = jb.deadline
        assert deadline is not None
        now = deadline
        out.append((now, jb.expire(now)))
    played = [(t, r) for t, rs in out for r in rs]
    assert [r.seq for _, r in played] == list(range(10, 10 + len(played)))
    # Slot k is due at k * 20 ms; it is played out no later than the grace after that.
    for t, r in played:
        assert r.seq * FRAME <= t <= r.seq * FRAME + UNDERRUN_GRACE_SECONDS + 1e-9
    assert [r.payload is None and not r.silent for _, r in played[:MAX_CONCEALED_RUN]] == [
        True
    ] * MAX_CONCEALED_RUN
    assert all(r.silent and r.csrc == () for _, r in played[MAX_CONCEALED_RUN:])
    # Packets resume at slot 25 (0.5 s): those for slots already played are late.
    last = played[-1][1].seq
    resumed = []
    for seq in range(last - 1, last + 4):
        resumed += jb.add(seq, seq * 960, b"q", (7,), 0.5)
    assert jb.stats.late == 2
    assert [r.seq for r in resumed] == list(range(last + 1, last + 4))


def play(jb: JitterBuffer, arrivals: list[tuple[float, int]]) -> list[int]:
    """Feed (arrival time, seq) in time order, running expire() at each deadline as the loop
    timer would; the slots released, in order."""
    out = []
    for now, seq in sorted(arrivals):
        while (deadline := jb.deadline) is not None and deadline <= now:
            out += jb.expire(deadline)
        out += jb.add(seq, seq * 960, b"p", (7,), now)
    return [r.seq for r in out if r.payload is not None]


def test_the_wait_learns_from_a_reordered_packet_that_came_too_late() -> None:
    """Every 10th packet held back 30 ms: it arrives 10 ms after the next one. The RFC 3550
    jitter hardly moves, so the first such packet finds its slot concealed; from then on the
    wait covers it and they are all put back in order."""
    arrivals = [(seq * FRAME + (0.030 if seq % 10 == 5 else 0.0), seq) for seq in range(200)]
    jb = JitterBuffer(continuous=True)
    played = play(jb, arrivals)
    assert jb.stats.late == 1 and jb.stats.concealed == 1
    assert played == [seq for seq in range(200) if seq != 5]
    assert 0.010 < jb.stats.wait_seconds < 0.030


def test_a_stream_that_may_pause_is_not_played_out() -> None:
    jb = JitterBuffer()  # unmixed streams: a quiet stream sends nothing
    jb.add(0, 0, b"p", (7,), 0.0)
    assert jb.deadline is None and jb.expire(10.0) == []


# ---------------------------------------------------------------------------------------------
# The bot against the emulator

E2E = pytest.mark.asyncio(loop_scope="module")  # one emulator and one bot for these tests
MEDIA_LOST_TIMEOUT = 0.5  # the bot's own hang-up after its media is lost (a setting)
MAX_FRAMES = 2000


class Collect:
    """The bot's processor: keeps the frames the hot loop delivers and wakes the test when one
    captured at (or after) a given media time has arrived."""

    name = "collect"

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.until_ticks: int | None = None
        self.reached = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        if len(self.frames) < MAX_FRAMES:
            self.frames.append(frame)
        until = self.until_ticks
        if until is not None and frame.original_sender_timestamp >= until:
            self.until_ticks = None
            self._loop.call_soon_threadsafe(self.reached.set)  # the hot loop's own thread
        return None


@dataclass
class Joined:
    call: Call
    link: MediaProcessorLink
    start: float  # the link's media time 0, time.monotonic()
    collect: Collect

    def ticks(self, media_seconds: float) -> int:
        return round((self.start + media_seconds) * TICKS_PER_SECOND)

    def media_time(self, ticks: int) -> float:
        return ticks / TICKS_PER_SECOND - self.start

    async def until(self, media_seconds: float) -> None:
        """Until the bot has delivered the frame captured at this media time."""
        self.collect.reached.clear()
        self.collect.until_ticks = self.ticks(media_seconds)
        await asyncio.wait_for(self.collect.reached.wait(), 10)


@dataclass
class Rig:
    emulator: Emulator
    bot: Bot
    http: aiohttp.ClientSession
    client_ssl: ssl.SSLContext
    collect: Collect | None = None

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.emulator.base_url}/emulator{path}", json=body, ssl=self.client_ssl
        ) as response:
            return response.status, (await response.json() if response.status != 204 else None)

    async def join(self) -> Joined:
        self.collect = collect = Collect()
        meeting = self.emulator.config.meetings[0]
        call = await self.bot.join(self.emulator.join_url(meeting))
        await call.wait_for("established", 15)
        link = self.emulator.calls[call.id].link
        assert link is not None and link.media_start is not None
        joined = Joined(call, link, link.media_start, collect)
        await joined.until(0.2)  # audio flows
        return joined

    async def end(self, joined: Joined) -> None:
        """Hang up (unless the call already ended) and wait until the bot let go of it."""
        if joined.call.state != "terminated":
            await joined.call.hang_up()
            await joined.call.wait_for("terminated", 10)
        await self.bot.calls.idle()
        await self.released(joined.call)

    async def released(self, call: Call) -> None:
        """The bot forgets the session in the first step of the task `terminated` starts: a
        few loop iterations after the call ended, not a matter of time."""
        assert call.media_session_id is not None
        for _ in range(20):
            if self.bot.media.session(call.media_session_id) is None:
                return
            await asyncio.sleep(0)  # one loop iteration
        raise AssertionError("the media session was not released")


def settle() -> Resources:
    """The baseline (each test starts after the previous one's call was released and its
    leak check passed, so nothing is left closing)."""
    gc.collect()
    return snapshot()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(certs: DevCerts) -> AsyncIterator[Rig]:
    emulator = Emulator(emulator_config(certs))
    await emulator.start()
    holder: list[Rig] = []
    settings = settings_for(emulator, certs).replace(media_lost_timeout_seconds=MEDIA_LOST_TIMEOUT)
    bot = Bot(settings, processors=lambda ctx: [holder[0].collect] if holder[0].collect else [])
    # These tests are about faults, not admission control (tests/test_health.py): a machine
    # loaded by other work must not make this long-lived bot refuse its next call.
    monitor = bot.media.health.monitor
    monitor.thresholds = dataclasses.replace(
        monitor.thresholds,
        cpu_overloaded=math.inf,
        loop_lag_overloaded_ms=math.inf,
        late_tick_overloaded=math.inf,
    )
    await bot.start()
    http = aiohttp.ClientSession()
    rig = Rig(emulator, bot, http, ssl.create_default_context(cafile=certs.ca_file))
    holder.append(rig)
    try:
        # Warm-up: the first call starts thread pools that live on (leaks.py), and the admin
        # client's keep-alive connection is opened, as every test opens it.
        joined = await rig.join()
        status, _ = await rig.admin("GET", f"/calls/{joined.call.id}/media/impairment")
        assert status == 200
        await rig.end(joined)
        yield rig
    finally:
        await http.close()
        await bot.stop()
        await emulator.stop()


def on_grid(joined: Joined, frames: list[Any]) -> list[tuple[int, Any]]:
    """(tick, frame): tick k is the 20 ms captured from media time k * 20 ms on."""
    return [(round(joined.media_time(f.original_sender_timestamp) / FRAME), f) for f in frames]


@dataclass
class Run:
    """One call with an impairment on between media times `on` and `off`."""

    joined: Joined
    on: float
    off: float
    counts: dict[str, int]  # what the emulator did to the packets meanwhile (admin API)
    stats: dict[str, int]  # the bot's session figures at the end
    stats_at_off: dict[str, int]  # ... when the impairment was lifted
    grid: list[tuple[int, Any]]  # (tick, frame) of everything the bot's audio socket delivered
    truth: dict[int, np.ndarray]  # tick -> what the participant said

    def window(self, frames: list[tuple[int, Any]], margin: float = 0.0) -> list[Any]:
        return [f for k, f in frames if self.on <= k * FRAME < self.off + margin]

    @property
    def latencies_ms(self) -> list[float]:
        """Delivery against capture: a frame is complete (and its packet sent) 20 ms after its
        capture began, so this is transport plus whatever the receive path added."""
        return [
            (f.timestamp - f.original_sender_timestamp) / TICKS_PER_SECOND * 1000 - FRAME * 1000
            for _, f in self.grid
        ]


async def impaired(
    rig: Rig, body: dict[str, Any], on_seconds: float = 1.2, after_seconds: float = 0.6
) -> Run:
    """Join, set the impairment mid-call through the admin API, lift it after `on_seconds` of
    media, go on for `after_seconds`, hang up; the bot's frames and both sides' figures."""
    joined = await rig.join()
    path = f"/calls/{joined.call.id}/media/impairment"
    status, view = await rig.admin("POST", path, body)
    assert status == 200, view
    on, before = view["mediaSeconds"], view["counts"]
    await joined.until(on + on_seconds)
    session = rig.bot.media_session(joined.call)
    assert session is not None
    stats_at_off = dict(session.stats)
    status, view = await rig.admin("POST", path, {})  # lifted: packets pass untouched again
    assert status == 200 and Impairment.parse(view["impairment"]).clean
    off = view["mediaSeconds"]
    counts = {key: value - before[key] for key, value in view["counts"].items()}
    await joined.until(off + after_seconds)
    stats = dict(session.stats)
    recording = joined.link.sent_by_msi[SPEAKER_MSI]
    truth = {
        round((t - joined.start) / FRAME): pcm
        for t, pcm in zip(recording.times, recording.frames, strict=True)
    }
    grid = on_grid(joined, list(joined.collect.frames))
    await rig.end(joined)
    return Run(joined, on, off, counts, stats, stats_at_off, grid, truth)


def assert_cadence(run: Run) -> None:
    """Every 20 ms slot came out of the audio socket exactly once, in order, and nothing
    failed on the way."""
    ticks = [k for k, _ in run.grid]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "a slot missing or repeated"
    assert ticks[0] * FRAME < run.on and ticks[-1] * FRAME > run.off
    assert run.stats["decode_errors"] == 0 and run.stats["receive_dropped"] == 0


def assert_recovered(run: Run, margin: float = 0.2) -> None:
    """From `margin` after the impairment was lifted: real audio, the participant's own."""
    after = [(k, f) for k, f in run.grid if k * FRAME >= run.off + margin]
    assert len(after) >= 10
    assert not any(f.concealed for _, f in after)
    assert all(f.active_speakers == (SPEAKER_MSI,) for _, f in after)
    for k, frame in after:
        reference = np.concatenate([run.truth[k - 1], run.truth[k]])
        # int32 first: np.abs of int16 -32768 stays -32768 and would read as silence.
        if np.abs(run.truth[k].astype(np.int32)).max() > 500:  # a frame with something in it
            assert best_correlation(frame.pcm, reference) > 0.9, k


def path(joined: Joined, what: str) -> str:
    return f"/calls/{joined.call.id}/media/{what}"


@E2E
async def test_random_loss_is_concealed_slot_for_slot_and_recovers(rig: Rig) -> None:
    baseline = settle()
    run = await impaired(rig, {"lossRate": 0.1, "seed": 3})
    assert_cadence(run)
    assert_recovered(run)
    counts = run.counts
    assert counts["lost"] == counts["dropped"] and 0.03 < counts["lost"] / counts["packets"] < 0.2
    # Each lost packet is one concealed frame, tagged with the speaker it continues.
    concealed = [f for _, f in run.grid if f.concealed]
    assert len(concealed) == counts["lost"] == run.stats["concealed"]
    assert all(f.active_speakers == (SPEAKER_MSI,) for f in concealed)
    assert len(run.window([(k, f) for k, f in run.grid if f.concealed], 0.1)) == len(concealed)
    await back_to_baseline(baseline)


@E2E
async def test_bursty_loss_is_concealed_in_runs_then_silence_and_recovers(rig: Rig) -> None:
    baseline = settle()
    # Gilbert-Elliott: 10 % loss in bursts of 3 packets on average. Seed 36 loses packets 31-36
    # and 45-48 after it is set (the pattern is per packet, whatever the timing).
    burst = {"pGoodToBad": 1 / 27, "pBadToGood": 1 / 3}
    run = await impaired(rig, {"burst": burst, "seed": 36})
    assert_cadence(run)
    assert_recovered(run)
    counts = run.counts
    assert counts["burst_lost"] == counts["dropped"] == 10
    window = run.window(run.grid, 0.1)
    flags = "".join("x" if f.concealed else "." for f in window)
    assert [len(r) for r in flags.split(".") if r] == [6, 4]
    # Frames made up: 10, one of them silence (the 6th of a run: "skipped" by concealment).
    assert run.stats["concealed"] == 10 and run.stats["concealment_skipped"] == 1
    # Loss concealment for 100 ms, then silence rather than invention (media/jitter.py).
    six = flags.index("xxxxxx")
    assert [f.is_silence for f in window[six : six + 6]] == [False] * 5 + [True]
    logger.info(f"bursty loss: {flags.count('x') / len(flags):.1%} of the frames concealed")
    await back_to_baseline(baseline)


@E2E
async def test_jitter_is_absorbed_late_packets_are_concealed_and_it_recovers(rig: Rig) -> None:
    baseline = settle()
    run = await impaired(rig, {"jitterMs": 60, "seed": 2})
    assert_cadence(run)
    assert_recovered(run, margin=0.3)
    counts = run.counts
    assert counts["dropped"] == 0 and counts["delayed"] > 0.9 * counts["packets"]
    assert counts["out_of_order"] > 0  # a 60 ms spread reorders 20 ms packets
    # The buffer measured the jitter and waited longer for missing packets.
    during = run.stats_at_off
    logger.info(
        f"jitter 0-60 ms: measured {during['jitter_us']} us, wait {during['jitter_wait_us']} us"
    )
    assert during["jitter_us"] > 10_000 and during["jitter_wait_us"] > 3 * MIN_WAIT_SECONDS * 1e6
    # Nothing was lost on the way: every concealed slot is a packet that came too late.
    late = run.stats["rtp_late_or_duplicate"]
    assert run.stats["concealed"] == late
    latency = run.latencies_ms
    logger.info(
        f"jitter 0-60 ms: {late} of {counts['packets']} packets late, "
        f"delivery p50 {np.percentile(latency, 50):.0f} ms p95 {np.percentile(latency, 95):.0f} ms"
    )
    assert late <= 0.15 * counts["packets"]
    await back_to_baseline(baseline)


@E2E
async def test_reordered_packets_are_put_back_in_order(rig: Rig) -> None:
    baseline = settle()
    run = await impaired(rig, {"reorderRate": 0.15, "reorderDelayMs": 30, "seed": 4})
    assert_cadence(run)
    assert_recovered(run)
    counts = run.counts
    assert counts["reordered"] > 5 and counts["out_of_order"] >= counts["reordered"]
    late = run.stats["rtp_late_or_duplicate"]
    assert run.stats["concealed"] == late
    logger.info(f"reorder 15 % by 30 ms: {counts['reordered']} held back, {late} too late")
    assert late <= counts["reordered"] // 2  # most were put back in order
    await back_to_baseline(baseline)


@E2E
async def test_a_blackout_is_played_out_on_time_and_media_resumes(rig: Rig) -> None:
    baseline = settle()
    blackout = {"startSeconds": 1.0, "durationSeconds": 0.6}
    run = await impaired(rig, {"blackouts": [blackout]}, on_seconds=1.6)
    assert_cadence(run)
    assert_recovered(run, margin=0.0)
    assert run.counts["blacked_out"] == pytest.approx(30, abs=2)
    assert run.counts["dropped"] == run.counts["blacked_out"]
    # Packet k leaves at (k + 1) * 20 ms: ticks 49 to 78 are dark (give or take one at the edges
    # as the loops run), and none after it.
    dark = [(k, f) for k, f in run.grid if f.concealed]
    assert [k for k, _ in dark] == list(range(dark[0][0], dark[0][0] + len(dark)))
    assert 48 <= dark[0][0] <= 50 and len(dark) == run.counts["blacked_out"]
    plc, silent = dark[:MAX_CONCEALED_RUN], dark[MAX_CONCEALED_RUN:]
    assert all(f.active_speakers == (SPEAKER_MSI,) and not f.is_silence for _, f in plc)
    assert all(f.is_silence and not f.pcm.any() for _, f in silent)
    # Played out as the slots fell due, not in a burst when packets came back.
    late_ms = [
        (f.timestamp - f.original_sender_timestamp) / TICKS_PER_SECOND * 1000 - 20 for _, f in dark
    ]
    logger.info(f"blackout: slots played out {min(late_ms):.0f}-{max(late_ms):.0f} ms after due")
    assert max(late_ms) < UNDERRUN_GRACE_SECONDS * 1000 + 100
    await back_to_baseline(baseline)


@E2E
async def test_a_vanished_media_processor_ends_the_call_with_graphs_result(rig: Rig) -> None:
    baseline = settle()
    joined = await rig.join()
    call = joined.call
    session_id = call.media_session_id
    lost = asyncio.ensure_future(
        rig.bot.wait_media_event(lambda e: e.session_id == session_id and e.kind == "failed", 10)
    )
    status, _ = await rig.admin("POST", path(joined, "vanish"), {"detectionSeconds": 0.2})
    assert status == 204
    assert joined.link.bye_reason is None and joined.link.vanished is not None
    # The bot notices at once (the MP's TCP connection ended without a bye) and says so.
    event = await lost
    assert event.detail == LOST_DETAIL
    # Graph notices its media processor is gone and ends the call; the bot shows why.
    await call.wait_for("terminated", 5)
    assert call.result_info is not None
    assert (call.result_info["code"], call.result_info["subcode"]) == (410, 301005)
    assert call.resource["resultInfo"] == {
        **MEDIA_LOST,
        "@odata.type": "#microsoft.graph.resultInfo",
    }
    assert call.media_lost == LOST_DETAIL
    states = [
        e.kind
        for e in rig.bot.media_events
        if e.session_id == session_id and e.kind in ("connecting", "connected", "failed", "closed")
    ]
    assert states == ["connecting", "connected", "failed", "closed"]
    # Graph ended it: the bot had no reason to hang up.
    assert not any(r.method == "DELETE" and r.path.endswith(call.id) for r in rig.emulator.requests)
    await rig.bot.calls.idle()
    await rig.released(call)
    await back_to_baseline(baseline)


@E2E
async def test_a_vanished_media_processor_graph_never_reports_is_hung_up_by_the_bot(
    rig: Rig,
) -> None:
    baseline = settle()
    joined = await rig.join()
    call = joined.call
    loop = asyncio.get_running_loop()
    lost = asyncio.ensure_future(
        rig.bot.wait_media_event(
            lambda e: e.session_id == call.media_session_id and e.kind == "failed", 10
        )
    )
    status, _ = await rig.admin("POST", path(joined, "vanish"), {"graphEndsCall": False})
    assert status == 204
    await lost
    noticed = loop.time()
    # No notification comes; after media_lost_timeout_seconds the bot hangs up itself.
    await call.wait_for("terminated", 5)
    waited = loop.time() - noticed
    assert MEDIA_LOST_TIMEOUT <= waited < MEDIA_LOST_TIMEOUT + 2
    deletes = [r for r in rig.emulator.requests if r.method == "DELETE" and call.id in r.path]
    assert len(deletes) == 1
    assert call.media_lost == LOST_DETAIL
    assert call.result_info is not None and call.result_info["code"] == 0  # ended by the app
    emulated = rig.emulator.calls[call.id]
    assert emulated.state == "terminated"
    await rig.bot.calls.idle()
    await rig.released(call)
    await back_to_baseline(baseline)


@E2E
async def test_impairment_and_vanish_need_a_call_with_connected_media(rig: Rig) -> None:
    status, body = await rig.admin("POST", "/calls/nope/media/impairment", {"lossRate": 0.1})
    assert status == 404
    joined = await rig.join()
    status, body = await rig.admin("POST", path(joined, "impairment"), {"lossRate": 2})
    assert status == 400 and "lossRate must be a probability" in body["error"]["message"]
    status, body = await rig.admin("GET", path(joined, "impairment"))
    assert status == 200 and Impairment.parse(body["impairment"]).clean
    assert (
        body["counts"]
        == ImpairmentCounts(
            packets=body["counts"]["packets"], sent=body["counts"]["sent"]
        ).to_json()
    )
    status, body = await rig.admin("POST", path(joined, "vanish"), {"graphEndsCall": "no"})
    assert status == 400
    await rig.end(joined)
    status, body = await rig.admin("POST", path(joined, "vanish"), {})
    assert status == 404  # the call is over
