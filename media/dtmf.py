"""RFC 4733 telephone events: DTMF tones in RTP, both ways. Pure: no I/O, no clock.

Graph's media library calls them ToneId (Tone0..9, Star, Pound, A..D, Flash;
https://microsoftgraph.github.io/microsoft-graph-comms-samples/docs/bot_media/index.html).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

# RFC 4733 section 3.2 event codes for DTMF.
EVENTS = "0123456789*#ABCD"
FLASH = 16
TONE_NAMES = {**{c: i for i, c in enumerate(EVENTS)}, "F": FLASH}
DEFAULT_VOLUME = 10  # -10 dBm0: RFC 4733 2.5.2.2 says senders should use a level in 0..36
FINAL_REPEATS = 3  # the end packet is sent three times (RFC 4733 section 2.5.1.4)
TONE_MS = 100
GAP_MS = 50  # docs/media-protocol.md: tones at least 40 ms apart
MAX_PENDING = 64


class DtmfError(ValueError):
    """A tone that cannot be sent (unknown digit, or the peer did not negotiate DTMF)."""


def tone_code(tone: str) -> int:
    code = TONE_NAMES.get(tone.upper())
    if code is None:
        raise DtmfError(f"not a DTMF tone: {tone!r} (0-9, *, #, A-D, F for flash)")
    return code


def tone_name(code: int) -> str:
    return EVENTS[code] if code < len(EVENTS) else "F"


def pack(event: int, end: bool, volume: int, duration: int) -> bytes:
    """The 4-byte payload (RFC 4733 section 2.3)."""
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), duration)


def unpack(payload: bytes) -> tuple[int, bool, int, int]:
    """(event, end, volume, duration). Raises DtmfError for a short payload."""
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload of {len(payload)} bytes")
    event, flags, duration = struct.unpack_from("!BBH", payload)
    return event, bool(flags & 0x80), flags & 0x3F, duration


@dataclass(frozen=True, slots=True)
class EventPacket:
    """One telephone-event packet for one 20 ms send slot: its payload, whether it starts the
    event (the M bit), and whether the event's RTP timestamp is this slot's (the first)."""

    payloads: tuple[bytes, ...]
    marker: bool
    first: bool


class ToneSender:
    """Queued tones turned into one event per tone, slot by slot (20 ms each).

    `next_slot()` is called once per send slot while `busy`; it returns the packets to send in
    that slot, or None for a gap slot (audio may play).
    """

    def __init__(self, slot_ms: int = 20, tone_ms: int = TONE_MS, gap_ms: int = GAP_MS) -> None:
        self._tone_slots = max(2, tone_ms // slot_ms)
        self._gap_slots = max(2, -(-gap_ms // slot_ms))
        self._queue: deque[int] = deque()
        self._current: int | None = None
        self._slot = 0
        self._gap = 0
        self.dropped = 0
        self.sent = 0

    def add(self, tones: str) -> None:
        """Raises DtmfError for an unknown tone (nothing is queued then)."""
        codes = [tone_code(t) for t in tones]
        for code in codes:
            if len(self._queue) >= MAX_PENDING:
                self.dropped += 1  # bounded: a runaway caller loses tones, counted
                continue
            self._queue.append(code)

    @property
    def busy(self) -> bool:
        return self._current is not None or self._gap > 0 or bool(self._queue)

    def next_slot(self, samples_per_slot: int) -> EventPacket | None:
        if self._current is None:
            if self._gap > 0:
                self._gap -= 1
                return None
            if not self._queue:
                return None
            self._current = self._queue.popleft()
            self._slot = 0
        self._slot += 1
        duration = self._slot * samples_per_slot
        first = self._slot == 1
        if self._slot < self._tone_slots:
            return EventPacket(
                (pack(self._current, False, DEFAULT_VOLUME, duration),), first, first
            )
        final = pack(self._current, True, DEFAULT_VOLUME, duration)
        self._current = None
        self._gap = self._gap_slots
        self.sent += 1
        return EventPacket((final,) * FINAL_REPEATS, False, first)


class ToneDetector:
    """Received telephone-event packets to one tone per event (its RTP timestamp identifies it,
    RFC 4733 section 2.5.2.1), whatever was lost or repeated."""

    def __init__(self) -> None:
        self._last_timestamp: int | None = None

    def add(self, rtp_timestamp: int, payload: bytes) -> str | None:
        """The tone's name the first time an event is seen, else None. Raises DtmfError."""
        event, _end, _volume, _duration = unpack(payload)
        if rtp_timestamp == self._last_timestamp:
            return None
        self._last_timestamp = rtp_timestamp
        if event > FLASH:
            return None  # not a DTMF event (RFC 4733 allows others); ignored
        return tone_name(event)
