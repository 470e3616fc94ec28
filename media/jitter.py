"""An adaptive jitter buffer for one audio stream. Pure: no clock reads, no I/O; every call
takes `now` (seconds).

Packets that arrive in order are released at once, so a clean network adds no delay (aiortc's
stock buffer adds a fixed 80 ms and releases a frame only when the next one arrives,
aiortc/src/aiortc/jitterbuffer.py). When a packet is missing, the ones after it are held for a wait
that follows the measured interarrival jitter (RFC 3550 section 6.4.1 and A.8): if the missing
packet shows up in time it is played in order, otherwise its slot is concealed (the decoder's
PLC) and the held packets follow. The wait grows with jitter and shrinks back as jitter falls.
The mean deviation of RFC 3550 barely moves for a few packets held back far (reordering), so a
packet that arrives after its slot was given up also sets a floor under the wait: how late it
was, plus a margin, decaying over a few seconds (a peak detector, as WebRTC's NetEq keeps).

A continuous stream (mixed meeting audio: the media processor sends a packet every 20 ms, silent
or not) also keeps time when nothing arrives at all: a slot whose packet is more than the wait
(at least UNDERRUN_GRACE_SECONDS) overdue is concealed then, on time, and after the concealment
run it plays out as silence, one slot per 20 ms, until packets return (a blackout, a sender that
stalled, the tail of a burst). Packets for slots already played out are late. A stream that may
pause by itself (unmixed speaker streams, RFC 3551 4.1 silence suppression) is not continuous.

The delay may also rise and stay (a route change, a Wi-Fi handover): the packets then return in
sequence, every one for a slot already played out. A continuous stream holds such late packets
and, once they have come late for about the underrun grace with none on time, moves its playout
point back to them and plays them (a re-anchor): the frames it made up meanwhile were the rise,
S / 20 ms of them for a step S, and no packet is lost. WebRTC's NetEq keeps its playout
timestamp still while it conceals, so the packet it waits for plays however late it comes and a
rise costs the same count (webrtc src/modules/audio_coding/neteq/neteq_impl.cc GetDecision,
decision_logic.cc); the hold-off here keeps a straggler, or a burst after a stall, from moving
the playout point. A rise up to the grace only delays the stream. When the delay falls, the
queued packets arrive together and are played at once, as every complete run is: no delay stays
behind, nothing is made up or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RTP_CLOCK_HZ = 48_000  # Opus (RFC 7587)
MIN_WAIT_SECONDS = 0.005
MAX_WAIT_SECONDS = 0.080
JITTER_GAIN = 3.0  # wait this many mean deviations before declaring a packet lost
MAX_CONCEALED_RUN = 5  # 100 ms of concealment; a longer gap is silence, not invention
RESET_GAP = 1000  # a jump this large is a restarted stream, not loss
# A continuous stream's packet this late counts as missing (a loaded sender or loop is late by
# tens of ms now and then; concealing those would turn good packets into late ones).
UNDERRUN_GRACE_SECONDS = 0.100
DEFAULT_SLOT_SECONDS = 0.020  # until two consecutive packets tell the packet duration
MAX_SLOT_SECONDS = 0.120  # Opus packets hold at most 120 ms (RFC 6716 3.2.5)
MAX_CATCH_UP_SLOTS = 50  # a timer this late (1 s) skips ahead instead of playing it all out
# A continuous stream's packets all late, none on time, from the first of them to a slot falling
# due a hold-off later (the underrun grace less half a packet: _reanchor_due) mean its delay rose
# for good, and the playout point moves back to them; if there are this many at least (a lone
# straggler before a blackout is no new delay).
REANCHOR_MIN_PACKETS = 3
LATE_KEPT = 32  # late packets held for a possible re-anchor (more than the hold-off's worth)
PEAK_MARGIN_SECONDS = 0.005
PEAK_DECAY = 0.995  # per packet: the floor halves in about 140 packets (2.8 s of 20 ms audio)
GIVEN_UP_KEPT = 64  # slots given up on, remembered to learn how late their packets come


@dataclass(frozen=True, slots=True)
class Release:
    """One 20 ms slot, in order: a payload to decode, or None to conceal."""

    seq: int
    payload: bytes | None
    csrc: tuple[int, ...]
    capture_ticks: int = 0  # the sender's capture time (abs-capture-time), 0 if unknown
    silent: bool = False  # nothing arrived and the concealment run is over: play silence


@dataclass(slots=True)
class JitterStats:
    """One stream's counters, in slots (one packet each) unless named otherwise.

    released: slots played from a packet. concealed: slots made up by loss concealment (at most
    MAX_CONCEALED_RUN in a row). skipped: slots past that run, silent releases on a continuous
    stream (none otherwise). underruns: continuous, the slots among those two played out because
    nothing had arrived in time. late: packets that came after their slot was played, dropped;
    on a continuous stream a late packet is counted once the buffer plays on without it, as it
    may still play at a re-anchor. duplicates: packets already held. resets: sequence jumps
    past RESET_GAP (a restarted sender). reanchors: continuous, how often the packets came late
    for good (the delay rose: a route change, a Wi-Fi handover) and the playout point moved back
    to them. reanchored: the late packets those re-anchors played rather than dropped.
    jitter_seconds: RFC 3550 interarrival jitter; wait_seconds: how long a gap is waited for.
    """

    released: int = 0
    concealed: int = 0
    skipped: int = 0
    underruns: int = 0
    late: int = 0
    duplicates: int = 0
    resets: int = 0
    reanchors: int = 0
    reanchored: int = 0
    jitter_seconds: float = 0.0
    wait_seconds: float = MIN_WAIT_SECONDS


@dataclass
class JitterBuffer:
    min_wait: float = MIN_WAIT_SECONDS
    max_wait: float = MAX_WAIT_SECONDS
    continuous: bool = False
    stats: JitterStats = field(default_factory=JitterStats)
    _next: int | None = None  # extended sequence number of the next slot to release
    _highest: int | None = None
    _held: dict[int, tuple[bytes, tuple[int, ...], int]] = field(default_factory=dict)
    _deadline: float | None = None
    _last_csrc: tuple[int, ...] = ()
    _transit: float | None = None
    _run: int = 0  # slots in a row with nothing to play (concealed or skipped)
    _expected: float | None = None  # continuous: when slot _next's packet should have arrived
    _slot: float = DEFAULT_SLOT_SECONDS
    _last_timestamp: tuple[int, int] | None = None  # (extended seq, RTP timestamp) last released
    _given_up: dict[int, float] = field(default_factory=dict)  # slot -> when it was played out
    _peak: float = 0.0  # the wait late packets asked for, decaying
    # Continuous: packets for slots of the current run already played out (made up), held in
    # case the delay rose for good; and when the first of them arrived.
    _late: dict[int, tuple[bytes, tuple[int, ...], int]] = field(default_factory=dict)
    _late_since: float | None = None

    @property
    def deadline(self) -> float | None:
        """When expire() must be called (a gap is waiting, or a continuous stream's next
        packet is overdue), or None."""
        if self._deadline is not None or not self.continuous or self._expected is None:
            return self._deadline
        return self._expected + max(self.stats.wait_seconds, UNDERRUN_GRACE_SECONDS)

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
            self._drop_late()
            self._deadline = None
            self._next = ext
        if ext < self._next:
            given_up = self._given_up.pop(ext, None)
            if given_up is not None:
                # Waiting (now - given_up) longer would have played it: wait that long now on.
                needed = self.stats.wait_seconds + (now - given_up) + PEAK_MARGIN_SECONDS
                self._peak = max(self._peak, min(self.max_wait, needed))
                self._update_wait()
            if ext in self._late:
                self.stats.duplicates += 1
            elif ext >= self._next - self._run:
                # Its slot is in the current run of made-up ones (only a continuous stream plays
                # slots out with nothing after them): it may play yet, at a re-anchor.
                self._hold_late(ext, (payload, csrc, capture_ticks), now)
            else:
                self.stats.late += 1  # its slot was played from a packet, or long ago
            return []
        if ext in self._held:
            self.stats.duplicates += 1
            return []
        self._held[ext] = (payload, csrc, capture_ticks)
        out = self._release_run(now, rtp_timestamp if audio else None, ext)
        self._arm(now)
        return out

    def expire(self, now: float) -> list[Release]:
        """The wait for a missing packet is over: conceal its slot and move on. Or, on a
        continuous stream with nothing held, the next packet is overdue: play its slot out."""
        if self._next is None:
            return []
        if not self._held:
            return self._underrun(now)
        if self._deadline is None or now < self._deadline:
            return []
        out: list[Release] = []
        missing = min(self._held) - self._next
        for i in range(missing):
            # Past MAX_CATCH_UP_SLOTS a gap is skipped without frames: a sequence jump is not
            # seconds of silence to deliver at once.
            out += self._missing(now, i < MAX_CATCH_UP_SLOTS)
        out += self._release_run(now)
        self._deadline = None
        self._arm(now)
        return out

    def _missing(self, now: float, audible: bool = True, learn: bool = True) -> list[Release]:
        """Slot _next has no packet: conceal it, or past the concealment run, leave it silent
        (a silent release on a continuous stream if `audible`, nothing otherwise). `learn`:
        remember it, so that its packet coming late sets a floor under the wait."""
        assert self._next is not None
        seq = self._next
        self._next += 1
        self._run += 1
        if learn:
            self._given_up[seq] = now
            if len(self._given_up) > GIVEN_UP_KEPT:
                del self._given_up[next(iter(self._given_up))]
        if self._run <= MAX_CONCEALED_RUN:
            self.stats.concealed += 1
            return [Release(seq, None, self._last_csrc)]
        self.stats.skipped += 1
        return [Release(seq, None, (), silent=True)] if self.continuous and audible else []

    def _underrun(self, now: float) -> list[Release]:
        expected = self._expected
        if not self.continuous or expected is None:
            return []
        grace = max(self.stats.wait_seconds, UNDERRUN_GRACE_SECONDS)
        due = int((now - grace - expected) / self._slot) + 1 if now >= expected + grace else 0
        if due > MAX_CATCH_UP_SLOTS:
            # The timer itself was very late (a stalled loop): skip ahead, as the slots it
            # would play out are long past.
            skip = due - MAX_CATCH_UP_SLOTS
            self.stats.skipped += skip
            assert self._next is not None
            self._next += skip
            self._run += skip
            due = MAX_CATCH_UP_SLOTS
            expected += skip * self._slot
        out: list[Release] = []
        for _ in range(due):
            if self._reanchor_due(expected + grace, grace):
                return out + self._reanchor(now)
            # Not learnt from: this slot waited the grace (at least the wait) with nothing held,
            # so its packet coming later says the delay moved, not that gaps need a longer wait.
            out += self._missing(now, learn=False)
            self.stats.underruns += 1
            expected += self._slot
        self._expected = expected
        return out

    def _hold_late(self, ext: int, packet: tuple[bytes, tuple[int, ...], int], now: float) -> None:
        """A continuous stream's packet for a slot of the current run, already played out: held
        (not played) until the stream plays on without it or the buffer re-anchors to it."""
        if not self._late:
            self._late_since = now
        self._late[ext] = packet
        if len(self._late) > LATE_KEPT:
            del self._late[min(self._late)]
            self.stats.late += 1

    def _drop_late(self) -> None:
        """A packet played on time (or a reset): the late ones held were stragglers, dropped."""
        self.stats.late += len(self._late)
        self._late.clear()
        self._late_since = None

    def _reanchor_due(self, due_at: float, grace: float) -> bool:
        """At the slot due at `due_at`, with nothing on time: have packets come late for good?

        Decided on the playout clock, not when a packet arrives, and with a hold-off of the
        underrun grace less half a packet: a step up of S (over the grace) then makes up
        exactly S / packet duration frames, rounded, whatever the jitter under half a packet.
        The first made-up slot falls due a grace after the hole in the arrivals opened, the
        first late packet S after it opened, and the re-anchor comes at the first slot due a
        hold-off after that, i.e. S less half a packet after the first made-up one.
        """
        if len(self._late) < REANCHOR_MIN_PACKETS or self._late_since is None:
            return False
        return due_at - self._late_since >= grace - self._slot / 2

    def _reanchor(self, now: float) -> list[Release]:
        """Move the playout point back to the late packets and play them at once (the slots they
        fill were already made up once: the frames made up were the delay's rise). What arrives
        next is then on time; no extra delay stays, since a run is released as soon as it is
        complete (a fall of the delay later is a burst played at once, too)."""
        self.stats.reanchors += 1
        self.stats.reanchored += len(self._late)
        for seq in self._late:
            self._given_up.pop(seq, None)
        self._held.update(self._late)
        self._next = min(self._late)
        self._late.clear()
        self._late_since = None
        out = self._release_run(now)
        self._arm(now)
        return out

    def _release_run(
        self, now: float, rtp_timestamp: int | None = None, ext: int | None = None
    ) -> list[Release]:
        out: list[Release] = []
        assert self._next is not None
        if ext is not None and rtp_timestamp is not None:
            self._learn_slot(ext, rtp_timestamp)
        while self._next in self._held:
            payload, csrc, capture = self._held.pop(self._next)
            out.append(Release(self._next, payload, csrc, capture))
            self._last_csrc = csrc
            self._next += 1
            self._run = 0
            self.stats.released += 1
        if out:
            if self._late:
                self._drop_late()
            # The packet after a release is due one packet duration later; after a run
            # released at once, that is lenient (the run's last packet arrived earlier).
            self._expected = now + self._slot
        return out

    def _learn_slot(self, ext: int, rtp_timestamp: int) -> None:
        """The packet duration, from consecutive packets' RTP timestamps (RFC 3550 5.1)."""
        last = self._last_timestamp
        self._last_timestamp = (ext, rtp_timestamp)
        if last is None or ext != last[0] + 1:
            return
        seconds = ((rtp_timestamp - last[1]) & 0xFFFFFFFF) / RTP_CLOCK_HZ
        if 0 < seconds <= MAX_SLOT_SECONDS:
            self._slot = seconds

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
        self._peak *= PEAK_DECAY
        self._update_wait()

    def _update_wait(self) -> None:
        wait = max(JITTER_GAIN * self.stats.jitter_seconds, self._peak)
        self.stats.wait_seconds = min(self.max_wait, max(self.min_wait, wait))
