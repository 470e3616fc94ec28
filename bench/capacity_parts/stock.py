"""The stock baseline of bench/capacity.py: plain aiortc connections in the "stock" process, and
the cheap far end in "stock-gen" (pre-encoded packets out, a counting no-op in).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capacity_parts.workers import (  # noqa: E402
    ARRIVALS_KEPT,
    FRAME_SECONDS,
    LATE_MS,
    RING,
    GcWatch,
    LagProbe,
    in_window,
    keep_frozen,
    percentile,
    run_loop,
    serve_pipe,
    worker_logging,
)
from emulator.mpaudio import looped_voice  # noqa: E402
from emulator.signal import VoiceLikeSignal  # noqa: E402


class PacedTrack(MediaStreamTrack):
    """An audio source paced to the wall clock, one 20 ms item per call of _next_index()."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._index = 0

    async def _next_index(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._start = self._start if self._start is not None else now
        due = self._start + self._index * FRAME_SECONDS
        if due > now:
            await asyncio.sleep(due - now)  # pacing a real-time source
        index, self._index = self._index, self._index + 1
        return index


class PacketTrack(PacedTrack):
    """Pre-encoded Opus packets at 20 ms: the stock sender only packs them (no encoder)."""

    def __init__(self, payloads: tuple[bytes, ...]) -> None:
        super().__init__()
        self._payloads = payloads

    async def recv(self) -> av.Packet:
        index = await self._next_index()
        packet = av.Packet(self._payloads[index % len(self._payloads)])
        packet.pts = index * 960
        packet.time_base = Fraction(1, 48_000)
        return packet


class CheapVoiceTrack(PacedTrack):
    """20 ms 16 kHz mono frames for aiortc's own encoder, paced to the wall clock: a short cycle
    of pre-made voice frames with advancing pts (no per-frame synthesis)."""

    def __init__(self, frames: list[av.AudioFrame]) -> None:
        super().__init__()
        self._frames = frames

    async def recv(self) -> av.AudioFrame:
        index = await self._next_index()
        frame = self._frames[index % len(self._frames)]
        frame.pts = index * 320
        return frame


def voice_frames(count: int = 25) -> list[av.AudioFrame]:
    signal = VoiceLikeSignal(7)
    frames = []
    for _ in range(count):
        frame = av.AudioFrame.from_ndarray(
            signal.next_frame().reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 16_000
        frame.time_base = Fraction(1, 16_000)
        frames.append(frame)
    return frames


def stockgen_role(conn: Connection) -> None:
    worker_logging("stock-gen")
    run_loop(_stockgen_main(conn), uv=True)


async def _stockgen_main(conn: Connection) -> None:
    payloads = looped_voice(7).payloads
    pcs: list[RTCPeerConnection] = []
    arrivals: list[deque[float]] = []
    probe = LagProbe()
    probe.start()
    freezer = asyncio.create_task(keep_frozen())

    async def handle(message: tuple[Any, ...]) -> Any:
        if message[0] == "offer":
            for _ in range(message[1]):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                pc.addTrack(PacketTrack(payloads))
                await pc.setLocalDescription(await pc.createOffer())
                pcs.append(pc)
            return [pc.localDescription.sdp for pc in pcs]
        if message[0] == "accept":
            for pc, sdp in zip(pcs, message[1], strict=True):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
                arrivals.append(_count_only(pc))
            return None
        if message[0] == "heard":
            _, t0, t1 = message
            return {
                "heard": [in_window(a, t0, t1) for a in arrivals],
                **probe.figures(t0, t1),
            }
        raise ValueError(f"unknown request {message[0]!r}")

    try:
        conn.send(("ok", None))
        await serve_pipe(conn, handle)
    finally:
        freezer.cancel()
        await probe.stop()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
    conn.send(("ok", None))


def _count_only(pc: RTCPeerConnection) -> deque[float]:
    """Replace the receiver's packet handler on the instance: arrival times, no decode."""
    times: deque[float] = deque(maxlen=ARRIVALS_KEPT)
    receiver = pc.getTransceivers()[0].receiver

    async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
        times.append(time.monotonic())

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
    return times


def stock_role(conn: Connection, uv: bool) -> None:
    worker_logging("stock")
    run_loop(_stock_main(conn), uv=uv)


async def _stock_main(conn: Connection) -> None:
    pcs: list[RTCPeerConnection] = []
    received: list[deque[tuple[float, int]]] = []
    tasks: list[asyncio.Task[None]] = []
    flowing = asyncio.Event()  # every connection has delivered a frame
    collector = GcWatch()  # to tell the stock's own pauses apart in its drift

    async def drain(track: MediaStreamTrack, times: deque[tuple[float, int]]) -> None:
        try:
            frame = await track.recv()
            times.append((time.monotonic(), frame.pts or 0))
            if all(received):
                flowing.set()
            while True:
                frame = await track.recv()  # decoded by aiortc's decoder thread; dropped here
                times.append((time.monotonic(), frame.pts or 0))
        except MediaStreamError:
            pass

    def on_track(times: deque[tuple[float, int]]) -> Callable[[MediaStreamTrack], None]:
        return lambda track: tasks.append(asyncio.create_task(drain(track, times)))

    async def handle(message: tuple[Any, ...]) -> Any:
        if message[0] == "answer":
            answers = []
            for sdp in message[1]:
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                times: deque[tuple[float, int]] = deque(maxlen=RING)
                pc.on("track", on_track(times))
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                pc.addTrack(CheapVoiceTrack(voice_frames()))
                await pc.setLocalDescription(await pc.createAnswer())
                pcs.append(pc)
                received.append(times)
                answers.append(pc.localDescription.sdp)
            return answers
        if message[0] == "flowing":
            try:
                async with asyncio.timeout(message[1]):
                    await flowing.wait()
            except TimeoutError:
                pass
            return sum(1 for r in received if r)
        if message[0] == "stats":
            return _stock_stats(received, collector, message[1], message[2])
        raise ValueError(f"unknown request {message[0]!r}")

    try:
        conn.send(("ok", None))
        await serve_pipe(conn, handle)
    finally:
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("ok", None))


def _stock_stats(
    received: list[deque[tuple[float, int]]], collector: GcWatch, t0: float, t1: float
) -> Any:
    """Frames out of each receiving track in the window, and their drift: the time recv()
    returned against the frame's RTP time (pts at 48 kHz, from the first frame), best case 0."""
    rates, drifts = [], []
    for times in received:
        got = [(t, pts) for t, pts in times]
        if not got:
            rates.append(0.0)
            continue
        first = got[0][1]
        at = np.array([t for t, _ in got], dtype=np.float64)
        media = np.array([((pts - first) % 2**32) / 48_000 for _, pts in got], dtype=np.float64)
        keep = (at >= t0) & (at < t1)
        rates.append(int(keep.sum()) / (t1 - t0))
        lateness = at[keep] - media[keep]
        if lateness.size:
            drifts.append((lateness - lateness.min()) * 1000)
    drift = np.concatenate(drifts) if drifts else np.zeros(0)
    return {
        "rates": rates,
        "drift_p99_ms": round(percentile(drift, 99), 2),
        "late_share": round(float((drift > LATE_MS).mean()) if drift.size else 0.0, 5),
        **collector.figures(t0, t1),
    }
