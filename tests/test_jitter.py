"""The jitter buffer on its own: ordering, concealment, adaptation. Time is passed in."""

from __future__ import annotations

import random

from media.jitter import MAX_CONCEALED_RUN, REANCHOR_MIN_PACKETS, JitterBuffer, Release


def feed(jb: JitterBuffer, seqs: list[int], start: float = 0.0) -> list[Release]:
    out: list[Release] = []
    for i, seq in enumerate(seqs):
        now = start + i * 0.02
        out += jb.expire(now)
        out += jb.add(seq & 0xFFFF, seq * 960, bytes([seq & 0xFF]), (7,), now)
    return out


def test_in_order_packets_are_released_at_once() -> None:
    jb = JitterBuffer()
    for i in range(5):
        assert [r.seq for r in jb.add(i, i * 960, b"x", (), i * 0.02)] == [i]
    assert jb.deadline is None


def test_reordered_packet_inside_the_wait_plays_in_order() -> None:
    jb = JitterBuffer()
    out = jb.add(0, 0, b"0", (), 0.0)
    out += jb.add(2, 1920, b"2", (), 0.040)
    assert jb.deadline is not None  # waiting for 1
    out += jb.add(1, 960, b"1", (), 0.041)
    assert [(r.seq, r.payload) for r in out] == [(0, b"0"), (1, b"1"), (2, b"2")]
    assert jb.stats.concealed == 0


def test_a_lost_packet_is_concealed_when_its_wait_is_over() -> None:
    jb = JitterBuffer()
    jb.add(0, 0, b"0", (5,), 0.0)
    assert jb.add(2, 1920, b"2", (5,), 0.040) == []
    deadline = jb.deadline
    assert deadline is not None
    assert jb.expire(deadline - 0.001) == []
    out = jb.expire(deadline)
    assert [(r.seq, r.payload, r.csrc) for r in out] == [(1, None, (5,)), (2, b"2", (5,))]
    assert jb.deadline is None


def test_late_and_duplicate_packets_are_dropped_and_counted() -> None:
    jb = JitterBuffer()
    feed(jb, [0, 1, 1, 0, 2])
    assert (jb.stats.duplicates, jb.stats.late, jb.stats.released) == (0, 2, 3)


def test_sequence_numbers_wrap() -> None:
    jb = JitterBuffer()
    out = feed(jb, [65534, 65535, 65536, 65537])
    assert len(out) == 4 and jb.stats.late == 0


def test_ten_percent_loss_leaves_no_gaps() -> None:
    rng = random.Random(4)
    sent = list(range(1000))
    kept = [s for s in sent if rng.random() >= 0.10]
    jb = JitterBuffer()
    out: list[Release] = []
    now = 0.0
    for seq in sent:
        now = seq * 0.02
        out += jb.expire(now)
        if seq in kept:
            out += jb.add(seq, seq * 960, b"p", (), now)
    out += jb.expire(now + 1.0)
    assert [r.seq for r in out] == sent[: out[-1].seq + 1]  # every slot, in order
    assert jb.stats.concealed == len(sent) - len(kept) - (sent[-1] - out[-1].seq)


def test_a_long_gap_is_not_invented() -> None:
    jb = JitterBuffer()
    jb.add(0, 0, b"0", (), 0.0)
    jb.add(20, 20 * 960, b"20", (), 0.4)
    out = jb.expire(1.0)
    assert [r.payload for r in out].count(None) == MAX_CONCEALED_RUN
    assert jb.stats.skipped == 19 - MAX_CONCEALED_RUN
    assert out[-1].seq == 20


def test_the_wait_follows_jitter_up_and_back_down() -> None:
    jb = JitterBuffer()
    rng = random.Random(1)
    for i in range(200):  # clean: arrivals exactly every 20 ms
        jb.add(i, i * 960, b"x", (), i * 0.02)
    clean = jb.stats.wait_seconds
    for i in range(200, 400):  # +-15 ms of jitter
        jb.add(i, i * 960, b"x", (), i * 0.02 + rng.uniform(0, 0.03))
    jittery = jb.stats.wait_seconds
    for i in range(400, 800):
        jb.add(i, i * 960, b"x", (), i * 0.02 + 0.5)
    recovered = jb.stats.wait_seconds
    assert clean == jb.min_wait
    assert jittery > 3 * clean
    assert recovered < jittery / 2


def test_a_restarted_stream_resets_instead_of_waiting() -> None:
    jb = JitterBuffer()
    feed(jb, [0, 1, 2])
    out = jb.add(40000, 0, b"new", (), 1.0)
    assert [r.payload for r in out] == [b"new"] and jb.stats.resets == 1


def run_continuous(arrivals: list[tuple[float, int]]) -> tuple[JitterBuffer, list[Release]]:
    """A continuous stream fed (arrival time, seq) in time order, with expire() run at each
    deadline before the next arrival, as the receiver's loop timer does."""
    jb = JitterBuffer(continuous=True)
    out: list[Release] = []
    for now, seq in sorted(arrivals):
        while (deadline := jb.deadline) is not None and deadline <= now:
            out += jb.expire(deadline)
        out += jb.add(seq, seq * 960, bytes([seq & 0xFF]), (7,), now)
    return jb, out


def test_a_delay_that_rises_and_stays_is_followed() -> None:
    """From packet 50 on, every packet takes 200 ms longer. The buffer plays the hole out (10
    made-up slots), holds the packets that then come late, and moves back to them: all 150 play,
    in order after the ones before the step."""
    arrivals = [
        (seq * 0.02 + 0.003 * (seq % 2) + (0.2 if seq >= 50 else 0.0), seq) for seq in range(200)
    ]
    jb, out = run_continuous(arrivals)
    played = [r.seq for r in out if r.payload is not None]
    assert played == list(range(200))
    assert len([r for r in out if r.payload is None]) == 10  # 200 ms of 20 ms slots
    assert (jb.stats.reanchors, jb.stats.late) == (1, 0)
    assert jb.stats.reanchored >= REANCHOR_MIN_PACKETS


def test_a_burst_after_a_stall_does_not_move_the_playout_point() -> None:
    """The path stalls 300 ms, then drains what it queued (one packet per 4 ms) and carries on
    as before: a spike, not a new delay. The packets for slots played out meanwhile are late
    and dropped, the others play on time, and the delay stays where it was."""
    arrivals: list[tuple[float, int]] = []
    for seq in range(100):
        sent = seq * 0.02
        at = max(sent, 1.3, arrivals[-1][0] + 0.004) if sent > 1.0 and arrivals else sent
        arrivals.append((at, seq))
    jb, out = run_continuous(arrivals)
    assert jb.stats.reanchors == 0
    made_up = [r.seq for r in out if r.payload is None]
    played = [r.seq for r in out if r.payload is not None]
    assert jb.stats.late == len(made_up) > 5  # each made-up slot's packet came, too late
    assert played == [seq for seq in range(100) if seq not in made_up]


def test_a_straggler_before_a_blackout_does_not_move_the_playout_point() -> None:
    """One packet held back 150 ms, then nothing for a second: one late packet is no new delay."""
    arrivals = [(seq * 0.02, seq) for seq in range(50)]
    arrivals += [(50 * 0.02 + 0.150, 50)]
    arrivals += [(seq * 0.02, seq) for seq in range(100, 120)]
    jb, out = run_continuous(arrivals)
    assert (jb.stats.reanchors, jb.stats.late) == (0, 1)
    assert [r.seq for r in out if r.payload is not None][-20:] == list(range(100, 120))


def test_a_late_packet_held_for_a_re_anchor_counts_once() -> None:
    jb, _ = run_continuous([(seq * 0.02, seq) for seq in range(10)])
    assert len(jb.expire(0.5)) == 11  # the stream went quiet: slots 10 to 20 are played out
    assert jb.add(10, 10 * 960, b"x", (7,), 0.5) == []
    assert jb.add(10, 10 * 960, b"x", (7,), 0.5) == []
    assert (jb.stats.duplicates, jb.stats.late) == (1, 0)  # held: it may still play
    assert [r.seq for r in jb.add(21, 21 * 960, b"y", (7,), 0.51)] == [21]
    assert jb.stats.late == 1  # played on without it: dropped now
