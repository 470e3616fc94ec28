"""Our receive path: decode, CSRC tags, ordering, telephone events, capture times."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from emulator.signal import VoiceLikeSignal
from media.clock import FakeClock
from media.codec import OpusEncoder
from media.engine import AudioReceiver
from media.frames import AudioFrame
from media.ring import Ring


def packets(n: int, csrc: list[int]) -> list[RtpPacket]:
    encoder, signal = OpusEncoder(), VoiceLikeSignal(5)
    out = []
    for i in range(n):
        payload = encoder.encode(signal.next_frame())[0]
        p = RtpPacket(payload_type=96, sequence_number=(65530 + i) & 0xFFFF, timestamp=i * 960)
        p.csrc = csrc
        p.payload = payload
        out.append(p)
    return out


async def test_receiver_decodes_to_tagged_20ms_frames_in_order() -> None:
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, FakeClock())
    for p in packets(20, [0xABCD, 0x1234]):
        await receiver.handle_rtp(p, arrival_time_ms=0)
    frames = ring.drain()
    assert len(frames) == 20  # one 20 ms packet in, one 320-sample frame out, across the wrap
    assert all(f.active_speakers == (0xABCD, 0x1234) for f in frames)
    assert not any(f.is_silence for f in frames)
    assert [f.sequence for f in frames] == list(range(1, 21))


async def test_receiver_drops_late_duplicates_and_survives_garbage() -> None:
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, FakeClock())
    ps = packets(6, [])
    for p in [ps[0], ps[1], ps[1], ps[0], ps[3], ps[2], ps[4]]:
        await receiver.handle_rtp(p, arrival_time_ms=0)
    garbage = RtpPacket(payload_type=96, sequence_number=ps[5].sequence_number)
    garbage.payload = b"\xff" * 3
    await receiver.handle_rtp(garbage, arrival_time_ms=0)
    receiver.close()
    assert receiver.stats.late_or_duplicate == 2  # the second 1 and the replayed 0
    assert receiver.stats.decode_errors == 1
    assert receiver.stats.packets == 8
    frames = ring.drain()
    assert len(frames) == 5  # 2 arrived before 3 was given up on: played in order
    assert all(f.is_silence and not f.concealed for f in frames)  # no CSRC: nobody speaking


async def test_a_lost_packet_is_concealed_with_the_speakers_of_the_last_one() -> None:
    clock = FakeClock()
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, clock)
    ps = packets(4, [0x42])
    for p in [ps[0], ps[2], ps[3]]:
        await receiver.handle_rtp(p, arrival_time_ms=0)
        clock.advance(0.02)
    receiver.expire()  # the buffer's wait for ps[1] is over (its timer does this for real)
    receiver.close()
    frames = ring.drain()
    assert [f.concealed for f in frames] == [False, True, False, False]
    assert all(f.active_speakers == (0x42,) for f in frames)
    assert receiver.stats.concealed == 1


async def test_an_empty_packet_does_not_stop_decoding() -> None:
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, FakeClock())
    ps = packets(4, [])
    empty = RtpPacket(payload_type=96, sequence_number=ps[1].sequence_number)
    for p in [ps[0], empty, ps[2], ps[3]]:
        await receiver.handle_rtp(p, arrival_time_ms=0)
    receiver.close()
    assert receiver.stats.empty == 1
    assert receiver.stats.decode_errors == 0
    frames = ring.drain()
    assert len(frames) == 3 and not any(f.concealed for f in frames)  # its slot passed silently


async def test_a_new_ssrc_starts_a_new_sequence_space() -> None:
    ring: Ring[AudioFrame] = Ring(64)
    receiver = AudioReceiver(ring, FakeClock())
    first, second = packets(3, []), packets(3, [])
    for p in second:  # the restarted sender's numbers look 30000 "older"
        p.ssrc = 2
        p.sequence_number = (p.sequence_number - 30000) & 0xFFFF
    for p in [*first, *second]:
        await receiver.handle_rtp(p, arrival_time_ms=0)
    assert receiver.stats.stream_resets == 1
    assert receiver.stats.late_or_duplicate == 0
    assert len(ring.drain()) == 6
