"""Network impairment on the media processor's packets toward the bot (tc netem is not available
on these machines, so the MP impairs its own send path).

Knobs (the JSON keys of POST /emulator/calls/{id}/media/impairment and of the scenario files):
- `lossRate`: each RTP packet is lost with this probability, independently (Bernoulli);
- `burst`: Gilbert-Elliott two-state loss (Gilbert 1960, Elliott 1963; the model RFC 3611
  section 4.7.2 reports bursts and gaps for): per packet the chain first moves (good to bad with
  `pGoodToBad`, bad to good with `pBadToGood`), then the packet is lost with `lossInBad`
  (default 1) or `lossInGood` (default 0). Time in the bad state averages 1 / pBadToGood packets
  and the long-run share in it is pGoodToBad / (pGoodToBad + pBadToGood);
- `delayMs` plus jitter: every packet waits delayMs plus an extra draw, `jitterMs` wide:
  uniform in [0, jitterMs], or half-normal with sigma jitterMs (`jitterDistribution`
  "uniform" or "normal"). Each packet is delayed on its own, so a spread wider than the 20 ms
  packet interval also reorders (as netem does without a rate limit);
- `reorderRate` / `reorderDelayMs`: that share of packets is held back reorderDelayMs more, so
  the packets behind it overtake it;
- `blackouts`: `[{"startSeconds", "durationSeconds"}]` in seconds from the link's media start
  (`link.media_start`): every packet, RTP and RTCP, in [start, start + duration) is dropped;
- `seed`: each knob draws from its own generator seeded from it, so one knob's pattern does not
  change when another is turned on.

Loss, jitter and reordering apply to RTP; a blackout takes RTCP too (a dead path carries
nothing). STUN consent checks do not pass here (aioice sends them itself), so a blackout shorter
than ICE's 30 s consent timeout (RFC 7675 section 5.1) leaves the connection up.

Impairer is the pure core (a decision per packet, time passed in); ImpairedPath applies it to
an async send function with loop timers and one pump task.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from emulator.odata import BadRequest

logger = logging.getLogger(__name__)

SendPacket = Callable[[bytes], Coroutine[Any, Any, None]]

MAX_DELAY_MS = 2000.0  # any one packet's total delay
MAX_BLACKOUTS = 100
MAX_HELD_PACKETS = 1000  # delayed packets in flight; beyond it a packet is dropped and counted
JITTER_DISTRIBUTIONS = ("uniform", "normal")
KEYS = frozenset(
    {
        "lossRate",
        "burst",
        "delayMs",
        "jitterMs",
        "jitterDistribution",
        "reorderRate",
        "reorderDelayMs",
        "blackouts",
        "seed",
    }
)
BURST_KEYS = frozenset({"pGoodToBad", "pBadToGood", "lossInBad", "lossInGood"})
BLACKOUT_KEYS = frozenset({"startSeconds", "durationSeconds"})


@dataclass(frozen=True, slots=True)
class BurstLoss:
    """Gilbert-Elliott loss: a two-state Markov chain stepped once per packet."""

    p_good_to_bad: float
    p_bad_to_good: float
    loss_in_bad: float = 1.0
    loss_in_good: float = 0.0

    @property
    def bad_share(self) -> float:
        """The long-run share of packets sent in the bad state."""
        total = self.p_good_to_bad + self.p_bad_to_good
        return self.p_good_to_bad / total if total else 0.0

    @property
    def loss_rate(self) -> float:
        bad = self.bad_share
        return bad * self.loss_in_bad + (1 - bad) * self.loss_in_good

    @property
    def mean_bad_packets(self) -> float:
        """Mean length of a stay in the bad state (a burst, when lossInBad is 1)."""
        return 1 / self.p_bad_to_good if self.p_bad_to_good else math.inf


@dataclass(frozen=True, slots=True)
class Blackout:
    start_seconds: float
    duration_seconds: float

    def covers(self, media_seconds: float) -> bool:
        return self.start_seconds <= media_seconds < self.start_seconds + self.duration_seconds


@dataclass(frozen=True, slots=True)
class Impairment:
    loss_rate: float = 0.0
    burst: BurstLoss | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_distribution: str = "uniform"
    reorder_rate: float = 0.0
    reorder_delay_ms: float = 0.0
    blackouts: tuple[Blackout, ...] = ()
    seed: int = 1

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Impairment:
        """From the JSON/TOML keys above; every key is optional, unknown keys are refused.
        Raises BadRequest naming the bad key."""
        if not isinstance(body, Mapping):
            raise BadRequest("The impairment must be an object.")
        _known(body, KEYS, "impairment")
        burst = body.get("burst")
        if burst is not None:
            if not isinstance(burst, Mapping):
                raise BadRequest("burst must be an object with pGoodToBad and pBadToGood.")
            _known(burst, BURST_KEYS, "burst")
            for key in ("pGoodToBad", "pBadToGood"):
                if key not in burst:
                    raise BadRequest(f"burst.{key} is required.")
            burst = BurstLoss(
                _share(burst, "pGoodToBad", "burst."),
                _share(burst, "pBadToGood", "burst."),
                _share(burst, "lossInBad", "burst.", 1.0),
                _share(burst, "lossInGood", "burst.", 0.0),
            )
        distribution = body.get("jitterDistribution", "uniform")
        if distribution not in JITTER_DISTRIBUTIONS:
            raise BadRequest("jitterDistribution must be uniform or normal.")
        seed = body.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise BadRequest("seed must be an integer.")
        impairment = cls(
            loss_rate=_share(body, "lossRate"),
            burst=burst,
            delay_ms=_number(body, "delayMs", MAX_DELAY_MS),
            jitter_ms=_number(body, "jitterMs", MAX_DELAY_MS),
            jitter_distribution=str(distribution),
            reorder_rate=_share(body, "reorderRate"),
            reorder_delay_ms=_number(body, "reorderDelayMs", MAX_DELAY_MS),
            blackouts=_blackouts(body.get("blackouts", [])),
            seed=seed,
        )
        if impairment.reorder_rate > 0 and impairment.reorder_delay_ms <= 0:
            raise BadRequest("reorderRate needs a reorderDelayMs above 0.")
        return impairment

    def to_json(self) -> dict[str, Any]:
        """The same keys parse() takes (parse(to_json()) == self)."""
        body: dict[str, Any] = {
            "lossRate": self.loss_rate,
            "delayMs": self.delay_ms,
            "jitterMs": self.jitter_ms,
            "jitterDistribution": self.jitter_distribution,
            "reorderRate": self.reorder_rate,
            "reorderDelayMs": self.reorder_delay_ms,
            "blackouts": [
                {"startSeconds": b.start_seconds, "durationSeconds": b.duration_seconds}
                for b in self.blackouts
            ],
            "seed": self.seed,
        }
        if self.burst is not None:
            body["burst"] = {
                "pGoodToBad": self.burst.p_good_to_bad,
                "pBadToGood": self.burst.p_bad_to_good,
                "lossInBad": self.burst.loss_in_bad,
                "lossInGood": self.burst.loss_in_good,
            }
        return body

    @property
    def clean(self) -> bool:
        """Nothing to do: packets pass untouched."""
        return (
            self.loss_rate == 0
            and (self.burst is None or self.burst.loss_rate == 0)
            and self.delay_ms == 0
            and self.jitter_ms == 0
            and self.reorder_rate == 0
            and not self.blackouts
        )


def _known(body: Mapping[str, Any], keys: frozenset[str], what: str) -> None:
    unknown = sorted(set(body) - keys)
    if unknown:
        raise BadRequest(
            f"Unknown {what} key(s): {', '.join(unknown)}; known: {', '.join(sorted(keys))}."
        )


def _number(body: Mapping[str, Any], key: str, high: float, default: float = 0.0) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise BadRequest(f"{key} must be a number from 0 to {high:g}.")
    return float(value)


def _share(body: Mapping[str, Any], key: str, prefix: str = "", default: float = 0.0) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise BadRequest(f"{prefix}{key} must be a probability from 0 to 1.")
    return float(value)


def _blackouts(value: Any) -> tuple[Blackout, ...]:
    if not isinstance(value, list) or len(value) > MAX_BLACKOUTS:
        raise BadRequest(f"blackouts must be a list of at most {MAX_BLACKOUTS} objects.")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise BadRequest(f"blackouts[{i}] must be an object with startSeconds and duration.")
        _known(item, BLACKOUT_KEYS, f"blackouts[{i}]")
        if "startSeconds" not in item or "durationSeconds" not in item:
            raise BadRequest(f"blackouts[{i}] needs startSeconds and durationSeconds.")
        start = _number(item, "startSeconds", 86_400.0)
        duration = _number(item, "durationSeconds", 86_400.0)
        out.append(Blackout(start, duration))
    return tuple(out)


class Fate(enum.Enum):
    """What became of one packet."""

    SENT = "sent"  # at once
    DELAYED = "delayed"  # delayMs / jitter
    REORDERED = "reordered"  # held back by the reorder knob (and maybe delayed too)
    LOST = "lost"  # random loss
    BURST_LOST = "burstLost"  # Gilbert-Elliott loss
    BLACKED_OUT = "blackedOut"

    @property
    def dropped(self) -> bool:
        return self in (Fate.LOST, Fate.BURST_LOST, Fate.BLACKED_OUT)


class Impairer:
    """One Impairment's decisions, packet by packet. Pure: no clock, no I/O; deterministic for
    a seed and a sequence of calls."""

    def __init__(self, impairment: Impairment) -> None:
        self.impairment = impairment
        self.clean = impairment.clean
        seed = impairment.seed
        # One generator per knob (str seeds hash with SHA-512: stable across runs and builds).
        self._loss = random.Random(f"{seed}/loss")
        self._burst = random.Random(f"{seed}/burst")
        self._jitter = random.Random(f"{seed}/jitter")
        self._reorder = random.Random(f"{seed}/reorder")
        self.bad = False  # the Gilbert-Elliott state

    def blacked_out(self, media_seconds: float) -> bool:
        return any(b.covers(media_seconds) for b in self.impairment.blackouts)

    def decide(self, media_seconds: float) -> tuple[Fate, float]:
        """The fate of the next RTP packet, sent at `media_seconds` from media start, and its
        delay in seconds (0 unless DELAYED or REORDERED). Every enabled knob draws for every
        packet, whatever the other knobs decided."""
        imp = self.impairment
        burst_lost = False
        if imp.burst is not None:
            b = imp.burst
            move = self._burst.random()
            self.bad = move >= b.p_bad_to_good if self.bad else move < b.p_good_to_bad
            burst_lost = self._burst.random() < (b.loss_in_bad if self.bad else b.loss_in_good)
        lost = imp.loss_rate > 0 and self._loss.random() < imp.loss_rate
        delay_ms = imp.delay_ms
        if imp.jitter_ms > 0:
            if imp.jitter_distribution == "normal":
                delay_ms += abs(self._jitter.gauss(0.0, imp.jitter_ms))
            else:
                delay_ms += self._jitter.uniform(0.0, imp.jitter_ms)
        reordered = imp.reorder_rate > 0 and self._reorder.random() < imp.reorder_rate
        if reordered:
            delay_ms += imp.reorder_delay_ms
        if self.blacked_out(media_seconds):
            return Fate.BLACKED_OUT, 0.0
        if burst_lost:
            return Fate.BURST_LOST, 0.0
        if lost:
            return Fate.LOST, 0.0
        delay = min(delay_ms, MAX_DELAY_MS) / 1000
        if reordered:
            return Fate.REORDERED, delay
        return (Fate.DELAYED, delay) if delay > 0 else (Fate.SENT, 0.0)


@dataclass(slots=True)
class ImpairmentCounts:
    """What the impairment did to a link's packets (cumulative across impairment changes)."""

    packets: int = 0  # RTP packets offered
    sent: int = 0  # RTP sent at once
    delayed: int = 0
    reordered: int = 0  # held back by reorderRate
    lost: int = 0
    burst_lost: int = 0
    blacked_out: int = 0
    rtcp_blacked_out: int = 0
    overflow: int = 0  # delayed packets dropped: MAX_HELD_PACKETS in flight
    out_of_order: int = 0  # went out after a later packet of the same SSRC: what the bot sees
    send_errors: int = 0  # delayed packets whose transport was gone by then

    @property
    def dropped(self) -> int:
        """RTP packets that never went out."""
        return self.lost + self.burst_lost + self.blacked_out + self.overflow

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "dropped": self.dropped}


@dataclass(order=True, slots=True)
class _Held:
    due: float  # loop time
    order: int
    data: bytes = field(compare=False)
    ssrc: int | None = field(compare=False)


class ImpairedPath:
    """An Impairer in front of an async send function, for one link.

    Packets to send now go straight through. Delayed ones wait in a bounded heap; one loop timer
    for the earliest moves due packets to a ready queue, and one pump task (started with the
    first delay) awaits the transport's send for them in order. close() drops whatever is
    still held and stops both.
    """

    def __init__(
        self,
        send: SendPacket,
        impairment: Impairment,
        media_seconds: Callable[[], float],
        max_held: int = MAX_HELD_PACKETS,
    ) -> None:
        self._send = send
        self._media_seconds = media_seconds
        self._max_held = max_held
        self.impairer = Impairer(impairment)
        self.counts = ImpairmentCounts()
        self._held: list[_Held] = []
        self._ready: deque[_Held] = deque()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._pump: asyncio.Task[None] | None = None
        self._order = 0
        self._highest: dict[int, int] = {}  # per SSRC, the latest order sent
        self._closed = False

    @property
    def impairment(self) -> Impairment:
        return self.impairer.impairment

    def set(self, impairment: Impairment) -> None:
        """Replace the impairment (fresh generators from its seed); packets already held keep
        their delays, the counts go on."""
        self.impairer = Impairer(impairment)

    async def send(self, data: bytes, rtcp: bool = False) -> None:
        if self._closed:
            return
        if rtcp:
            if self.impairer.blacked_out(self._media_seconds()):
                self.counts.rtcp_blacked_out += 1
                return
            await self._send(data)
            return
        counts = self.counts
        counts.packets += 1
        self._order += 1
        ssrc = int.from_bytes(data[8:12], "big") if len(data) >= 12 else None
        if self.impairer.clean:
            fate, delay = Fate.SENT, 0.0
        else:
            fate, delay = self.impairer.decide(self._media_seconds())
        if fate is Fate.SENT:
            counts.sent += 1
            self._note_order(ssrc, self._order)
            await self._send(data)
        elif fate is Fate.LOST:
            counts.lost += 1
        elif fate is Fate.BURST_LOST:
            counts.burst_lost += 1
        elif fate is Fate.BLACKED_OUT:
            counts.blacked_out += 1
        else:
            if fate is Fate.REORDERED:
                counts.reordered += 1
            else:
                counts.delayed += 1
            self._hold(data, ssrc, delay)

    def _note_order(self, ssrc: int | None, order: int) -> None:
        if ssrc is None:
            return
        if order < self._highest.get(ssrc, 0):
            self.counts.out_of_order += 1
        else:
            self._highest[ssrc] = order

    def _hold(self, data: bytes, ssrc: int | None, delay: float) -> None:
        if len(self._held) + len(self._ready) >= self._max_held:
            self.counts.overflow += 1
            return
        loop = asyncio.get_running_loop()
        entry = _Held(loop.time() + delay, self._order, data, ssrc)
        heapq.heappush(self._held, entry)
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump(), name="impairment-pump")
        if self._held[0] is entry:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._held[0].due, self._release) if self._held else None

    def _release(self) -> None:
        """Timer: every packet now due goes to the pump, in due order."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._held and self._held[0].due <= now:
            self._ready.append(heapq.heappop(self._held))
        if self._ready:
            self._wake.set()
        self._arm(loop)

    async def _run_pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready:
                entry = self._ready.popleft()
                self._note_order(entry.ssrc, entry.order)
                try:
                    await self._send(entry.data)
                except ConnectionError:
                    self.counts.send_errors += 1  # the transport went away meanwhile

    def stop(self) -> asyncio.Task[None] | None:
        """Drop what is held, stop the timer, cancel the pump and return it (to be awaited).
        Nothing passes afterwards. Idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held.clear()
        self._ready.clear()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
        return pump

    async def close(self) -> None:
        pump = self.stop()
        if pump is not None:
            await asyncio.gather(pump, return_exceptions=True)
