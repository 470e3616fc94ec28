"""The pure parts of our audio send path and DTMF: the RTP timeline, tone scheduling, event
packets and their detection (RFC 3550, RFC 3551 4.1, RFC 4733)."""

from __future__ import annotations

import pytest

from media import dtmf
from media.sender import SendTimeline


def test_timeline_is_contiguous_at_pace_and_jumps_after_silence() -> None:
    timeline = SendTimeline(allowance_slots=3)
    now, out = 0.0, []
    for step in [0.0, 0.02, 0.02, 0.025, 0.015, 1.0, 0.02, 0.0, 0.0]:
        now += step
        out.append(timeline.next(now))
    assert out == [
        (0, True),  # the first packet starts a talkspurt
        (1, False),
        (2, False),
        (3, False),  # 5 ms late: still contiguous
        (4, False),
        (51, True),  # after ~1 s of silence: real time less the allowance, with the M bit
        (52, False),
        (53, False),  # a burst stays contiguous (the loop paces it to real time)
        (54, False),
    ]


def test_tone_sender_makes_one_event_per_tone_with_rfc4733_shape() -> None:
    sender = dtmf.ToneSender(tone_ms=100, gap_ms=50)
    sender.add("5#")
    slots = []
    while sender.busy:
        slots.append(sender.next_slot(960))
    events = [s for s in slots if s is not None]
    # 100 ms = 5 slots per tone; the last one carries the E bit, three times.
    assert len(events) == 10 and slots.count(None) == 3 + 3  # a 60 ms gap after each tone
    first = [dtmf.unpack(p) for e in events[:5] for p in e.payloads]
    assert [e[0] for e in first] == [5] * 7
    assert [e[3] for e in first] == [960, 1920, 2880, 3840, 4800, 4800, 4800]
    assert [e[1] for e in first] == [False] * 4 + [True] * 3
    assert events[0].marker and events[0].first and not events[1].marker
    assert dtmf.unpack(events[5].payloads[0])[0] == 11  # '#'
    assert sender.sent == 2


def test_unknown_tones_are_refused_and_the_queue_is_bounded() -> None:
    sender = dtmf.ToneSender()
    with pytest.raises(dtmf.DtmfError, match="not a DTMF tone"):
        sender.add("12x")
    assert not sender.busy  # nothing of a refused string is queued
    sender.add("1" * (dtmf.MAX_PENDING + 5))
    assert sender.dropped == 5


def test_detector_reports_each_event_once_whatever_was_repeated_or_lost() -> None:
    detector = dtmf.ToneDetector()
    seen = []
    for timestamp, event, end, duration in [
        (1000, 1, False, 960),
        (1000, 1, False, 1920),
        (1000, 1, True, 4800),
        (1000, 1, True, 4800),  # the repeated end packet
        (9000, 12, True, 4800),  # only the end packets of 'A' arrived
        (20000, 40, False, 960),  # not DTMF (RFC 4733 has other events)
    ]:
        tone = detector.add(timestamp, dtmf.pack(event, end, 10, duration))
        if tone is not None:
            seen.append(tone)
    assert seen == ["1", "A"]
    with pytest.raises(dtmf.DtmfError):
        detector.add(30000, b"\x01")
