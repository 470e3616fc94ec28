"""RFC 4733 DTMF events on the first audio m-line: the tones the MP sends and the ones it hears.

A tone is one event: one RTP timestamp (the tick it starts on), a packet every 20 ms with a
growing duration, the M bit on the first packet and the E bit on the last three (RFC 4733 section
2.5.1.4: the final packet is sent three times). A tone lasts 100 ms, so it takes 7 packets: four
of 960..3840 ticks, then three of 4800 with E. Two ticks of audio follow the last of them, so the
next tone starts 80 ms after this one ended (the spec asks for at least 40 ms).
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from dataclasses import dataclass

EVENTS = "0123456789*#ABCD"  # events 0-15 (RFC 4733 section 3.2); 16 is flash
FLASH = 16
TONE_TICKS = 5  # 100 ms
END_REPEATS = 3
GAP_TICKS = 2  # audio slots between tones
VOLUME = 10  # -10 dBm0
TICKS_PER_SLOT = 960


def event_of(tone: str) -> int:
    """The RFC 4733 event number of a DTMF character (0-9 * # A-D, case-insensitive)."""
    index = EVENTS.find(tone.upper()) if len(tone) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF tone: {tone!r} (use 0-9, *, #, A-D)")
    return index


def name_of(event: int) -> str:
    return EVENTS[event] if event < len(EVENTS) else "flash" if event == FLASH else f"event{event}"


def event_payload(event: int, end: bool, duration: int) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | VOLUME, duration)


@dataclass(frozen=True, slots=True)
class EventSlot:
    """What the first audio m-line sends in one tick instead of audio."""

    event: int
    payload: bytes
    start_tick: int  # the event's RTP timestamp is this tick's
    marker: bool
    last: bool  # the tone's final packet: audio may follow (after the gap)


@dataclass
class _Tone:
    event: int
    done: asyncio.Future[None]
    start_tick: int = -1
    sent: int = 0


class DtmfSender:
    """Queued tones, turned into one event packet per tick (or None: send audio)."""

    def __init__(self) -> None:
        self._queue: deque[_Tone] = deque()
        self._current: _Tone | None = None
        self._ready_tick = 0

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def add(self, event: int, done: asyncio.Future[None]) -> None:
        self._queue.append(_Tone(event, done))

    def slot(self, tick: int) -> EventSlot | None:
        tone = self._current
        if tone is None:
            if not self._queue or tick < self._ready_tick:
                return None
            tone = self._current = self._queue.popleft()
            tone.start_tick = tick
        index = tone.sent
        tone.sent += 1
        end = index >= TONE_TICKS - 1
        duration = min(index + 1, TONE_TICKS) * TICKS_PER_SLOT
        last = tone.sent == TONE_TICKS - 1 + END_REPEATS
        if last:
            self._current = None
            self._ready_tick = tick + 1 + GAP_TICKS
            if not tone.done.done():
                tone.done.set_result(None)
        payload = event_payload(tone.event, end, duration)
        return EventSlot(tone.event, payload, tone.start_tick, index == 0, last)

    def cancel(self) -> None:
        """The link closes: nothing more will be sent."""
        for tone in [*([self._current] if self._current else []), *self._queue]:
            if not tone.done.done():
                tone.done.cancel()
        self._current = None
        self._queue.clear()


class DtmfReceiver:
    """Tones the bot sent, once per event (an event is its RTP timestamp on its SSRC)."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None

    def packet(self, ssrc: int, timestamp: int, payload: bytes) -> str | None:
        """The tone's name when this packet starts a new event, else None."""
        if len(payload) < 4 or self._last == (ssrc, timestamp):
            return None
        self._last = (ssrc, timestamp)
        return name_of(payload[0])
