"""An adaptive jitter buffer for one audio stream. Pure: no clock reads, no I/O; every call
takes `now` (seconds).

Packets that arrive in order are released at once, so a clean network adds no delay (aiortc's
stock buffer adds a fixed 80 ms and releases a frame only when the next one arrives,
aiortc-internals.md section 1). When a packet is missing, the ones after it are held for a wait
that follows the measured interarrival jitter (RFC 3550 section 6.4.1 and A.8): if the missing
packet shows up in time it is played in order, otherwise its slot is concealed (the decoder's
PLC) and the held packets follow. The wait grows with jitter and shrinks back as jitter falls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RTP_CLOCK_HZ = 48_000  # Opus (RFC 7587)
MIN_WAIT_SECONDS = 0.005
MAX_WAIT_SECONDS = 0.080
JITTER_GAIN = 3.0  # wait this many mean deviations before declaring a packet lost
MAX_CONCEALED_RUN = 5  # 100 ms of concealment; a longer gap is silence, not invention
RESET_GAP = 1000  # a jump this large is a restarted stream, not loss


@dataclass(frozen=True, slots=True)
class Release:
    """One 20 ms slot, in order: a payload to decode, or None to conceal."""

    seq: int
    payload: bytes | None
    csrc: tuple[int, ...]
    capture_ticks: int = 0  # the sender's capture time (abs-capture-time), 0 if unknown


@dataclass(slots=True)
class JitterStats:
    released: int = 0
    concealed: int = 0
    skipped: int = 0  # slots of a gap longer than MAX_CONCEALED_RUN, left silent
    late: int = 0
    duplicates: int = 0
    resets: int = 0
    jitter_seconds: float = 0.0
    wait_seconds: float = MIN_WAIT_SECONDS


@dataclass
class JitterBuffer:
    min_wait: float = MIN_WAIT_SECONDS
    max_wait: float = MAX_WAIT_SECONDS
    stats: JitterStats = field(default_factory=JitterStats)
    _next: int | None = None  # extended sequence number of the next slot to release
    _highest: int | None = None
    _held: dict[int, tuple[bytes, tuple[int, ...], int]] = field(default_factory=dict)
    _deadline: float | None = None
    _last_csrc: tuple[int, ...] = ()
    _transit: float | None = None

    @property
    def deadline(self) -> float | None:
        """When expire() must be called (a gap is waiting), or None."""
        return self._deadline

    def add(
        self,
        seq: int,
        rtp_timestamp: int,
        payload: bytes,
        csrc: tuple[int, ...],
        now: float,
        capture_ticks: int = 0,
        audio: bool = True,
    ) -> list[Release]:
        """audio=False: a packet that holds a slot but plays nothing (an RFC 4733 event, whose
        timestamp is its event's start, so it says nothing about transit jitter)."""
        ext = self._extend(seq)
        if audio:
            self._measure_jitter(rtp_timestamp, now)
        if self._next is None or ext - self._next > RESET_GAP or self._next - ext > RESET_GAP:
            if self._next is not None:
                self.stats.resets += 1
            self._held.clear()
            self._deadline = None
            self._next = ext
        if ext < self._next:
            self.stats.late += 1
            return []
        if ext in self._held:
            self.stats.duplicates += 1
            return []
        self._held[ext] = (payload, csrc, capture_ticks)
        out = self._release_run()
        self._arm(now)
        return out

    def expire(self, now: float) -> list[Release]:
        """The wait for a missing packet is over: conceal its slot and move on."""
        if self._deadline is None or now < self._deadline or self._next is None:
            return []
        out: list[Release] = []
        first_held = min(self._held) if self._held else self._next
        missing = first_held - self._next
        for i in range(missing):
            if i < MAX_CONCEALED_RUN:
                out.append(Release(self._next, None, self._last_csrc))
                self.stats.concealed += 1
            else:
                self.stats.skipped += 1
            self._next += 1
        out += self._release_run()
        self._deadline = None
        self._arm(now)
        return out

    def _release_run(self) -> list[Release]:
        out: list[Release] = []
        assert self._next is not None
        while self._next in self._held:
            payload, csrc, capture = self._held.pop(self._next)
            out.append(Release(self._next, payload, csrc, capture))
            self._last_csrc = csrc
            self._next += 1
            self.stats.released += 1
        return out

    def _arm(self, now: float) -> None:
        if not self._held:
            self._deadline = None
        elif self._deadline is None:
            self._deadline = now + self.stats.wait_seconds

    def _extend(self, seq: int) -> int:
        """16-bit RTP sequence number to a monotonic one (RFC 3550 appendix A.1)."""
        if self._highest is None:
            self._highest = seq
            return seq
        delta = (seq - self._highest) & 0xFFFF
        ext = self._highest + delta if delta < 0x8000 else self._highest - (0x10000 - delta)
        self._highest = max(self._highest, ext)
        return ext

    def _measure_jitter(self, rtp_timestamp: int, now: float) -> None:
        # RFC 3550 A.8: J += (|D| - J) / 16, D the change in relative transit time.
        transit = now - rtp_timestamp / RTP_CLOCK_HZ
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < 1.0:  # a timestamp jump (new talkspurt after silence) is not jitter
                self.stats.jitter_seconds += (d - self.stats.jitter_seconds) / 16
        self._transit = transit
        wait = JITTER_GAIN * self.stats.jitter_seconds
        self.stats.wait_seconds = min(self.max_wait, max(self.min_wait, wait))
